#!/usr/bin/env python3
"""The daf_butler side of the parity test: do to a registry what the deployed Python Butler
Writer (lsst-dm/prompt_processing_butler_writer 3.1.0) does with each Kafka batch.

    python daf_butler_writer.py --butler-config BUTLER_YAML [--batch-size N] FILE.jsonl...

Behaviour reproduced (``../shared/reference/real-system.md`` sections (c) and (d),
``../shared/reference/butler-registry.md`` sections 0 and 2), written from that description:

* every line is parsed with the writer-side Pydantic model (``type: Literal["pp-output"]``,
  ``dimension_records``, ``dataset_types`` defaulting to ``[]``, ``datasets``); unknown top-level
  keys are ignored. A line that does not parse is a poison pill for the deployed writer (it
  crash-loops), so here it ends the run with exit status 2;
* the dimension records of all messages of the batch are grouped by element into
  ``DimensionRecordSet``s (the last record with a given data ID wins), and
  ``registry.insertDimensionData(element, *records, skip_existing=True)`` runs once per element in
  ``butler.dimensions.sorted(...)`` order, each call its own transaction;
* then one ``butler.ingest(*file_datasets, transfer=None, skip_existing=True,
  record_validation_info=False)`` for the whole batch, the FileDatasets made by
  ``FileDataset.from_simple`` with the universe and a loader that prefers the message's own
  ``dataset_types`` and falls back to ``butler.get_dataset_type``;
* on ``ConflictingDefinitionError`` it starts again one message at a time (dimension inserts and
  ingest per message) and drops each message that still raises ``ConflictingDefinitionError``.
  Any other exception is fatal, as in the writer (which retries, then dies): exit status 2.

The dataset IDs of a batch are the de-duplicated IDs of all its refs; in the one-at-a-time path
each successful message contributes its own de-duplicated IDs, so the list can hold duplicates
(the same message twice in one batch gives 13 IDs for 10 datasets).

One writeable Butler serves the whole run, as in the service. A batch is one input file, or
``--batch-size`` lines of it.

Prompt Processing copies its files into the datastore before it sends the message, and
``butler.ingest`` checks that they exist (up to 200 per call). The reference messages come without
files, so, unless ``--no-create-files``, an empty file is made at each dataset's path under the
datastore root first (outside the timed part). That touches no table.

Output on stdout, one JSON line per batch:
``{"batch": i, "source": FILE, "first_line": n, "messages": k, "datasets": [ids...],
"dropped": [{"line": n, "error": "..."}], "fallback": bool, "seconds": s}``; line numbers are
1-based in the source file, ``seconds`` is the time of the two daf_butler calls (with the
fallback). Progress and timings go to stderr. Exit status: 0 when nothing was dropped, 1 when some
message was dropped, 2 on an error.

``lsst.obs.base`` (the FITS formatter's home) is not on PyPI; the ``stubs/`` directory beside this
file holds a stand-in and is put on ``sys.path`` before anything from ``lsst`` is imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

# Before any `lsst` import: `lsst` is a pkgutil namespace package, whose `__path__` is computed
# from sys.path when it is first imported.
sys.path.append(str(Path(__file__).resolve().parent / "stubs"))

from typing import Literal  # noqa: E402

import pydantic  # noqa: E402
from lsst.daf.butler import (  # noqa: E402
    Butler,
    DatasetType,
    DimensionRecord,
    DimensionRecordSet,
    FileDataset,
    SerializedDatasetType,
    SerializedDimensionRecord,
    SerializedFileDataset,
)
from lsst.daf.butler.registry import ConflictingDefinitionError  # noqa: E402
from lsst.resources import ResourcePath  # noqa: E402

_LOG = logging.getLogger("daf_butler_writer")


class PromptProcessingOutputEvent(pydantic.BaseModel):
    """The writer-side model of a ``pp-output`` message (extra keys ignored, as pydantic does)."""

    type: Literal["pp-output"]
    dimension_records: list[SerializedDimensionRecord]
    dataset_types: list[SerializedDatasetType] = []
    datasets: list[SerializedFileDataset]


class Fatal(Exception):
    """Ends the run with exit status 2: the deployed writer would crash-loop on it."""


def message_ids(event: PromptProcessingOutputEvent) -> list[str]:
    """The de-duplicated dataset IDs of a list of events, as the writer reports them."""
    return sorted({str(ref_id) for dataset in event.datasets for ref_id in dataset.refs})


def insert_dimension_records(butler: Butler, events: list[PromptProcessingOutputEvent]) -> None:
    sets: dict[str, DimensionRecordSet] = {}
    for event in events:
        for simple in event.dimension_records:
            record = DimensionRecord.from_simple(simple, universe=butler.dimensions)
            name = record.definition.name
            if name not in sets:
                sets[name] = DimensionRecordSet(record.definition)
            # replace=True (the default): within a batch the last record for a data ID wins.
            sets[name].add(record)
    for element in butler.dimensions.sorted(sets.keys()):
        butler.registry.insertDimensionData(element, *sets[element.name], skip_existing=True)


def file_datasets(butler: Butler, event: PromptProcessingOutputEvent) -> list[FileDataset]:
    own_types = {
        simple.name: DatasetType.from_simple(simple, universe=butler.dimensions) for simple in event.dataset_types
    }

    def load(name: str) -> DatasetType:
        found = own_types.get(name)
        return found if found is not None else butler.get_dataset_type(name)

    return [
        FileDataset.from_simple(simple, universe=butler.dimensions, dataset_type_loader=load)
        for simple in event.datasets
    ]


def insert(butler: Butler, events: list[PromptProcessingOutputEvent]) -> None:
    """The writer's two daf_butler calls for a list of messages."""
    insert_dimension_records(butler, events)
    datasets = [dataset for event in events for dataset in file_datasets(butler, event)]
    butler.ingest(*datasets, transfer=None, skip_existing=True, record_validation_info=False)


