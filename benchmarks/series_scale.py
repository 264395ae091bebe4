"""Usage series at scale: the series projection's rebuild and its reads at 1,000,000 events.

On a fresh store (`--store sqlite|postgres`): one plan with a `sum` and a `max` meter,
`--customers` customers, `--events` usage events over this month's first 23 days (each with a
`region` property of 4 values), recorded through the application in calls of `--batch` events
for a hundred customers each, plus `--hot` events of one customer (c000000); then the
projections caught up. Measured: a rebuild of `series` and of `invoices` from zero
(records/s), and `--requests` of each read (p50, p95 in ms): a customer's month per day, per
hour, grouped by region, and per day as of now (which folds its per-event changes); the hot
customer's month per hour, per day by region and per day as of now; the console's overview
chart (every customer together) and a customer's chart.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from api.bootstrap import Services, build
from benchmarks.common import log, percentile, print_report, scratch_store
from billing_domain.identity import SYSTEM
from billing_domain.settings import Settings
from billing_domain.usage import UsageInput
from projections.series_reads import SeriesReads

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)
PLAN = [
    {"meter": "api_calls", "aggregation": "sum", "model": "per_unit", "unit_amount": "0.001"},
    {"meter": "storage_gb", "aggregation": "max", "model": "per_unit", "unit_amount": "0.1"},
]
REGIONS = ("eu", "us", "apac", "latam")


def load(services: Services, customers: int, events: int, batch: int, hot: int) -> list[str]:
    app = services.app
    app.publish_plan("metered", "USD", PLAN)
    ids = [f"c{n:06d}" for n in range(customers)]
    for customer in ids:
        app.open_customer(customer, customer)
        app.subscribe(customer, "metered", "2026-01")
    began = time.perf_counter()
    per_customer = max(batch // 100, 1)
    n = c = 0
    plan = [(events, None), (hot, ids[0])]
    for total, only in plan:
        done = 0
        while done < total:
            size = min(batch if only is None else 1000, total - done)
            items = []
            for i in range(size):
                if only is None and i % per_customer == 0:
                    c += 1
                customer = only or ids[c % len(ids)]
                n += 1
                done += 1
                meter = "storage_gb" if n % 5 == 0 else "api_calls"
                when = START + timedelta(seconds=(n * 7919) % (23 * 86400))
                properties = {"region": REGIONS[n % len(REGIONS)]}
                items.append(
                    UsageInput(f"e{n}", customer, meter, Decimal(n % 7 + 1), when, properties)
                )
            results = app.record_usage_from([(item, SYSTEM) for item in items])
            assert all(r.status == "accepted" for r in results)
    log(f"  {n:,} events in {time.perf_counter() - began:.0f} s")
    return ids


def rebuild(services: Services, name: str, records: int) -> float:
    rebuilds = services.read_models.rebuilds
    began = time.perf_counter()
    version = rebuilds.begin(name)
    rebuilds.build(version)
    rebuilds.switch(version)
    took = time.perf_counter() - began
    log(f"  rebuild {name}: {took:.1f} s")
    return records / took


def timed(read: Callable[[int], Any], requests: int) -> list[float]:
    took = []
    for i in range(requests):
        began = time.perf_counter()
        read(i)
        took.append((time.perf_counter() - began) * 1000)
    return took


def measure(args: argparse.Namespace) -> None:
    with scratch_store(args.store) as url:
        services = build(Settings(database_url=url), clock=lambda: NOW)
        try:
            ids = load(services, args.customers, args.events, args.batch, args.hot)
            began = time.perf_counter()
            services.read_models.catch_up()
            log(f"  catch-up of every projection: {time.perf_counter() - began:.0f} s")
            records = args.events + args.hot
            rates = {name: rebuild(services, name, records) for name in ("series", "invoices")}
            reads = SeriesReads(services.read_models)
            pick = random.Random(7)

            def customer(_: int) -> str:
                return ids[pick.randrange(1, len(ids))]

            cases: dict[str, Callable[[int], Any]] = {
                "customer month per day": lambda i: reads.series(
                    customer(i), "api_calls", START, END, "day"
                ),
                "customer month per hour": lambda i: reads.series(
                    customer(i), "api_calls", START, END, "hour"
                ),
                "customer per day by region": lambda i: reads.series(
                    customer(i), "api_calls", START, END, "day", "region"
                ),
                "customer per day as_of": lambda i: reads.series(
                    customer(i), "api_calls", START, END, "day", as_of=NOW
                ),
                "hot customer per hour": lambda i: reads.series(
                    ids[0], "api_calls", START, END, "hour"
                ),
                "hot customer per day by region": lambda i: reads.series(
                    ids[0], "api_calls", START, END, "day", "region"
                ),
                "hot customer per day as_of": lambda i: reads.series(
                    ids[0], "api_calls", START, END, "day", as_of=NOW
                ),
                "overview chart": lambda i: reads.daily(START, END),
                "customer chart": lambda i: reads.daily(START, END, customer_id=customer(i)),
            }
            rows = [
                {"figure": f"rebuild {name} (records/s)", "p50": f"{rate:,.0f}", "p95": ""}
                for name, rate in rates.items()
            ]
            for name, read in cases.items():
                took = timed(read, args.requests)
                rows.append(
                    {
                        "figure": f"{name} (ms)",
                        "p50": f"{percentile(took, 50):.1f}",
                        "p95": f"{percentile(took, 95):.1f}",
                    }
                )
            print_report(
                "series_scale",
                {"series": rows},
                {
                    "store": args.store,
                    "customers": args.customers,
                    "events": records,
                    "requests": args.requests,
                },
            )
        finally:
            services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=900_000)
    parser.add_argument("--hot", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=50)
    logging.disable(logging.INFO)
    measure(parser.parse_args())


if __name__ == "__main__":
    main()
