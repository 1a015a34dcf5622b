#!/usr/bin/env python3
"""The daf_butler side of the publication parity tests: make one of the Butler-to-Butler transfers
of the Prompt Publication Service (PPS, ``lsst-dm/prompt_publication_service`` 1.0.x) between two
repositories, with the same daf_butler calls and the same bookkeeping of what was transferred and
what was missing, so that the Rust consumer's result can be compared table by table.

    python daf_butler_transfer.py dimension-records --source S.yaml --target T.yaml \\
        --element visit --ids 2026050100001 2026050100002 [--instrument LSSTCam] [--chunk 5000]
    python daf_butler_transfer.py datasets --source S.yaml --target T.yaml \\
        --mode copy|unsafe_direct --ids-file IDS [--chunk 100]
    python daf_butler_transfer.py publish --source S.yaml --target T.yaml \\
        --ids-file IDS [--tagged Prompt/Available/Outputs] [--register-tagged] [--chunk 10000]
    python daf_butler_transfer.py register-tagged --target T.yaml [--tagged Prompt/Available/Outputs]

What each sub-command does (written from PPS's documented behaviour and from observing
daf_butler, not copied from PPS):

* ``dimension-records``: the visit-record copy task. The IDs become data IDs
  ``{"instrument": INSTRUMENT, ELEMENT: id}``, standardized against the source universe (a plain
  dict is refused by daf_butler), and ``target.transfer_dimension_records_from(source, data_ids)``
  runs once per chunk of 5,000, one chunk after the other. PPS counts every ID of a chunk that
  did not raise as copied, so ``transferred`` is all the IDs and ``missing`` is always empty; an ID
  the source does not know makes daf_butler raise (``LookupError``), which ends the run (status 2).
  PPS retries a chunk on ``sqlalchemy.exc.OperationalError`` (row-lock deadlocks between its
  concurrent tasks); nothing runs concurrently here, so no retry is made.
* ``datasets``: the unembargo (``--mode copy``, chunks of 100) and /repo/main
  (``--mode unsafe_direct``, chunks of 20,000) tasks. Per chunk: ``source.get_many_datasets(ids)``;
  IDs it does not return are missing from the source registry. Then
  ``target.transfer_from(source, refs, transfer=MODE, register_dataset_types=True)``
  (``transfer_dimensions`` left at its default, False: the dimension records must already be in
  the target, which the dimension-record copy sees to). Refs found but not returned have no
  datastore record in the source; they are missing too. Refs already in the target are returned,
  so they count as transferred.
* ``publish``: the Google publication task (chunks of 10,000). Per chunk:
  ``source.get_many_datasets(ids)``, then
  ``lsst.daf.butler._rubin.transfer_datasets_in_place.transfer_datasets_in_place(source, target,
  refs)`` and ``target.registry.associate(TAGGED, refs)``. PPS counts every ref found as
  transferred (not only those the in-place transfer returns, which leaves out refs already in the
  target); only IDs unknown to the source are missing. The target's datastore names must include
  the source's (a local target gets that by naming its datastore like the source's, e.g.
  ``name: FileDatastore@<butlerRoot>`` next to ``root: <source root>`` in its butler.yaml). PPS
  expects the TAGGED collection to exist (its ``initialize_google_repo`` script makes it);
  ``--register-tagged`` registers it first, outside the timed part.
* ``register-tagged``: only that registration, ``registry.registerCollection(NAME, TAGGED)``, so
  that a target written by the Rust side gets its TAGGED collection exactly as daf_butler makes it.

PPS runs the chunks of a dataset task concurrently, each with Butlers of its own; here they run one
after the other on one pair of Butlers. The rows written are the same.

Output: one JSON object on stdout,
``{"transferred": [ids...], "missing": [ids...], "seconds": s}``, IDs sorted (dataset IDs as
UUID strings, dimension IDs as given, converted to the element's key type); ``seconds`` is the
time spent in the daf_butler calls named above, without Butler start-up or reading the IDs. If a
call raises, the object also has ``"error"`` (what the finished chunks did is still reported) and
the exit status is 2; a usage error exits with 2 too, with nothing on stdout. Progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from pathlib import Path

# The datastore records of Prompt Processing outputs name lsst.obs.base's FITS formatter, which
# is not on PyPI: the Butler Writer tests keep a stand-in, put on sys.path before anything from
# `lsst` is imported (`lsst` is a namespace package whose path is fixed at first import).
_STUBS = Path(__file__).resolve().parents[3] / "butler-writer" / "tests" / "python" / "stubs"
if _STUBS.is_dir():
    sys.path.append(str(_STUBS))

from lsst.daf.butler import Butler, CollectionType, DataCoordinate  # noqa: E402

_LOG = logging.getLogger("daf_butler_transfer")

# PPS's batch sizes per task.
DIMENSION_CHUNK = 5000
COPY_CHUNK = 100
PUBLISH_CHUNK = 10000
TAGGED_OUTPUTS = "Prompt/Available/Outputs"


class UsageError(Exception):
    """Bad input (an ID that does not parse, a missing module): exit status 2, nothing on stdout."""


class Outcome:
    """What the finished chunks transferred and found missing, and the time spent in daf_butler."""

    def __init__(self) -> None:
        self.transferred: list = []
        self.missing: list = []
        self.seconds = 0.0

    def timed(self, call, *args, **kwargs):
        """Run one daf_butler call, adding its duration to ``seconds``."""
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def report(self, error: BaseException | None = None) -> dict:
        result = {
            "transferred": sorted(self.transferred, key=_sort_key),
            "missing": sorted(self.missing, key=_sort_key),
            "seconds": round(self.seconds, 4),
        }
        if error is not None:
            result["error"] = f"{type(error).__name__}: {error}"
        return result


def _sort_key(value) -> tuple:
    # Integers before strings, each in natural order.
    return (0, value, "") if isinstance(value, int) else (1, 0, str(value))


def chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_ids(path: Path) -> list[uuid.UUID]:
    """The dataset IDs of an ID file (one UUID a line, blank lines ignored), duplicates dropped."""
    seen: dict[uuid.UUID, None] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        try:
            seen.setdefault(uuid.UUID(text), None)
        except ValueError:
            raise UsageError(f"{path}:{number}: not a UUID: {text!r}") from None
    return list(seen)


def open_butlers(args: argparse.Namespace) -> tuple[Butler, Butler]:
    started = time.perf_counter()
    source = Butler.from_config(str(args.source))
    target = Butler.from_config(str(args.target), writeable=True)
    _LOG.info("butler start-up: %.3f s", time.perf_counter() - started)
    return source, target


def copy_dimension_records(args: argparse.Namespace, outcome: Outcome) -> None:
    source, target = open_butlers(args)
    element = source.dimensions[args.element]
    # The element's key decides how an ID from the command line is read: visit and exposure IDs
    # are integers, group names are strings.
    as_key = int if element.primary_key.type == "int" else str
    try:
        keys = list(dict.fromkeys(as_key(value) for value in args.ids))
    except ValueError as err:
        raise UsageError(f"an ID is not a {args.element} key: {err}") from None
    for chunk in chunks(keys, args.chunk):
        data_ids = [
            DataCoordinate.standardize(
                {"instrument": args.instrument, args.element: key}, universe=source.dimensions
            )
            for key in chunk
        ]
        outcome.timed(target.transfer_dimension_records_from, source, data_ids)
        outcome.transferred.extend(chunk)
        _LOG.info("%s: %d records' data IDs copied", args.element, len(chunk))


def find_refs(source: Butler, ids: list[uuid.UUID], outcome: Outcome) -> tuple[list, list[str]]:
    """The source's refs for ``ids``, and the IDs it does not know."""
    refs = outcome.timed(source.get_many_datasets, ids)
    found = {ref.id for ref in refs}
    unknown = [str(i) for i in ids if i not in found]
    if unknown:
        _LOG.warning("not in the source registry: %s", unknown)
    return refs, unknown


