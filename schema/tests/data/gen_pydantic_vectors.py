"""Generate pydantic_vectors.json: JSON written by Pydantic itself, for tests/pydantic_compat.rs.

Our serializer must print floats, strings and whole messages exactly as the Python side does.
Rather than trust a reading of pydantic-core, this asks Pydantic and daf_butler's own models.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install pydantic lsst-daf-butler
    /tmp/v/bin/python schema/tests/data/gen_pydantic_vectors.py > schema/tests/data/pydantic_vectors.json
"""

import json
import math
import random
import struct
import sys
import uuid
from typing import Literal

import pydantic
from pydantic import BaseModel, TypeAdapter
from lsst.daf.butler import SerializedDatasetType, SerializedDimensionRecord
from lsst.daf.butler._file_dataset import SerializedFileDataset


class PromptProcessingOutputEvent(BaseModel):
    """The writer-side model of a pp-output message (field order as deployed)."""

    type: Literal["pp-output"] = "pp-output"
    dimension_records: list[SerializedDimensionRecord]
    dataset_types: list[SerializedDatasetType] = []
    datasets: list[SerializedFileDataset]


def floats(rng: random.Random) -> list[float]:
    values = [0.0, -0.0, 30.0, 0.1, 1 / 3, math.pi, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308]
    for exponent in range(-325, 310):
        for mantissa in (1.0, 1.5, 9.999999999999998, 1.2345678901234567):
            try:
                value = float(f"{mantissa}e{exponent}")
            except OverflowError:
                continue
            if math.isfinite(value):
                values += [value, -value]
    # Every decimal exponent near the fixed/scientific switch, with neighbours one ulp away.
    for exponent in range(-8, 19):
        value = 10.0**exponent
        values += [value, math.nextafter(value, 0), math.nextafter(value, math.inf)]
    # Random bit patterns cover the whole range of doubles.
    while len(values) < 6000:
        (value,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if math.isfinite(value):
            values.append(value)
    # Integral values, as coordinates and times often are.
    values += [float(rng.randint(-(2**60), 2**60)) for _ in range(500)]
    return values


def strings() -> list[str]:
    controls = "".join(chr(c) for c in range(0x20))
    return [
        "", "plain", 'quote " backslash \\ slash /', controls, "\x7f", "é ü ß", "日本語",
        "\u2028\u2029", "emoji 🚀", "tab\tnew\nline\rcarriage\bback\fform",
        "LSSTCam/prompt/output-2026-05-01/ApPipe/prompt-proto-service-lsstcam",
    ]


def uuid_of_version(rng: random.Random, version: int) -> uuid.UUID:
    """A random UUID stamped with `version` (Python 3.11's uuid module refuses version 7)."""
    value = rng.getrandbits(128)
    value &= ~(0xF000 << 64) & ~(0xC000 << 48)
    value |= (version << 76) | (0x8000 << 48)
    return uuid.UUID(int=value)


def message(rng: random.Random) -> str:
    run = "LSSTCam/prompt/output-2026-05-01/ApPipe/prompt-proto-service-lsstcam"
    exposure = {
        "instrument": "LSSTCam", "id": 2026050100001, "day_obs": 20260501,
        "group": "2026-05-02T01:01:01.000001", "physical_filter": "r_57", "obs_id": "MC_O_20260501_000001",
        "exposure_time": 30.0, "dark_time": 30.5, "observation_type": "science",
        "observation_reason": "survey", "seq_num": 1, "seq_start": 1, "seq_end": 1,
        "target_name": "ünïcødé \"target\"", "science_program": "BLOCK-365",
        "tracking_ra": 1e-7, "tracking_dec": -1.5e16, "sky_angle": float("nan"),
        "azimuth": float("inf"), "zenith_angle": None, "has_simulated": False, "can_see_sky": True,
        "timespan": [1777683640000000000, 1777683670000000000],
    }
    data_id = {"instrument": "LSSTCam", "detector": 10, "visit": 2026050100001, "band": "r"}
    event = PromptProcessingOutputEvent(
        dimension_records=[SerializedDimensionRecord(definition="exposure", record=exposure)],
        dataset_types=[
            SerializedDatasetType(name="isr_statistics", storageClass="StructuredDataDict",
                                  dimensions=["instrument", "exposure", "detector"]),
        ],
        datasets=[
            SerializedFileDataset(
                refs={uuid_of_version(rng, version): {
                    "dataset_type_name": "preliminary_visit_image", "run": run, "data_id": data_id}},
                path="a/b c/ü.fits",
                formatter=None if version == 5 else "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter",
            )
            for version in (4, 5, 7)
        ],
    )
    return event.model_dump_json()


def main() -> None:
    rng = random.Random(20261128)
    out = {
        "generator": f"pydantic {pydantic.VERSION}",
        "floats": TypeAdapter(list[float]).dump_json(floats(rng)).decode(),
        "strings": TypeAdapter(list[str]).dump_json(strings()).decode(),
        "message": message(rng),
    }
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
