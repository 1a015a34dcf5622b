#!/usr/bin/env python3
"""Make the fixtures the tests read: files of ``pp-output`` messages and HTM envelope vectors,
built with daf_butler's and sphgeom's own code, so their bytes are what the installed versions of
daf_butler, sphgeom and pydantic produce.

Run with the stack's virtual environment (``deploy/local/stack up`` does, into
``$STATE/fixtures``):

    .venv/bin/python deploy/local/make_fixtures.py --output DIR [--seed N] [--vectors N]

It writes, deterministically for a seed (dataset UUIDs and pointings come from seeded random
streams, times are fixed):

``messages/*.jsonl``, one compact ``model_dump_json()`` message per line, for a registry made by
``bootstrap_registry.py`` (instrument, filters, detectors, visit systems, dataset types, output
RUN and chain come from that file, so the two cannot drift apart):

=========================  =====================================================================
``batch_a.jsonl``          4 messages, 10 datasets: detectors 10-13 of visit 1 (3 datasets each,
                           the last 1), into the output RUN
``batch_a_conflict.jsonl`` ``batch_a`` with new dataset UUIDs: the same data IDs, so each
                           message is a conflict once ``batch_a`` is in
``batch_c.jsonl``          4 messages, 10 datasets: detectors 0-3 of a new visit, 2
``dupinbatch.jsonl``       5 messages: detectors 0-3 of visit 320, then the first message again
``newrun_sql.jsonl``       2 messages, 4 datasets of visit 8 into a RUN not registered yet
                           (``output-2026-05-03``)
``bench_100_0.jsonl``      34 messages, 100 datasets: detectors 0-33 of visit 140
``bench_1000_0.jsonl``     334 messages, 1000 datasets: all 189 detectors of visit 150, then
                           detectors 0-144 of visit 151
=========================  =====================================================================

Each message is what one Prompt Processing worker sends for one visit and detector: the records
``day_obs``, ``group``, ``exposure``, ``visit``, ``visit_system``, ``visit_definition``,
``visit_system_membership``, ``visit_detector_region`` (each made by the universe's record class
and ``to_simple()``; regions are ``lsst.sphgeom.ConvexPolygon``, timespans daf_butler's
``Timespan``), ``"dataset_types": []`` (the writer-side model), and up to three ``FileDataset``s
(``preliminary_visit_image``, ``single_visit_star_unstandardized``, ``isr_statistics``) with
expanded data IDs and paths from daf_butler's default file templates. Identifiers follow
LSSTCam's: visit = exposure = ``day_obs * 100000 + seq_num``, ``obs_id``
``MC_O_<day_obs>_<seq_num:06>``, the group named by the exposure's start time. All visits are on
day_obs 20260501.

``sphgeom/htm7_envelopes.jsonl``: ``--vectors`` (3000) level-7 sky polygons with
``HtmPixelization(7).envelope()`` as sorted pixels, from
``schema/tests/data/gen_htm_vectors.py --sky``.

The output directory is replaced whole (written beside it, then renamed), so a reader never sees
half a set. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import random
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# The registry's contents and the HTM vector generator are imported, not restated: the fixtures
# must match what bootstrap_registry.py registers, and the sky polygons are drawn the way the
# committed extra vectors are.
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "schema" / "tests" / "data"))

import bootstrap_registry as registry  # noqa: E402

# Bump when the output changes for the same seed and the same libraries (the stack regenerates
# when this file changes anyway; this is for readers of fixtures.json).
GENERATOR_VERSION = 1
DEFAULT_SEED = 20260501
DEFAULT_VECTORS = 3000

DAY_OBS = 20260501
# Rubin's observing day turns over at noon: day_obs 20260501 spans 2026-05-01T12:00 to
# 2026-05-02T12:00 (TAI here, as daf_butler's Timespan.from_day_obs counts).
DAY_OBS_OFFSET_S = 12 * 3600
# Exposure seq_num n starts at EXPOSURE_ZERO + n * CADENCE_S (TAI): 30 s open, 10 s of readout
# and slew. So visit 2 (batch_c, whose first message the writer's tests take as the template of
# every visit they make) ends at TAI 1777683710 s, the observation end publication-consumer's
# tests compute release times from (tests/common/mod.rs, `observation_end`).
EXPOSURE_ZERO = "2026-05-02T01:00:00"
CADENCE_S = 40
EXPOSURE_TIME_S = 30.0
# Filters change every 100 visits, in this order (every one registered by the bootstrap).
NIGHT_FILTERS = ("r_57", "i_39", "z_20", "g_6", "y_10", "u_24")
VISITS_PER_FILTER = 100
SITE_LATITUDE_DEG = -30.24

NEW_RUN = "LSSTCam/prompt/output-2026-05-03/ApPipe/prompt-proto-service-lsstcam"

# Storage class -> (formatter, file extension), as the datastore writes them: the formatters are
# daf_butler's configs/datastores/formatters.yaml entries; the extensions are the formatters'
# default_extension (obs_base's FITS formatter is not on PyPI, so they are not imported).
FORMATTERS = {
    "ExposureF": ("lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter", ".fits"),
    "ArrowAstropy": ("lsst.daf.butler.formatters.parquet.ParquetFormatter", ".parq"),
    "StructuredDataDict": ("lsst.daf.butler.formatters.yaml.YamlFormatter", ".yaml"),
}

# LSSTCam's focal plane as the bootstrap numbers it: 21 rafts on a 5 x 5 grid without its corners
# (raft index = detector // 9, in row-major order), 3 x 3 sensors each (S{row}{column}). Sensors
# are 0.2 degrees square on a 0.21 degree pitch.
RAFT_POSITIONS = [(column, row) for row in range(5) for column in range(5) if column in (1, 2, 3) or row in (1, 2, 3)]
SENSOR_SIDE_DEG = 0.2
SENSOR_PITCH_DEG = 0.21
# The focal plane's outline, in pitches from its centre: the grid of 15 x 15 sensors without the
# corner rafts is an octagon.
OUTLINE = [(-4.5, -7.5), (4.5, -7.5), (7.5, -4.5), (7.5, 4.5), (4.5, 7.5), (-4.5, 7.5), (-7.5, 4.5), (-7.5, -4.5)]


class FixtureError(Exception):
    """A failure with a one-line explanation of what to do."""


def log(message: str) -> None:
    print(f"make_fixtures: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class MessageFile:
    """One message file: which visit (by seq_num), which detectors, how many datasets."""

    name: str
    seq_nums: tuple[int, ...]
    datasets: int
    run: str = registry.OUTPUT_RUN
    first_detector: int = 0


# The visits are distinct between files (except batch_a and its conflict), so the files can be
# ingested in any order and together; batch_c's is visit 2, detector 0 first, which
# record-producer's message test rebuilds path for path.
MESSAGE_FILES = (
    MessageFile("batch_a", (1,), 10, first_detector=10),
    MessageFile("batch_c", (2,), 10),
    MessageFile("newrun_sql", (8,), 4, run=NEW_RUN),
    MessageFile("bench_100_0", (140,), 100),
    MessageFile("bench_1000_0", (150, 151), 1000),
    MessageFile("dupinbatch", (320,), 10),
)


def envelope_model():
    """A pydantic model mirroring the writer-side ``PromptProcessingOutputEvent``: the fields, in
    this order, of the deployed writer's ``messages.py`` (``dataset_types`` defaulting to [],
    which the Prompt Processing side leaves out)."""
    import pydantic
    from lsst.daf.butler import SerializedDatasetType
    from lsst.daf.butler._file_dataset import SerializedFileDataset
    from lsst.daf.butler.dimensions import SerializedDimensionRecord

    class PromptProcessingOutputEvent(pydantic.BaseModel):
        type: Literal["pp-output"] = "pp-output"
        dimension_records: list[SerializedDimensionRecord]
        dataset_types: list[SerializedDatasetType] = pydantic.Field(default_factory=list)
        datasets: list[SerializedFileDataset]

    return PromptProcessingOutputEvent


@dataclass
class Visit:
    seq_num: int
    id: int
    obs_id: str
    group: str
    physical_filter: str
    band: str
    records: dict  # element name -> DimensionRecord, the visit's own (no detector)
    detector_regions: dict  # detector id -> ConvexPolygon


class Generator:
    """Builds visits, records and datasets with daf_butler; one per output set."""

    def __init__(self, seed: int):
        import astropy.time
        from lsst.daf.butler import Config, DimensionUniverse, Timespan
        from lsst.daf.butler.datastore.file_templates import FileTemplates

        self.seed = seed
        self.universe = DimensionUniverse()
        self.uuids = random.Random(seed)
        self.Timespan = Timespan
        self.exposure_zero = astropy.time.Time(EXPOSURE_ZERO, format="isot", scale="tai")
        self.day_obs_span = Timespan.from_day_obs(DAY_OBS, offset=DAY_OBS_OFFSET_S)
        # The default file datastore's templates, chosen per dataset as the datastore chooses.
        config = Config("resource://lsst.daf.butler/configs/datastores/fileDatastore.yaml")
        self.templates = FileTemplates(config["datastore", "templates"], universe=self.universe)
        self.dataset_types = self._dataset_types()
        self.static = self._static_records()
        self.visits: dict[int, Visit] = {}
        self.model = envelope_model()

    def record(self, element: str, **fields):
        return self.universe[element].RecordClass(**fields)

    def _dataset_types(self):
        from lsst.daf.butler import DatasetType

        types = []
        for name, dimensions, storage_class in registry.DATASET_TYPES:
            if storage_class not in FORMATTERS:
                raise FixtureError(f"no formatter known for storage class {storage_class} of {name}: add it to FORMATTERS")
            types.append(DatasetType(name, dimensions, storage_class, universe=self.universe))
        return types

    def _static_records(self) -> dict:
        """What the registry already holds (bootstrap_registry.py), needed to expand data IDs."""
        static = {"instrument": self.record("instrument", **registry.INSTRUMENT_RECORD)}
        for name, band in registry.PHYSICAL_FILTERS.items():
            static[("physical_filter", name)] = self.record("physical_filter", instrument=registry.INSTRUMENT, name=name, band=band)
            static[("band", band)] = self.record("band", name=band)
        for detector in range(registry.N_SCIENCE_DETECTORS):
            static[("detector", detector)] = self.record("detector", **registry.detector_record(detector))
        return static

    def uuid4(self) -> uuid.UUID:
        """A version-4 UUID whose random bits come from the seeded stream."""
        return uuid.UUID(int=self.uuids.getrandbits(128), version=4)

    def visit(self, seq_num: int) -> Visit:
        """The visit `seq_num` of the night, made once: every message of it carries the same
        records (a writer would otherwise see two definitions of one visit)."""
        if seq_num in self.visits:
            return self.visits[seq_num]
        import astropy.time

        visit_id = DAY_OBS * 100000 + seq_num
        obs_id = f"MC_O_{DAY_OBS}_{seq_num:06d}"
        begin = self.exposure_zero + astropy.time.TimeDelta(seq_num * CADENCE_S, format="sec", scale="tai")
        end = begin + astropy.time.TimeDelta(EXPOSURE_TIME_S, format="sec", scale="tai")
        span = self.Timespan(begin, end)
        # As Prompt Processing's groups are named: the start time, ISO with microseconds.
        stamp = begin.copy()
        stamp.precision = 6
        group = stamp.isot
        physical_filter = NIGHT_FILTERS[(seq_num - 1) // VISITS_PER_FILTER % len(NIGHT_FILTERS)]
        band = registry.PHYSICAL_FILTERS[physical_filter]

        # The pointing: its own stream per visit, so a visit is the same whichever files use it.
        rng = random.Random(f"{self.seed}:pointing:{seq_num}")
        ra = round(rng.uniform(0.0, 360.0), 6)
        dec = round(math.degrees(math.asin(rng.uniform(math.sin(math.radians(-75.0)), math.sin(math.radians(5.0))))), 6)
        sky_angle = round(rng.uniform(0.0, 360.0), 6)
        zenith_angle = round(abs(dec - SITE_LATITUDE_DEG), 6)
        azimuth = 0.0 if dec < SITE_LATITUDE_DEG else 180.0
        visit_region, detector_regions = focal_plane(ra, dec, sky_angle)

        instrument = registry.INSTRUMENT
        common = dict(observation_reason="survey", target_name="lsst_wfd", science_program="BLOCK-365")
        records = {
            "day_obs": self.record("day_obs", instrument=instrument, id=DAY_OBS, timespan=self.day_obs_span),
            "group": self.record("group", instrument=instrument, name=group),
            "exposure": self.record(
                "exposure", instrument=instrument, id=visit_id, day_obs=DAY_OBS, group=group,
                physical_filter=physical_filter, obs_id=obs_id, exposure_time=EXPOSURE_TIME_S,
                dark_time=EXPOSURE_TIME_S + 0.5, observation_type="science", seq_num=seq_num,
                seq_start=seq_num, seq_end=seq_num, tracking_ra=ra, tracking_dec=dec, sky_angle=sky_angle,
                azimuth=azimuth, zenith_angle=zenith_angle, has_simulated=False, can_see_sky=True,
                timespan=span, **common,
            ),
            "visit": self.record(
                "visit", instrument=instrument, id=visit_id, day_obs=DAY_OBS, physical_filter=physical_filter,
                name=obs_id, seq_num=seq_num, exposure_time=EXPOSURE_TIME_S, azimuth=azimuth,
                zenith_angle=zenith_angle, region=visit_region, timespan=span, **common,
            ),
            # Prompt Processing defines each visit one-to-one with its exposure (visit system 0).
            "visit_system": self.record("visit_system", instrument=instrument, id=0, name=registry.VISIT_SYSTEMS[0]),
            "visit_definition": self.record("visit_definition", instrument=instrument, exposure=visit_id, visit=visit_id),
            "visit_system_membership": self.record(
                "visit_system_membership", instrument=instrument, visit_system=0, visit=visit_id
            ),
        }
        visit = Visit(seq_num, visit_id, obs_id, group, physical_filter, band, records, detector_regions)
        self.visits[seq_num] = visit
        return visit

    def message(self, visit: Visit, detector: int, datasets: int, run: str):
        """What the worker for `detector` of `visit` sends: its records and its first `datasets`
        outputs (1 to 3), each with a fresh UUID."""
        from lsst.daf.butler import DataCoordinate, DatasetRef, FileDataset

        region = self.record(
            "visit_detector_region", instrument=registry.INSTRUMENT, detector=detector, visit=visit.id,
            region=visit.detector_regions[detector],
        )
        records = dict(visit.records, visit_detector_region=region)
        known = dict(records)
        known.update(
            instrument=self.static["instrument"],
            physical_filter=self.static[("physical_filter", visit.physical_filter)],
            band=self.static[("band", visit.band)],
            detector=self.static[("detector", detector)],
        )
        values = {
            "instrument": registry.INSTRUMENT, "detector": detector, "visit": visit.id, "exposure": visit.id,
            "band": visit.band, "day_obs": DAY_OBS, "group": visit.group, "physical_filter": visit.physical_filter,
        }
        files = []
        for dataset_type in self.dataset_types[:datasets]:
            dimensions = dataset_type.dimensions
            data_id = DataCoordinate.standardize(
                {k: values[k] for k in dimensions.names}, dimensions=dimensions
            ).expanded({element: known[element] for element in dimensions.elements})
            ref = DatasetRef(dataset_type, data_id, run=run, id=self.uuid4())
            formatter, extension = FORMATTERS[dataset_type.storageClass_name]
            path = self.templates.getTemplate(ref).format(ref) + extension
            files.append(FileDataset(path, ref, formatter=formatter).to_simple())
        return self.model(dimension_records=[r.to_simple() for r in records.values()], datasets=files)

    def messages(self, spec: MessageFile) -> list:
        """The messages of a file: three datasets per detector, detectors in order from
        `first_detector`, the next visit when a visit's 189 detectors are used up; the last
        message holds the remainder."""
        out = []
        left = spec.datasets
        visits = iter(spec.seq_nums)
        visit = self.visit(next(visits))
        detector = spec.first_detector
        while left > 0:
            if detector == registry.N_SCIENCE_DETECTORS:
                visit = self.visit(next(visits))
                detector = 0
            count = min(3, left)
            out.append(self.message(visit, detector, count, spec.run))
            left -= count
            detector += 1
        return out

    def with_new_uuids(self, messages: list) -> list:
        """The same messages with every dataset UUID replaced: same data IDs, RUN and paths."""
        out = []
        for message in messages:
            copy = message.model_copy(deep=True)
            for file in copy.datasets:
                file.refs = {self.uuid4(): ref for ref in file.refs.values()}
            out.append(copy)
        return out


def focal_plane(ra: float, dec: float, sky_angle: float):
    """The visit's region (the focal plane's outline) and every science detector's region, for a
    pointing at (`ra`, `dec`) with the focal plane turned by `sky_angle` (degrees)."""
    import lsst.sphgeom as sg
    from gen_htm_vectors import frame

    center = sg.UnitVector3d(sg.LonLat.fromDegrees(ra, dec))
    east, north = frame(center)
    turn = math.radians(sky_angle)
    cos_t, sin_t = math.cos(turn), math.sin(turn)

    def on_sky(x_deg: float, y_deg: float):
        # Gnomonic: a point of the tangent plane at the pointing, back onto the sphere.
        x, y = math.tan(math.radians(x_deg)), math.tan(math.radians(y_deg))
        x, y = x * cos_t - y * sin_t, x * sin_t + y * cos_t
        return sg.UnitVector3d(
            center.x() + x * east[0] + y * north[0],
            center.y() + x * east[1] + y * north[1],
            center.z() + x * east[2] + y * north[2],
        )

    visit = sg.ConvexPolygon([on_sky(x * SENSOR_PITCH_DEG, y * SENSOR_PITCH_DEG) for x, y in OUTLINE])
    half = SENSOR_SIDE_DEG / 2
    detectors = {}
    for detector in range(registry.N_SCIENCE_DETECTORS):
        raft_column, raft_row = RAFT_POSITIONS[detector // 9]
        row, column = divmod(detector % 9, 3)
        x = (raft_column * 3 + column - 7) * SENSOR_PITCH_DEG
        y = (raft_row * 3 + row - 7) * SENSOR_PITCH_DEG
        corners = [(x - half, y - half), (x + half, y - half), (x + half, y + half), (x - half, y + half)]
        detectors[detector] = sg.ConvexPolygon([on_sky(cx, cy) for cx, cy in corners])
    return visit, detectors


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for line in lines:
            out.write(line + "\n")


def describe(messages: list) -> str:
    datasets = sum(len(f.refs) for m in messages for f in m.datasets)
    return f"{len(messages)} messages, {datasets} datasets"


def generate(output: Path, seed: int, vectors: int) -> dict:
    """Writes the whole set into `output` (a new directory); returns what fixtures.json says."""
    from gen_htm_vectors import sky_vectors

    started = time.monotonic()
    generator = Generator(seed)
    made = {}
    files = {}
    for spec in MESSAGE_FILES:
        made[spec.name] = generator.messages(spec)
    # Derived files, after the others so their UUIDs do not shift those of the others.
    made["batch_a_conflict"] = generator.with_new_uuids(made["batch_a"])
    made["dupinbatch"] = made["dupinbatch"] + made["dupinbatch"][:1]
    for name, messages in made.items():
        write_lines(output / "messages" / f"{name}.jsonl", [m.model_dump_json() for m in messages])
        files[f"messages/{name}.jsonl"] = describe(messages)
        log(f"messages/{name}.jsonl: {describe(messages)}")
    sky = sky_vectors(vectors, seed)
    path = output / "sphgeom" / "htm7_envelopes.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(sky.lines()), encoding="utf-8")
    files["sphgeom/htm7_envelopes.jsonl"] = f"{len(sky.out)} level-7 polygons"
    log(f"sphgeom/htm7_envelopes.jsonl: {len(sky.out)} level-7 polygons")
    return {
        "generator": "deploy/local/make_fixtures.py",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "versions": {
            package: importlib.metadata.version(package)
            for package in ("lsst-daf-butler", "lsst-sphgeom", "pydantic", "pydantic-core")
        },
        "dimension_universe": generator.universe.version,
        "files": files,
        "seconds": round(time.monotonic() - started, 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="directory to (re)create with the fixtures")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument(
        "--vectors", type=int, default=DEFAULT_VECTORS, help=f"HTM envelope vectors to draw (default {DEFAULT_VECTORS})"
    )
    args = parser.parse_args(argv)
    if args.vectors <= 0:
        parser.error("--vectors must be positive")
    output = args.output.absolute()
    staging = output.with_name(f".{output.name}.tmp")
    started = time.monotonic()
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        summary = generate(staging, args.seed, args.vectors)
        (staging / "fixtures.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        # Replace the old set only once the new one is complete.
        if output.exists():
            old = output.with_name(f".{output.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            output.rename(old)
            staging.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(output)
    except FixtureError as err:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"make_fixtures: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"make_fixtures: error: writing {output}: {err}", file=sys.stderr)
        return 1
    log(f"wrote {output} in {time.monotonic() - started:.2f} s (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