def transfer_datasets(args: argparse.Namespace, outcome: Outcome) -> None:
    source, target = open_butlers(args)
    ids = read_ids(args.ids_file)
    for chunk in chunks(ids, args.chunk):
        refs, unknown = find_refs(source, chunk, outcome)
        returned = outcome.timed(
            target.transfer_from, source, refs, transfer=args.mode, register_dataset_types=True
        )
        done = {ref.id for ref in returned}
        # Known to the source registry but without a datastore record there: transfer_from skips
        # them (with a warning of its own) and PPS marks them missing.
        no_artifact = [str(ref.id) for ref in refs if ref.id not in done]
        if no_artifact:
            _LOG.warning("not in the source datastore: %s", no_artifact)
        # A chunk counts only once all its calls returned, as PPS records a chunk only then.
        outcome.missing.extend(unknown + no_artifact)
        outcome.transferred.extend(str(i) for i in done)
        _LOG.info("chunk of %d: %d transferred, %d missing", len(chunk), len(done), len(chunk) - len(done))


def publish(args: argparse.Namespace, outcome: Outcome) -> None:
    # Imported here: the module is daf_butler-internal and absent from older releases.
    try:
        from lsst.daf.butler._rubin.transfer_datasets_in_place import transfer_datasets_in_place
    except ImportError as err:
        raise UsageError(f"this daf_butler has no transfer_datasets_in_place ({err})") from None
    source, target = open_butlers(args)
    if args.register_tagged:
        target.registry.registerCollection(args.tagged, CollectionType.TAGGED)
    ids = read_ids(args.ids_file)
    for chunk in chunks(ids, args.chunk):
        refs, unknown = find_refs(source, chunk, outcome)
        added = outcome.timed(transfer_datasets_in_place, source, target, refs)
        outcome.timed(target.registry.associate, args.tagged, refs)
        # As PPS does: every ref found counts, also those already in the target. The in-place
        # transfer commits on its own, before associate: if associate raises, the datasets stay in
        # the target, untagged, and the chunk is not counted (a re-run skips them and tags them).
        outcome.missing.extend(unknown)
        outcome.transferred.extend(str(ref.id) for ref in refs)
        _LOG.info("chunk of %d: %d found, %d new in the target", len(chunk), len(refs), len(added))


