"""Raw-PostgreSQL baseline: how fast can plain inserts of usage-record-shaped rows go?

Three ways of writing the same rows into a scratch table (own schema, dropped at the end):
binary COPY in 10,000-row transactions, executemany in 1,000-row transactions, and one row per
transaction (autocommit INSERT: one statement, one round trip, one commit).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from time import perf_counter
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from benchmarks.common import log, median_of, peak_rss_self_kib, pg_dsn, print_report

COPY_BATCH = 10_000
EXECUTEMANY_BATCH = 1_000
COLUMNS = (
    "customer_id",
    "event_id",
    "meter",
    "quantity",
    "occurred_at",
    "received_at",
    "emitter",
    "key_id",
    "properties",
)
COLUMN_TYPES = (
    "text",
    "text",
    "text",
    "numeric",
    "timestamptz",
    "timestamptz",
    "text",
    "text",
    "jsonb",
)

Record = tuple[str, str, str, Decimal, datetime, datetime, str, str, Jsonb]
Writer = Callable[[psycopg.Connection[Any], sql.Composable, Sequence[Record]], None]


def make_records(count: int, run: int) -> list[Record]:
    """`count` distinct usage records (built before timing starts)."""
    base = datetime(2025, 1, 1, tzinfo=UTC)
    received = datetime.now(UTC)
    return [
        (
            f"cust-{i % 1000:04d}",
            f"run{run}-evt-{i:08d}",
            ("api_calls", "storage_gb", "seats")[i % 3],
            Decimal(i % 997) + Decimal(i % 10) / 10,
            base + timedelta(seconds=i),
            received,
            "emitter-1",
            "key-2025-01",
            Jsonb({"region": "eu-west-1", "endpoint": "/v1/search", "status": 200}),
        )
        for i in range(count)
    ]


@contextmanager
def scratch_table(conn: psycopg.Connection[Any]) -> Iterator[sql.Composable]:
    """A fresh schema with a usage_records table; yields the table's name, then drops the schema."""
    schema = sql.Identifier(f"bench_baseline_{os.getpid()}")
    table = sql.SQL("{}.usage_records").format(schema)
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    try:
        conn.execute(
            sql.SQL("""
            CREATE TABLE {} (
                customer_id text NOT NULL, event_id text NOT NULL, meter text NOT NULL,
                quantity numeric NOT NULL, occurred_at timestamptz NOT NULL,
                received_at timestamptz NOT NULL, emitter text NOT NULL, key_id text NOT NULL,
                properties jsonb NOT NULL)""").format(table)
        )
        conn.execute(sql.SQL("CREATE UNIQUE INDEX ON {} (customer_id, event_id)").format(table))
        yield table
    finally:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))


def _batches(records: Sequence[Record], size: int) -> Iterator[Sequence[Record]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def write_copy(
    conn: psycopg.Connection[Any], table: sql.Composable, records: Sequence[Record]
) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    )
    with conn.cursor() as cur:
        for batch in _batches(records, COPY_BATCH):
            with conn.transaction(), cur.copy(stmt) as copy:
                copy.set_types(list(COLUMN_TYPES))
                for record in batch:
                    copy.write_row(record)


def _insert(table: sql.Composable) -> sql.Composed:
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        table,
        sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
        sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS)),
    )


def write_executemany(
    conn: psycopg.Connection[Any], table: sql.Composable, records: Sequence[Record]
) -> None:
    stmt = _insert(table)
    with conn.cursor() as cur:
        for batch in _batches(records, EXECUTEMANY_BATCH):
            with conn.transaction():
                cur.executemany(stmt, batch)


def write_single(
    conn: psycopg.Connection[Any], table: sql.Composable, records: Sequence[Record]
) -> None:
    stmt = _insert(table)
    with conn.cursor() as cur:
        for record in records:
            cur.execute(stmt, record)  # autocommit: each INSERT is its own transaction


def timed_runs(
    conn: psycopg.Connection[Any], table: sql.Composable, writer: Writer, rows: int, runs: int
) -> list[float]:
    """rows/s of each run; the table is emptied (untimed) before every run."""
    rates: list[float] = []
    for run in range(runs):
        records = make_records(rows, run)
        conn.execute(sql.SQL("TRUNCATE {}").format(table))
        started = perf_counter()
        writer(conn, table, records)
        rates.append(rows / (perf_counter() - started))
    return rates


def measure_copy_baseline(dsn: str | None = None, rows: int = 100_000, runs: int = 5) -> float:
    """Median rows/s of COPY in 10,000-row transactions (the baseline other benchmarks quote)."""
    with psycopg.connect(dsn or pg_dsn(), autocommit=True) as conn, scratch_table(conn) as table:
        return median_of(timed_runs(conn, table, write_copy, rows, runs))


def show(conn: psycopg.Connection[Any], setting: str) -> str:
    row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting))).fetchone()
    return str(row[0]) if row else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--copy-rows", type=int, default=100_000, help="rows per COPY run")
    parser.add_argument(
        "--executemany-rows", type=int, default=20_000, help="rows per executemany run"
    )
    parser.add_argument(
        "--single-rows", type=int, default=2_000, help="rows per one-row-per-transaction run"
    )
    parser.add_argument(
        "--dsn", default=None, help="default: $BENCH_POSTGRES_DSN or the local test database"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )
    args = parser.parse_args()

    methods: list[tuple[str, int, int, Writer]] = [
        ("copy", COPY_BATCH, args.copy_rows, write_copy),
        ("executemany", EXECUTEMANY_BATCH, args.executemany_rows, write_executemany),
        ("single_row", 1, args.single_rows, write_single),
    ]
    per_run: list[dict[str, object]] = []
    medians: list[dict[str, object]] = []
    with psycopg.connect(args.dsn or pg_dsn(), autocommit=True) as conn:
        settings = {
            name: show(conn, name)
            for name in ("server_version", "synchronous_commit", "fsync", "wal_level")
        }
        with scratch_table(conn) as table:
            for name, batch, rows, writer in methods:
                log(f"{name}: {args.runs} runs of {rows:,} rows, {batch:,} rows per transaction")
                rates = timed_runs(conn, table, writer, rows, args.runs)
                per_run += [
                    {"method": name, "run": i, "rows": rows, "rows_per_s": r}
                    for i, r in enumerate(rates, start=1)
                ]
                medians.append(
                    {
                        "method": name,
                        "rows_per_txn": batch,
                        "rows_per_run": rows,
                        "median_rows_per_s": median_of(rates),
                        "min_rows_per_s": min(rates),
                        "max_rows_per_s": max(rates),
                    }
                )

    meta: dict[str, object] = {
        "runs": args.runs,
        "cpu_count": os.cpu_count(),
        "client_peak_rss_kib": peak_rss_self_kib(),
        **{f"pg_{k}": v for k, v in settings.items()},
    }
    rate_format = {
        k: ",.0f" for k in ("rows_per_s", "median_rows_per_s", "min_rows_per_s", "max_rows_per_s")
    }
    print_report(
        "baseline_copy: raw PostgreSQL inserts of usage records",
        {"runs": per_run, "medians": medians},
        meta,
        as_json=args.json,
        formats=rate_format,
    )


if __name__ == "__main__":
    main()