def handle_batch(
    butler: Butler, events: list[PromptProcessingOutputEvent], lines: list[int]
) -> tuple[list[str], list[dict], bool]:
    """One Kafka batch: (dataset IDs returned, dropped messages, whether the fallback ran)."""
    try:
        insert(butler, events)
        return sorted({i for event in events for i in message_ids(event)}), [], False
    except ConflictingDefinitionError as err:
        _LOG.warning("batch conflicts (%s); retrying one message at a time", one_line(err))
    ids: list[str] = []
    dropped: list[dict] = []
    for line, event in zip(lines, events):
        try:
            insert(butler, [event])
        except ConflictingDefinitionError as err:
            _LOG.warning("dropping line %d: %s", line, one_line(err))
            dropped.append({"line": line, "error": f"{type(err).__name__}: {err}"})
            continue
        ids.extend(message_ids(event))
    return ids, dropped, True


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def datastore_root(butler: Butler) -> ResourcePath:
    roots = [root for root in butler.get_datastore_roots().values() if root is not None]
    if len(roots) != 1:
        raise Fatal(f"expected one datastore root, found {roots}: use --no-create-files")
    return roots[0]


def create_files(root: ResourcePath, events: list[PromptProcessingOutputEvent]) -> int:
    """Empty files where Prompt Processing would have copied them; returns how many were made."""
    made = 0
    for event in events:
        for dataset in event.datasets:
            path = ResourcePath(dataset.path, forceAbsolute=False, forceDirectory=False)
            uri = path if path.isabs() else root.join(dataset.path)
            if not uri.exists():
                uri.write(b"", overwrite=False)
                made += 1
    return made


def read_batches(files: list[Path], batch_size: int | None):
    """(source, [(line number, text)]) per batch; blank lines are skipped, as Kafka has none."""
    for file in files:
        try:
            numbered = [
                (n, text) for n, text in enumerate(file.read_text().splitlines(), start=1) if text.strip()
            ]
        except OSError as err:
            raise Fatal(f"cannot read {file}: {err}") from err
        size = batch_size or max(len(numbered), 1)
        for start in range(0, len(numbered), size):
            yield str(file), numbered[start : start + size]


def parse(source: str, numbered: list[tuple[int, str]]) -> list[PromptProcessingOutputEvent]:
    events = []
    for line, text in numbered:
        try:
            events.append(PromptProcessingOutputEvent.model_validate_json(text))
        except pydantic.ValidationError as err:
            raise Fatal(f"{source}:{line}: not a pp-output message ({one_line(err)})") from err
    return events


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    butler = Butler.from_config(str(args.butler_config), writeable=True)
    _LOG.info("butler start-up: %.3f s", time.perf_counter() - started)
    root = None if args.no_create_files else datastore_root(butler)
    anything_dropped = False
    for number, (source, numbered) in enumerate(read_batches(args.files, args.batch_size)):
        t0 = time.perf_counter()
        events = parse(source, numbered)
        t1 = time.perf_counter()
        made = create_files(root, events) if root is not None else 0
        t2 = time.perf_counter()
        try:
            ids, dropped, fallback = handle_batch(butler, events, [n for n, _ in numbered])
        except Exception as err:
            raise Fatal(f"batch {number} ({source}): {one_line(err)}") from err
        t3 = time.perf_counter()
        anything_dropped |= bool(dropped)
        report = {
            "batch": number,
            "source": source,
            "first_line": numbered[0][0] if numbered else 0,
            "messages": len(events),
            "datasets": ids,
            "dropped": dropped,
            "fallback": fallback,
            "seconds": round(t3 - t2, 4),
        }
        print(json.dumps(report), flush=True)
        _LOG.info(
            "batch %d %s: %d messages, %d ids, %d dropped%s; parse %.3f s, %d files made %.3f s, "
            "daf_butler %.3f s",
            number,
            Path(source).name,
            len(events),
            len(ids),
            len(dropped),
            " (fallback)" if fallback else "",
            t1 - t0,
            made,
            t2 - t1,
            t3 - t2,
        )
    _LOG.info("total %.3f s", time.perf_counter() - started)
    return 1 if anything_dropped else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--butler-config", required=True, type=Path, help="the repository's butler.yaml")
    parser.add_argument("--batch-size", type=int, help="messages per batch (default: one batch per file)")
    parser.add_argument(
        "--no-create-files", action="store_true", help="do not make empty files at the datasets' paths"
    )
    parser.add_argument("--verbose", action="store_true", help="daf_butler's INFO logs too")
    parser.add_argument("files", nargs="+", type=Path, help="pp-output messages, one JSON value per line")
    args = parser.parse_args()
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    _LOG.setLevel(logging.INFO)
    try:
        return run(args)
    except Fatal as err:
        print(f"daf_butler_writer: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
