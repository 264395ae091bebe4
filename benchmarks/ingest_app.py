"""Ingest through the application alone (no HTTP): 40,000 usage events for 10 customers in
batches of 500, on a fresh SQLite file or a fresh PostgreSQL schema; prints records/s.

Run it in turn against two checkouts (PYTHONPATH=<checkout>/src:<checkout>) to compare
versions of the domain: `python -m benchmarks.ingest_app --store sqlite|postgres`."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from decimal import Decimal

from benchmarks.common import scratch_store
from billing_domain.application import BillingApplication
from billing_domain.settings import Settings
from billing_domain.usage import UsageInput

PLAN = [{"meter": "api_calls", "aggregation": "sum", "model": "per_unit", "unit_amount": "0.01"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--batches", type=int, default=80)
    args = parser.parse_args()
    with scratch_store(args.store) as url:
        app = BillingApplication(
            Settings(database_url=url), clock=lambda: datetime(2026, 11, 24, 12, tzinfo=UTC)
        )
        try:
            took = ingest(app, args.batches)
        finally:
            app.close()
    print(f"{args.store}: {args.batches * 500} records, {args.batches * 500 / took:,.0f}/s")


def ingest(app: BillingApplication, batches: int) -> float:
    """Seconds to record `batches` batches of 500 events for 10 subscribed customers."""
    for c in range(10):
        app.open_customer(f"c{c}", f"C{c}", "USD")
    app.publish_plan("std", "USD", PLAN)
    for c in range(10):
        app.subscribe(f"c{c}", "std", "2026-10")
    when = datetime(2026, 11, 5, 10, tzinfo=UTC)
    start = time.perf_counter()
    for b in range(batches):
        app.record_usage(
            [
                UsageInput(
                    f"e{b}-{i}", f"c{i % 10}", "api_calls", Decimal("1.5"), when, {"r": "eu"}
                )
                for i in range(500)
            ]
        )
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