def register_tagged(args: argparse.Namespace, outcome: Outcome) -> None:
    target = Butler.from_config(str(args.target), writeable=True)
    target.registry.registerCollection(args.tagged, CollectionType.TAGGED)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="daf_butler's INFO logs too")
    commands = parser.add_subparsers(dest="command", required=True)

    def butlers(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--source", required=True, type=Path, help="the source repository's butler.yaml")
        sub.add_argument("--target", required=True, type=Path, help="the target repository's butler.yaml")

    dims = commands.add_parser("dimension-records", help="transfer_dimension_records_from (visit copy)")
    butlers(dims)
    dims.add_argument("--element", default="visit", help="dimension of the IDs: visit, exposure, group")
    dims.add_argument("--instrument", default="LSSTCam")
    dims.add_argument("--ids", nargs="+", required=True, help="the element's IDs")
    dims.add_argument("--chunk", type=positive, default=DIMENSION_CHUNK, help="data IDs per call")
    dims.set_defaults(run=copy_dimension_records)

    data = commands.add_parser("datasets", help="transfer_from, as the unembargo and /repo/main tasks")
    butlers(data)
    data.add_argument("--mode", required=True, choices=["copy", "unsafe_direct"])
    data.add_argument("--ids-file", required=True, type=Path, help="dataset UUIDs, one a line")
    data.add_argument("--chunk", type=positive, default=COPY_CHUNK, help="datasets per call")
    data.set_defaults(run=transfer_datasets)

    pub = commands.add_parser("publish", help="in-place transfer plus associate, as the Google task")
    butlers(pub)
    pub.add_argument("--ids-file", required=True, type=Path, help="dataset UUIDs, one a line")
    pub.add_argument("--tagged", default=TAGGED_OUTPUTS, help="TAGGED collection to associate with")
    pub.add_argument(
        "--register-tagged", action="store_true", help="register the TAGGED collection first if absent"
    )
    pub.add_argument("--chunk", type=positive, default=PUBLISH_CHUNK, help="datasets per call")
    pub.set_defaults(run=publish)

    tag = commands.add_parser("register-tagged", help="register the TAGGED collection, as PPS's set-up")
    tag.add_argument("--target", required=True, type=Path, help="the target repository's butler.yaml")
    tag.add_argument("--tagged", default=TAGGED_OUTPUTS, help="TAGGED collection to register")
    tag.set_defaults(run=register_tagged)

    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    _LOG.setLevel(logging.INFO)

    outcome = Outcome()
    try:
        args.run(args, outcome)
    except UsageError as err:
        print(f"daf_butler_transfer: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        _LOG.exception("daf_butler call failed")
        print(json.dumps(outcome.report(err)), flush=True)
        return 2
    print(json.dumps(outcome.report()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
