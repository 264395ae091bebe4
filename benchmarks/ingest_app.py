"""Ingest through the application alone (no HTTP): 40,000 usage events for 10 customers in
batches of 500, on a fresh SQLite file or a fresh PostgreSQL schema; prints records/s.

Run it in turn against two checkouts (PYTHONPATH=<checkout>/src:<checkout>) to compare
versions of the domain: `python -m benchmarks.ingest_app --store sqlite|postgres`."""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import psycopg

from benchmarks.common import pg_dsn
from billing_domain.application import BillingApplication
from billing_domain.settings import Settings
from billing_domain.usage import UsageInput

PLAN = [{"meter": "api_calls", "aggregation": "sum", "model": "per_unit", "unit_amount": "0.01"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--batches", type=int, default=80)
    args = parser.parse_args()
    schema = f"bench_app_{uuid.uuid4().hex[:8]}"
    if args.store == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp()}/billing.db"
    else:
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        url = f"{pg_dsn()}?schema={schema}"
    app = BillingApplication(
        Settings(database_url=url), clock=lambda: datetime(2026, 11, 24, 12, tzinfo=UTC)
    )
    try:
        for c in range(10):
            app.open_customer(f"c{c}", f"C{c}", "USD")
        app.publish_plan("std", "USD", PLAN)
        for c in range(10):
            app.subscribe(f"c{c}", "std", "2026-10")
        when = datetime(2026, 11, 5, 10, tzinfo=UTC)
        start = time.perf_counter()
        for b in range(args.batches):
            app.record_usage(
                [
                    UsageInput(
                        f"e{b}-{i}", f"c{i % 10}", "api_calls", Decimal("1.5"), when, {"r": "eu"}
                    )
                    for i in range(500)
                ]
            )
        took = time.perf_counter() - start
        print(f"{args.store}: {args.batches * 500} records, {args.batches * 500 / took:,.0f}/s")
    finally:
        app.close()
        if args.store == "postgres":
            with psycopg.connect(pg_dsn(), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
