#!/usr/bin/env python3
"""Create a daf_butler registry that holds what the central Embargo repository holds before
Prompt Processing runs, through daf_butler's public API only.

Run with the stack's virtual environment (``deploy/local/stack`` does):

    .venv/bin/python deploy/local/bootstrap_registry.py \\
        --admin-url postgres://postgres@127.0.0.1:PORT/postgres --create-database NAME \\
        --namespace NAME --repo DIR

What it does, in order:

1. optionally ``CREATE DATABASE`` (through the admin URL), then ``CREATE EXTENSION IF NOT EXISTS
   btree_gist`` in the registry database: daf_butler only checks that the extension exists
   (``../shared/reference/butler-registry.md`` section 1);
2. ``Butler.makeRepo`` from a seed config (``postgresql+psycopg2://`` because SQLAlchemy 2.1 maps
   ``postgresql://`` to psycopg 3, which is not installed; ``namespace`` is a Postgres schema),
   with the current dimension universe or an older one (``--universe-version 7``);
3. one writeable ``Butler``: its start-up creates ``file_datastore_records`` (``butler create``
   does not);
4. the instrument ``LSSTCam`` with its physical filters, 189 science detectors and visit systems,
   the three Prompt Processing output dataset types, and the CHAINED output collection with the
   output RUN prepended, as Prompt Processing's initializer does (``collections.register`` +
   ``prepend_chain``).

With ``--template-dir`` (what ``stack registry`` uses), steps 1-4 are done once into a template
database, ``butler_template_<key>`` (the key covers this file, the daf_butler version, the
options and the template directory), and every registry after that is ``CREATE DATABASE NAME TEMPLATE butler_template_<key>``
plus ``ALTER SCHEMA ... RENAME TO <namespace>`` and its own butler.yaml: a fraction of a second
instead of several. The clone is the template byte for byte (tables, rows, sequences); the schema
name appears in no row and no object definition other than as the schema itself.

The butler.yaml path goes to stdout (one line, or a JSON summary with ``--json``); progress and
timings go to stderr.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

INSTRUMENT = "LSSTCam"
# obs_lsst's LsstCam.register(): detector_max is DETECTOR_MAX, visit_max and exposure_max are the
# translator's max_exposure_id (2050-12-31, 99999 exposures a day, 6 controllers).
INSTRUMENT_RECORD = {
    "name": INSTRUMENT,
    "visit_max": 7050123199999,
    "visit_system": 2,
    "exposure_max": 7050123199999,
    "detector_max": 1000,
    "class_name": "lsst.obs.lsst.LsstCam",
}
PHYSICAL_FILTERS = {"u_24": "u", "g_6": "g", "r_57": "r", "i_39": "i", "z_20": "z", "y_10": "y"}
N_SCIENCE_DETECTORS = 189
VISIT_SYSTEMS = {0: "one-to-one", 2: "by-seq-start-end"}
DATASET_TYPES = (
    # name, dimensions, storage class
    ("preliminary_visit_image", ("instrument", "visit", "detector"), "ExposureF"),
    ("single_visit_star_unstandardized", ("instrument", "visit", "detector"), "ArrowAstropy"),
    ("isr_statistics", ("instrument", "exposure", "detector"), "StructuredDataDict"),
)
OUTPUT_CHAIN = "LSSTCam/prompt/output-2026-05-01"
OUTPUT_RUN = "LSSTCam/prompt/output-2026-05-01/ApPipe/prompt-proto-service-lsstcam"

TEMPLATE_NAMESPACE = "butler_template"

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class BootstrapError(Exception):
    """A failure with a one-line explanation of what to do."""


def log(message: str) -> None:
    print(f"bootstrap_registry: {message}", file=sys.stderr, flush=True)


def detector_record(detector_id: int) -> dict:
    raft = f"R{detector_id // 9:02d}"
    name_in_raft = f"S{(detector_id % 9) // 3}{detector_id % 3}"
    return {
        "instrument": INSTRUMENT,
        "id": detector_id,
        "full_name": f"{raft}_{name_in_raft}",
        "name_in_raft": name_in_raft,
        "raft": raft,
        "purpose": "SCIENCE",
    }


def sqlalchemy_url(url: str) -> str:
    """The registry URL as daf_butler needs it: the psycopg2 driver named explicitly."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("postgres", "postgresql", "postgresql+psycopg2"):
        return urlunsplit(("postgresql+psycopg2",) + tuple(parts[1:]))
    raise BootstrapError(f"unsupported database URL scheme {scheme!r}: use postgres://USER@HOST:PORT/DB")


