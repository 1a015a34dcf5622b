#!/usr/bin/env python3
"""Compare two daf_butler registries table by table: the parity test's judge.

    python compare_registries.py URL_A URL_B NAMESPACE [--namespace-b NS] [--show N]

A is the registry daf_butler wrote, B the one under test. Compared:

* the set of tables of the namespace (base tables from ``information_schema``, so the
  ``dataset_tags_*`` tables made at run time are included) and each table's columns (name, type,
  nullability, in order);
* every row of every table, as a sorted multiset of rows rendered as text by Postgres
  (``ROW(...)::text``), except the column ``dataset.ingest_date``, which is a wall-clock value;
* every sequence's ``last_value`` and ``is_called``.

Also checked on B (and reported, not judged, on A): every ``dataset.ingest_date`` is TAI
nanoseconds since 1970 (UTC + 37 s) at microsecond resolution (divisible by 1000) and lies in a
sane window around now (``--ingest-window`` seconds back, a minute ahead).

Prints a line per table (rows in A, rows in B, equal or different, up to ``--show`` differing rows
each way) and exits 0 when everything is equal, 1 on any difference, 2 on an error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2 import sql

EXCLUDED_COLUMNS = {("dataset", "ingest_date")}
TAI_MINUS_UTC_NS = 37_000_000_000


def libpq_url(url: str) -> str:
    """libpq wants ``postgresql://``; accept SQLAlchemy's ``postgresql+psycopg2://`` too."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql",) + tuple(parts[1:]))


def tables(cursor, namespace: str) -> list[str]:
    cursor.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'",
        (namespace,),
    )
    return sorted(name for (name,) in cursor.fetchall())


def columns(cursor, namespace: str, table: str) -> list[tuple[str, str, str]]:
    cursor.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (namespace, table),
    )
    return [tuple(row) for row in cursor.fetchall()]


def rows(cursor, namespace: str, table: str, names: list[str]) -> Counter:
    kept = [name for name in names if (table, name) not in EXCLUDED_COLUMNS]
    if not kept:
        return Counter()
    query = sql.SQL("SELECT ROW({})::text FROM {}.{}").format(
        sql.SQL(", ").join(sql.Identifier(name) for name in kept),
        sql.Identifier(namespace),
        sql.Identifier(table),
    )
    cursor.execute(query)
    return Counter(text for (text,) in cursor.fetchall())


def sequences(cursor, namespace: str) -> dict[str, tuple]:
    cursor.execute("SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = %s", (namespace,))
    result = {}
    for (name,) in sorted(cursor.fetchall()):
        cursor.execute(
            sql.SQL("SELECT last_value, is_called FROM {}.{}").format(sql.Identifier(namespace), sql.Identifier(name))
        )
        result[name] = tuple(cursor.fetchone())
    return result


def ingest_date_problems(cursor, namespace: str, window_s: float) -> tuple[int, list[str]]:
    """(datasets, problems) for the ingest_date contract: TAI ns, microsecond resolution, recent."""
    cursor.execute(
        sql.SQL("SELECT id::text, ingest_date FROM {}.dataset").format(sql.Identifier(namespace))
    )
    found = cursor.fetchall()
    now_tai = time.time_ns() + TAI_MINUS_UTC_NS
    low, high = now_tai - int(window_s * 1e9), now_tai + 60_000_000_000
    problems = []
    for dataset_id, value in found:
        if value is None:
            problems.append(f"{dataset_id}: ingest_date is NULL")
        elif not isinstance(value, int):
            problems.append(f"{dataset_id}: ingest_date {value!r} is not an integer (TAI ns)")
        elif value % 1000 != 0:
            problems.append(f"{dataset_id}: ingest_date {value} is not at microsecond resolution")
        elif not low <= value <= high:
            problems.append(
                f"{dataset_id}: ingest_date {value} is {(value - now_tai) / 1e9:+.1f} s from now (TAI); "
                f"expected within {window_s:.0f} s before now"
            )
    return len(found), problems


def show(label: str, counter: Counter, limit: int) -> None:
    items = sorted(counter.elements())
    for text in items[:limit]:
        print(f"      only in {label}: {text}")
    if len(items) > limit:
        print(f"      ... and {len(items) - limit} more only in {label}")


