"""Write the dimension universes daf_butler stores in `butler_attributes` (`config:dimensions.json`),
for the universe unit tests of src/universe.rs.

    .venv/bin/python butler-writer/tests/data/gen_universes.py butler-writer/tests/data
"""

import json
import sys
from pathlib import Path

from lsst.daf.butler import DimensionConfig


def main(out: Path) -> None:
    from lsst.resources import ResourcePath

    current = DimensionConfig()  # daf_butler's current universe (8 for the pinned version)
    (out / f"universe_v{current['version']}.json").write_text(json.dumps(current.toDict()) + "\n")
    old = ResourcePath("resource://lsst.daf.butler/configs/old_dimensions/daf_butler_universe7.yaml")
    (out / "universe_v7.json").write_text(json.dumps(DimensionConfig(old).toDict()) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