def libpq_url(url: str) -> str:
    """The URL as libpq (psycopg2.connect) accepts it: no SQLAlchemy driver suffix."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql",) + tuple(parts[1:]))


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit((parts.scheme, netloc) + tuple(parts[2:]))


def connect(url: str):
    import psycopg2

    try:
        connection = psycopg2.connect(libpq_url(url), connect_timeout=10)
    except psycopg2.OperationalError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise BootstrapError(f"cannot connect to {redact(url)}: {first}") from err
    connection.autocommit = True
    return connection


def create_database(admin_url: str, name: str) -> None:
    import psycopg2

    # No `with connection`: psycopg2 would open a transaction, and CREATE DATABASE refuses one.
    connection = connect(admin_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    except psycopg2.errors.DuplicateDatabase as err:
        raise BootstrapError(f"database {name!r} already exists: pick another name, or drop it first") from err
    except psycopg2.Error as err:
        raise BootstrapError(f"CREATE DATABASE {name} failed: {(err.pgerror or str(err)).strip()}") from err
    finally:
        connection.close()


def prepare_database(db_url: str, namespace: str) -> bool:
    """Make sure btree_gist exists; return whether the namespace already holds a registry."""
    import psycopg2

    connection = connect(db_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'btree_gist'")
            if cursor.fetchone() is None:
                try:
                    cursor.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
                except psycopg2.Error as err:
                    raise BootstrapError(
                        "the registry database needs the btree_gist extension and it could not be "
                        f"created ({(err.pgerror or str(err)).strip()}): run CREATE EXTENSION "
                        "btree_gist as a superuser in that database"
                    ) from err
            cursor.execute(
                "SELECT 1 FROM information_schema.tables "
                "WHERE table_schema = %s AND table_name = 'butler_attributes'",
                (namespace,),
            )
            return cursor.fetchone() is not None
    finally:
        connection.close()


def universe_config(version: int | None) -> tuple[str | None, int]:
    """The dimension configuration file for `version` (None for daf_butler's current universe)
    and the version it defines. Read from daf_butler's package files, without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("lsst.daf.butler")
    configs = Path(list(spec.submodule_search_locations)[0]) / "configs"
    match = re.search(r"^version:\s*(\d+)", (configs / "dimensions.yaml").read_text(), re.MULTILINE)
    current = int(match.group(1)) if match else None
    if version is None or version == current:
        return None, current
    old = configs / "old_dimensions" / f"daf_butler_universe{version}.yaml"
    if not old.exists():
        raise BootstrapError(
            f"this daf_butler has no dimension universe {version} (current is {current}; "
            f"older ones are in {old.parent})"
        )
    return str(old), version


def make_repo(args: argparse.Namespace, registry_url: str) -> Path:
    from lsst.daf.butler import Butler, Config

    repo = Path(args.repo).absolute()
    repo.mkdir(parents=True, exist_ok=True)
    seed = {"registry": {"db": sqlalchemy_url(registry_url), "namespace": args.namespace}}
    if args.datastore_root:
        root = Path(args.datastore_root).absolute()
        root.mkdir(parents=True, exist_ok=True)
        seed["datastore"] = {"root": str(root)}
    dimension_config, version = universe_config(args.universe_version)
    Butler.makeRepo(
        str(repo),
        config=Config(seed),
        dimensionConfig=dimension_config,
        # Keep an explicit datastore root; otherwise it is <butlerRoot>, the repository directory,
        # and the datastore name is "FileDatastore@<butlerRoot>" as in the reference registry.
        forceConfigRoot=not args.datastore_root,
    )
    log(f"made repository {repo} (universe {version}, namespace {args.namespace})")
    return repo / "butler.yaml"


def register_contents(butler_yaml: Path, output_runs: list[str]) -> dict:
    from lsst.daf.butler import Butler, CollectionType, DatasetType

    butler = Butler.from_config(str(butler_yaml), writeable=True)
    try:
        registry = butler.registry
        with butler.transaction():
            registry.insertDimensionData("instrument", INSTRUMENT_RECORD, skip_existing=True)
            registry.insertDimensionData(
                "physical_filter",
                *({"instrument": INSTRUMENT, "name": name, "band": band} for name, band in PHYSICAL_FILTERS.items()),
                skip_existing=True,
            )
            registry.insertDimensionData(
                "detector", *(detector_record(i) for i in range(N_SCIENCE_DETECTORS)), skip_existing=True
            )
            registry.insertDimensionData(
                "visit_system",
                *({"instrument": INSTRUMENT, "id": i, "name": name} for i, name in VISIT_SYSTEMS.items()),
                skip_existing=True,
            )
        # registerDatasetType creates the dataset_tags tables (DDL), so no outer transaction.
        for name, dimensions, storage_class in DATASET_TYPES:
            registry.registerDatasetType(
                DatasetType(name, dimensions, storage_class, universe=butler.dimensions)
            )
        # As Prompt Processing's initializer: register the output RUN and the CHAINED collection,
        # then prepend the RUN to the chain (real-system.md, "Scope of responsibilities").
        butler.collections.register(OUTPUT_CHAIN, CollectionType.CHAINED)
        for run in output_runs:
            butler.collections.register(run, CollectionType.RUN)
        chain = list(butler.collections.get_info(OUTPUT_CHAIN).children)
        missing = [run for run in output_runs if run not in chain]
        if missing:
            butler.collections.prepend_chain(OUTPUT_CHAIN, missing)
        return summarize(butler)
    finally:
        butler.close()


def summarize(butler) -> dict:
    registry = butler.registry
    return {
        "universe": f"{butler.dimensions.namespace} {butler.dimensions.version}",
        "dataset_types": sorted(t.name for t in registry.queryDatasetTypes()),
        "collections": {
            info.name: info.type.name for info in butler.collections.query_info("*")
        },
        "chain": {OUTPUT_CHAIN: list(butler.collections.get_info(OUTPUT_CHAIN).children)},
        "detectors": len(list(registry.queryDimensionRecords("detector", instrument=INSTRUMENT))),
        "physical_filters": sorted(
            r.name for r in registry.queryDimensionRecords("physical_filter", instrument=INSTRUMENT)
        ),
    }


def check_datastore_table(db_url: str, namespace: str) -> None:
    connection = connect(db_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM information_schema.tables "
                "WHERE table_schema = %s AND table_name = 'file_datastore_records'",
                (namespace,),
            )
            if cursor.fetchone() is None:
                raise BootstrapError("file_datastore_records was not created by the writeable Butler")
    finally:
        connection.close()


def database_exists(admin_url: str, name: str) -> bool:
    connection = connect(admin_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cursor.fetchone() is not None
    finally:
        connection.close()


def drop_database(admin_url: str, name: str) -> None:
    connection = connect(admin_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        connection.close()


def template_key(args: argparse.Namespace) -> str:
    """What the template's content depends on: this program, daf_butler and the options; and the
    template directory, so that two stacks sharing one server never share a template."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(str(Path(args.template_dir).absolute()).encode())
    digest.update(importlib.metadata.version("lsst-daf-butler").encode())
    digest.update(repr((args.universe_version, args.output_runs)).encode())
    return digest.hexdigest()[:12]


def record_database(args: argparse.Namespace, name: str) -> None:
    if args.record_databases:
        # Under the lock stack up holds while it rewrites the record (its leftover cleanup).
        with open(args.record_databases + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with open(args.record_databases, "a") as record:
                record.write(name + "\n")


def ensure_template(args: argparse.Namespace) -> tuple[str, Path]:
    """The template database and repository for these options, built on first use.

    A lock file serializes builders; the build runs in a child process, so that none of its
    connections to the template database outlive it (CREATE DATABASE ... TEMPLATE refuses a
    template that has sessions)."""
    key = template_key(args)
    database = f"butler_template_{key}"
    template_dir = Path(args.template_dir).absolute()
    template_dir.mkdir(parents=True, exist_ok=True)
    repo = template_dir / key
    complete = repo / "complete"
    with open(template_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete.exists() and database_exists(args.admin_url, database):
            return database, repo
        log(f"building template {database} (once for these options)")
        drop_database(args.admin_url, database)
        shutil.rmtree(repo, ignore_errors=True)
        command = [
            sys.executable, str(Path(__file__).absolute()),
            "--admin-url", args.admin_url, "--create-database", database,
            "--namespace", TEMPLATE_NAMESPACE, "--repo", str(repo),
        ]
        if args.universe_version is not None:
            command += ["--universe-version", str(args.universe_version)]
        if args.output_runs:
            for run in args.output_runs:
                command += ["--output-run", run]
        else:
            command.append("--no-output-run")
        record_database(args, database)
        if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
            drop_database(args.admin_url, database)
            raise BootstrapError(f"building the template registry {database} failed (see above)")
        complete.write_text(f"{database}\n")
        return database, repo


def clone_from_template(args: argparse.Namespace) -> Path:
    import psycopg2
    import yaml

    template, template_repo = ensure_template(args)
    name = args.create_database
    connection = connect(args.admin_url)
    try:
        with connection.cursor() as cursor:
            # Another clone of the same template starting at this instant can make Postgres see a
            # session on the template for a moment; retry briefly.
            for attempt in range(50):
                try:
                    cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
                    break
                except psycopg2.errors.ObjectInUse:
                    if attempt == 49:
                        raise
                    time.sleep(0.1)
    except psycopg2.errors.DuplicateDatabase as err:
        raise BootstrapError(f"database {name!r} already exists: pick another name, or drop it first") from err
    except psycopg2.Error as err:
        raise BootstrapError(f"CREATE DATABASE {name} failed: {(err.pgerror or str(err)).strip()}") from err
    finally:
        connection.close()
    record_database(args, name)
    if args.namespace != TEMPLATE_NAMESPACE:
        connection = connect(args.db_url)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'ALTER SCHEMA "{TEMPLATE_NAMESPACE}" RENAME TO "{args.namespace}"')
        finally:
            connection.close()
    config = yaml.safe_load((template_repo / "butler.yaml").read_text())
    config["registry"]["db"] = sqlalchemy_url(args.db_url)
    config["registry"]["namespace"] = args.namespace
    if args.datastore_root:
        root = Path(args.datastore_root).absolute()
        root.mkdir(parents=True, exist_ok=True)
        config["datastore"]["root"] = str(root)
    repo = Path(args.repo).absolute()
    repo.mkdir(parents=True, exist_ok=True)
    butler_yaml = repo / "butler.yaml"
    butler_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    return butler_yaml


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db-url", help="URL of the registry database (postgres://USER@HOST:PORT/DB)")
    parser.add_argument("--admin-url", help="superuser URL used to create the database (with --create-database)")
    parser.add_argument("--create-database", metavar="NAME", help="create database NAME and put the registry in it")
    parser.add_argument("--namespace", required=True, help="Postgres schema that holds the registry tables")
    parser.add_argument("--repo", required=True, help="directory where butler.yaml is written")
    parser.add_argument("--datastore-root", help="datastore root directory (default: the repository directory)")
    parser.add_argument("--universe-version", type=int, help="dimension universe version (default: daf_butler's current)")
    parser.add_argument(
        "--output-run",
        action="append",
        dest="output_runs",
        help=f"RUN to register and prepend to {OUTPUT_CHAIN} (repeatable; default {OUTPUT_RUN})",
    )
    parser.add_argument("--no-output-run", action="store_true", help="leave the chain empty and register no RUN")
    parser.add_argument("--exist-ok", action="store_true", help="succeed if the namespace already holds a registry")
    parser.add_argument(
        "--template-dir",
        help="with --create-database: clone a template database built once (its repository is kept here)",
    )
    parser.add_argument("--record-databases", metavar="FILE", help="append the name of each database created to FILE")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of the butler.yaml path")
    args = parser.parse_args(argv)
    if not IDENTIFIER.match(args.namespace):
        parser.error(f"namespace {args.namespace!r} must match {IDENTIFIER.pattern}")
    if args.create_database:
        if not IDENTIFIER.match(args.create_database):
            parser.error(f"database name {args.create_database!r} must match {IDENTIFIER.pattern}")
        if not args.admin_url:
            parser.error("--create-database needs --admin-url")
        args.db_url = with_database(args.admin_url, args.create_database)
    if not args.db_url:
        parser.error("give --db-url, or --admin-url with --create-database")
    if args.no_output_run:
        args.output_runs = []
    elif not args.output_runs:
        args.output_runs = [OUTPUT_RUN]
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        universe_config(args.universe_version)
    except BootstrapError as err:
        print(f"bootstrap_registry: error: {err}", file=sys.stderr)
        return 1
    if args.template_dir and args.create_database:
        try:
            butler_yaml = clone_from_template(args)
        except BootstrapError as err:
            print(f"bootstrap_registry: error: {err}", file=sys.stderr)
            return 1
        log(f"cloned in {time.monotonic() - started:.2f} s")
        if args.json:
            from lsst.daf.butler import Butler

            butler = Butler.from_config(str(butler_yaml))
            try:
                summary = summarize(butler)
            finally:
                butler.close()
            summary.update(butler_yaml=str(butler_yaml), database_url=redact(args.db_url), namespace=args.namespace)
            print(json.dumps(summary, indent=1))
        else:
            print(butler_yaml)
        return 0
    try:
        if args.create_database:
            create_database(args.admin_url, args.create_database)
            record_database(args, args.create_database)
            log(f"created database {args.create_database}")
        exists = prepare_database(args.db_url, args.namespace)
        butler_yaml = Path(args.repo).absolute() / "butler.yaml"
        if exists:
            if not args.exist_ok:
                raise BootstrapError(
                    f"namespace {args.namespace!r} in {redact(args.db_url)} already holds a registry "
                    "(use --exist-ok to reuse it, or another namespace)"
                )
            if not butler_yaml.exists():
                raise BootstrapError(
                    f"namespace {args.namespace!r} holds a registry but {butler_yaml} is missing: "
                    "drop the schema or use another repository directory"
                )
            log(f"reusing the registry in namespace {args.namespace}")
        else:
            make_repo(args, args.db_url)
        made = time.monotonic()
        summary = register_contents(butler_yaml, args.output_runs)
        check_datastore_table(args.db_url, args.namespace)
        done = time.monotonic()
        log(f"done in {done - started:.2f} s (repository {made - started:.2f} s, contents {done - made:.2f} s)")
    except BootstrapError as err:
        print(f"bootstrap_registry: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        summary["butler_yaml"] = str(butler_yaml)
        summary["database_url"] = redact(args.db_url)
        summary["namespace"] = args.namespace
        print(json.dumps(summary, indent=1))
    else:
        print(butler_yaml)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