def compare(args: argparse.Namespace) -> int:
    ns_a, ns_b = args.namespace, args.namespace_b or args.namespace
    with psycopg2.connect(libpq_url(args.url_a)) as conn_a, psycopg2.connect(libpq_url(args.url_b)) as conn_b:
        conn_a.set_session(readonly=True)
        conn_b.set_session(readonly=True)
        a, b = conn_a.cursor(), conn_b.cursor()
        different = 0

        tables_a, tables_b = tables(a, ns_a), tables(b, ns_b)
        if not tables_a:
            print(f"no tables in namespace {ns_a!r} of A", file=sys.stderr)
            return 2
        if tables_a != tables_b:
            different += 1
            print("TABLES DIFFER")
            for name in sorted(set(tables_a) - set(tables_b)):
                print(f"  only in A: {name}")
            for name in sorted(set(tables_b) - set(tables_a)):
                print(f"  only in B: {name}")

        print(f"{'table':<46} {'rows A':>8} {'rows B':>8}  result")
        non_empty = 0
        for table in sorted(set(tables_a) & set(tables_b)):
            cols_a, cols_b = columns(a, ns_a, table), columns(b, ns_b, table)
            if cols_a != cols_b:
                different += 1
                print(f"{table:<46} {'':>8} {'':>8}  COLUMNS DIFFER: A {cols_a} / B {cols_b}")
                continue
            names = [name for name, _, _ in cols_a]
            rows_a, rows_b = rows(a, ns_a, table, names), rows(b, ns_b, table, names)
            n_a, n_b = sum(rows_a.values()), sum(rows_b.values())
            non_empty += n_a > 0
            excluded = [name for name in names if (table, name) in EXCLUDED_COLUMNS]
            note = f" (without {', '.join(excluded)})" if excluded else ""
            if rows_a == rows_b:
                print(f"{table:<46} {n_a:>8} {n_b:>8}  equal{note}")
            else:
                different += 1
                print(f"{table:<46} {n_a:>8} {n_b:>8}  DIFFERENT{note}")
                show("A", rows_a - rows_b, args.show)
                show("B", rows_b - rows_a, args.show)

        seq_a, seq_b = sequences(a, ns_a), sequences(b, ns_b)
        for name in sorted(set(seq_a) | set(seq_b)):
            value_a, value_b = seq_a.get(name), seq_b.get(name)
            verdict = "equal" if value_a == value_b else "DIFFERENT"
            different += value_a != value_b
            print(f"sequence {name:<37} A {value_a} B {value_b}  {verdict}")

        for label, cursor, namespace, judged in (("A", a, ns_a, False), ("B", b, ns_b, True)):
            if "dataset" not in (tables_a if label == "A" else tables_b):
                continue
            count, problems = ingest_date_problems(cursor, namespace, args.ingest_window)
            verdict = "ok" if not problems else ("BAD" if judged else "bad (A, not judged)")
            print(f"ingest_date of {label}: {count} datasets, {len(problems)} problems: {verdict}")
            for problem in problems[: args.show]:
                print(f"      {problem}")
            if judged and problems:
                different += 1

    print(
        f"{len(tables_a)} tables ({non_empty} non-empty in A), {len(seq_a)} sequences: "
        + ("IDENTICAL except dataset.ingest_date" if not different else f"{different} DIFFERENCES")
    )
    return 0 if not different else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url_a", help="database URL of A (the reference, written by daf_butler)")
    parser.add_argument("url_b", help="database URL of B (the registry under test)")
    parser.add_argument("namespace", help="the registry's Postgres schema")
    parser.add_argument("--namespace-b", help="B's schema when it differs from A's")
    parser.add_argument("--show", type=int, default=10, help="differing rows shown per table and side")
    parser.add_argument(
        "--ingest-window", type=float, default=3600.0, help="how old B's ingest_date may be, in seconds"
    )
    args = parser.parse_args()
    try:
        return compare(args)
    except psycopg2.Error as err:
        print(f"compare_registries: {str(err).strip()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
