#!/usr/bin/env python3
"""Open a registry with daf_butler and check it sees every dataset a writer put there, the way
its users look for them.

    python check_python_view.py BUTLER_YAML --batches REPORT.jsonl [--chain NAME]
    python check_python_view.py BUTLER_YAML --messages FILE.jsonl...

The expected datasets come from the messages themselves: with ``--batches``, the report lines a
writer printed (``daf_butler_writer.py``'s, with ``dropped``, or ``butler-writer ingest --output
json``'s, with ``rejected``) name the source file and lines of each batch, and every dataset of a
line that was not dropped or rejected is expected; with ``--messages``, every dataset of every
line. Checks, each through daf_butler's public API:

* ``query_datasets`` by RUN finds exactly the expected datasets of that RUN, for each dataset type;
* ``query_datasets`` through the CHAINED collection (``--chain``, find-first) finds, for each RUN
  in the chain, exactly the expected datasets (the first RUN of the chain wins a data ID);
* ``get_dataset(id)`` gives the dataset type, the RUN and the full data ID of the message;
* ``getURI`` resolves to the datastore root joined with the message's relative path (the files
  need not exist);
* for every visit, a spatial query (``visit.region OVERLAPS POINT(ra, dec)``) at the centre of the
  visit's region and near each of its vertices finds the visit, and for each visit-detector (all, or
  ``--max-detector-points`` spread evenly) ``visit_detector_region.region OVERLAPS POINT`` at the
  centre of the detector's region finds it; those queries go through the ``*_skypix_overlap``
  rows, which are what a writer most easily gets wrong.

Prints counts per check and exits 0 when everything passed, 1 on a failure, 2 on an error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# Messages name `lsst.obs.base` formatters; the stand-in lives beside this file. See
# daf_butler_writer.py for why this must come before any `lsst` import.
sys.path.append(str(Path(__file__).resolve().parent / "stubs"))

import lsst.sphgeom as sphgeom  # noqa: E402
from lsst.daf.butler import Butler  # noqa: E402

DEFAULT_CHAIN = "LSSTCam/prompt/output-2026-05-01"


@dataclass(frozen=True)
class Expected:
    id: str
    dataset_type: str
    run: str
    data_id: tuple  # sorted (dimension, value) pairs, required and implied, as in the message
    path: str


class Failures:
    def __init__(self, show: int):
        self.count = 0
        self.show = show

    def add(self, message: str) -> None:
        self.count += 1
        if self.count <= self.show:
            print(f"  FAIL {message}")
        elif self.count == self.show + 1:
            print("  (more failures not shown)")


def numbered_lines(path: Path) -> list[tuple[int, str]]:
    return [(n, text) for n, text in enumerate(path.read_text().splitlines(), start=1) if text.strip()]


def expected_from_lines(lines: list[str], into: dict[str, Expected]) -> None:
    for text in lines:
        message = json.loads(text)
        for dataset in message.get("datasets", []):
            for ref_id, ref in dataset["refs"].items():
                # The first sighting wins, as in the registry (a redelivery is skipped).
                into.setdefault(
                    ref_id,
                    Expected(
                        id=ref_id,
                        dataset_type=ref["dataset_type_name"],
                        run=ref["run"],
                        data_id=tuple(sorted(ref["data_id"].items())),
                        path=dataset["path"],
                    ),
                )


def load_expected(args: argparse.Namespace) -> dict[str, Expected]:
    expected: dict[str, Expected] = {}
    if args.messages:
        for path in args.messages:
            expected_from_lines([text for _, text in numbered_lines(path)], expected)
    if args.batches:
        cache: dict[str, list[tuple[int, str]]] = {}
        for text in args.batches.read_text().splitlines():
            if not text.strip():
                continue
            report = json.loads(text)
            source = report["source"]
            if source not in cache:
                cache[source] = numbered_lines(Path(source))
            excluded = {entry["line"] for entry in report.get("dropped", []) + report.get("rejected", [])}
            start = next(i for i, (n, _) in enumerate(cache[source]) if n == report["first_line"])
            batch = cache[source][start : start + report["messages"]]
            expected_from_lines([text for n, text in batch if n not in excluded], expected)
    return expected


def centre(region) -> tuple[float, float]:
    point = sphgeom.LonLat(region.getBoundingCircle().getCenter())
    return point.getLon().asDegrees(), point.getLat().asDegrees()


def probe_points(region) -> list[tuple[float, float]]:
    """The centre of a region and, for a polygon, a point just inside each vertex."""
    points = [region.getBoundingCircle().getCenter()]
    if isinstance(region, sphgeom.ConvexPolygon):
        c = sphgeom.Vector3d(points[0])
        for vertex in region.getVertices():
            v = sphgeom.Vector3d(vertex)
            points.append(sphgeom.UnitVector3d(v * 0.98 + c * 0.02))
    result = []
    for point in points:
        if region.contains(point):
            lonlat = sphgeom.LonLat(point)
            result.append((lonlat.getLon().asDegrees(), lonlat.getLat().asDegrees()))
    return result


def check(args: argparse.Namespace) -> int:
    expected = load_expected(args)
    if not expected:
        print("no expected datasets: give --batches or --messages with datasets in them", file=sys.stderr)
        return 2
    started = time.perf_counter()
    butler = Butler.from_config(str(args.butler_config))
    failures = Failures(args.show)
    timings = {}

    by_run: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for item in expected.values():
        by_run[item.run][item.dataset_type].add(item.id)
    dataset_types = sorted({item.dataset_type for item in expected.values()})

    # query_datasets by RUN.
    t0 = time.perf_counter()
    found_by_run = 0
    for run, per_type in sorted(by_run.items()):
        for dataset_type in dataset_types:
            refs = butler.query_datasets(dataset_type, collections=run, find_first=True, limit=None, explain=False)
            found = {str(ref.id) for ref in refs}
            found_by_run += len(found)
            want = per_type.get(dataset_type, set())
            if found != want:
                failures.add(
                    f"query_datasets({dataset_type!r}, collections={run!r}): {len(found)} found, {len(want)} "
                    f"expected; missing {sorted(want - found)[:3]}, unexpected {sorted(found - want)[:3]}"
                )
    timings["query by RUN"] = time.perf_counter() - t0
    print(f"query_datasets by RUN: {found_by_run} of {len(expected)} datasets found in {len(by_run)} RUNs")

    # query_datasets through the CHAINED collection, find-first.
    t0 = time.perf_counter()
    children = list(butler.collections.get_info(args.chain).children)
    winners: dict[tuple, str] = {}
    for child in children:
        for item in expected.values():
            if item.run == child:
                key = (item.dataset_type, item.data_id)
                winners.setdefault(key, item.id)
    want_chain = set(winners.values())
    found_chain: set[str] = set()
    for dataset_type in dataset_types:
        refs = butler.query_datasets(
            dataset_type, collections=args.chain, find_first=True, limit=None, explain=False
        )
        found_chain |= {str(ref.id) for ref in refs}
    if found_chain != want_chain:
        failures.add(
            f"query_datasets through {args.chain!r}: {len(found_chain)} found, {len(want_chain)} expected; "
            f"missing {sorted(want_chain - found_chain)[:3]}, unexpected {sorted(found_chain - want_chain)[:3]}"
        )
    outside = sorted({item.run for item in expected.values()} - set(children))
    timings["query through chain"] = time.perf_counter() - t0
    print(
        f"query_datasets through {args.chain}: {len(found_chain)} of {len(want_chain)} expected "
        f"({len(children)} RUNs in the chain; not in it: {outside or 'none'})"
    )

    # get_dataset and getURI, dataset by dataset.
    roots = [root for root in butler.get_datastore_roots().values() if root is not None]
    t0 = time.perf_counter()
    got = resolved = 0
    for item in expected.values():
        ref = butler.get_dataset(item.id, dimension_records=True)
        if ref is None:
            failures.add(f"get_dataset({item.id}) found nothing")
            continue
        got += 1
        if ref.datasetType.name != item.dataset_type or ref.run != item.run:
            failures.add(
                f"get_dataset({item.id}): {ref.datasetType.name} in {ref.run}, expected "
                f"{item.dataset_type} in {item.run}"
            )
        data_id = tuple(sorted(ref.dataId.mapping.items())) if ref.dataId.hasFull() else None
        if data_id != item.data_id:
            failures.add(f"get_dataset({item.id}): data ID {data_id}, expected {item.data_id}")
        try:
            uri = butler.getURI(ref)
        except Exception as err:  # noqa: BLE001 - any failure to resolve is what we report
            failures.add(f"getURI({item.id}): {type(err).__name__}: {err}")
            continue
        inside = any(uri.relative_to(root) == item.path for root in roots)
        if not inside or not str(uri).endswith(item.path):
            failures.add(f"getURI({item.id}) = {uri}, expected <root>/{item.path}")
            continue
        resolved += 1
    timings["get_dataset and getURI"] = time.perf_counter() - t0
    print(f"get_dataset: {got} of {len(expected)} found with their type, RUN and full data ID")
    print(f"getURI: {resolved} of {len(expected)} resolve to <datastore root>/<message path>")

    # Spatial queries through the skypix overlap rows.
    t0 = time.perf_counter()
    visits: dict[tuple, set[int]] = defaultdict(set)
    for item in expected.values():
        data_id = dict(item.data_id)
        if "visit" in data_id:
            visits[(data_id["instrument"], data_id["visit"])].add(data_id["detector"])
    visit_points = found_visits = 0
    for (instrument, visit), detectors in sorted(visits.items()):
        records = butler.query_dimension_records(
            "visit", instrument=instrument, visit=visit, limit=None, explain=False
        )
        if len(records) != 1 or records[0].region is None:
            failures.add(f"visit {visit}: {len(records)} records with a region")
            continue
        points = probe_points(records[0].region)
        all_found = True
        for ra, dec in points:
            visit_points += 1
            hits = butler.query_data_ids(
                ["visit"],
                where="instrument = inst AND visit.region OVERLAPS POINT(ra, dec)",
                bind={"inst": instrument, "ra": ra, "dec": dec},
                limit=None,
                explain=False,
            )
            if visit not in {hit["visit"] for hit in hits}:
                all_found = False
                failures.add(f"visit {visit} not found by visit.region OVERLAPS POINT({ra:.6f}, {dec:.6f})")
        found_visits += all_found
    pairs = sorted((instrument, visit, detector) for (instrument, visit), ds in visits.items() for detector in ds)
    if args.max_detector_points and len(pairs) > args.max_detector_points:
        step = len(pairs) / args.max_detector_points
        pairs = [pairs[int(i * step)] for i in range(args.max_detector_points)]
    found_pairs = 0
    for instrument, visit, detector in pairs:
        records = butler.query_dimension_records(
            "visit_detector_region",
            instrument=instrument,
            visit=visit,
            detector=detector,
            limit=None,
            explain=False,
        )
        if len(records) != 1 or records[0].region is None:
            failures.add(f"visit {visit} detector {detector}: {len(records)} visit_detector_region records")
            continue
        ra, dec = centre(records[0].region)
        hits = butler.query_data_ids(
            ["visit", "detector"],
            where="instrument = inst AND visit = v AND visit_detector_region.region OVERLAPS POINT(ra, dec)",
            bind={"inst": instrument, "v": visit, "ra": ra, "dec": dec},
            limit=None,
            explain=False,
        )
        if detector in {hit["detector"] for hit in hits}:
            found_pairs += 1
        else:
            failures.add(f"visit {visit} detector {detector} not found at the centre of its region")
    timings["spatial"] = time.perf_counter() - t0
    print(
        f"spatial: {found_visits} of {len(visits)} visits found at all {visit_points} probe points; "
        f"{found_pairs} of {len(pairs)} visit-detectors found at their centres"
    )

    print("timings: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items()))
    print(
        f"{len(expected)} datasets checked in {time.perf_counter() - started:.1f} s: "
        + ("ALL CHECKS PASSED" if not failures.count else f"{failures.count} FAILURES")
    )
    return 0 if not failures.count else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("butler_config", type=Path, help="the repository's butler.yaml")
    parser.add_argument("--batches", type=Path, help="a writer's JSON report, one line per batch")
    parser.add_argument("--messages", type=Path, nargs="+", help="message files whose datasets all landed")
    parser.add_argument("--chain", default=DEFAULT_CHAIN, help="the CHAINED output collection")
    parser.add_argument(
        "--max-detector-points",
        type=int,
        default=0,
        help="at most this many visit-detectors probed by a spatial query, spread evenly (0: all)",
    )
    parser.add_argument("--show", type=int, default=20, help="failures printed")
    args = parser.parse_args()
    if not args.batches and not args.messages:
        parser.error("give --batches or --messages")
    try:
        return check(args)
    except Exception as err:  # noqa: BLE001 - one line for the test log, not a traceback
        print(f"check_python_view: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
