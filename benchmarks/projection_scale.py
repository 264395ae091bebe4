"""Read models at scale: one customer with 1,000,000 usage records in a period.

Measures, on PostgreSQL (and SQLite with --stores): the live catch-up of the projections,
a rebuild of the invoices projection from position zero in a fresh process (records/s and
that process's peak RSS), then balance and invoice reads through the read models (p50/p99
over --reads calls each).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from api.bootstrap import build
from benchmarks.common import latency_percentiles, log, print_report, scratch_store
from billing_domain.ids import invoice_id
from billing_domain.settings import Settings
from billing_domain.usage import UsageInput

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)

REBUILD = """
import json, resource, sys, time
from datetime import UTC, datetime
from api.bootstrap import build
from billing_domain.settings import Settings
services = build(Settings(database_url=sys.argv[1]),
                 clock=lambda: datetime(2026, 11, 24, 12, tzinfo=UTC))
rebuilds = services.read_models.rebuilds
started = time.perf_counter()
version = rebuilds.begin("invoices")
rebuilds.build(version)
changed = rebuilds.diff(version)
rebuilds.switch(version)
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "changed": len(changed),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
services.close()
"""


def measure(url: str, records: int, reads: int) -> dict[str, object]:
    services = build(Settings(database_url=url), clock=lambda: NOW)
    app, models = services.app, services.read_models
    app.open_customer("big", "Big Customer")
    app.publish_plan(
        "scale",
        "USD",
        [
            {
                "meter": "api_calls",
                "aggregation": "sum",
                "model": "graduated",
                "tiers": [
                    {"up_to": 100000, "unit_amount": "0.001"},
                    {"up_to": None, "unit_amount": "0.0005"},
                ],
            }
        ],
    )
    app.subscribe("big", "scale", "2026-01")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    began = time.perf_counter()
    for batch in range(records // 1000):
        app.record_usage(
            [
                UsageInput(
                    f"e{batch}-{i}",
                    "big",
                    "api_calls",
                    Decimal(1),
                    start + timedelta(seconds=batch + i // 100),
                )
                for i in range(1000)
            ]
        )
        if batch % 200 == 199:
            log(f"  {(batch + 1) * 1000:,} records")
    fill = records / (time.perf_counter() - began)
    began = time.perf_counter()
    models.catch_up()
    catch_up = records / (time.perf_counter() - began)
    log("  rebuilding in a fresh process")
    out = subprocess.run(
        [sys.executable, "-c", REBUILD, url], capture_output=True, text=True, check=True
    ).stdout
    rebuild = json.loads(out.strip().splitlines()[-1])
    models.catch_up()
    balance, invoice = [], []
    iid = invoice_id("big", "2026-11")
    for _ in range(reads):
        t = time.perf_counter()
        items = models.usage("big", "2026-11")["items"]
        balance.append(time.perf_counter() - t)
        t = time.perf_counter()
        found = models.invoice(iid)
        invoice.append(time.perf_counter() - t)
    assert items[0]["quantity"] == str(records) and found["total"], (items, found)
    services.close()
    b, i = latency_percentiles(balance), latency_percentiles(invoice)
    return {
        "records": records,
        "fill_records_per_s": fill,
        "live_catch_up_records_per_s": catch_up,
        "rebuild_records_per_s": records / rebuild["seconds"],
        "rebuild_s": rebuild["seconds"],
        "rebuild_peak_rss_mib": rebuild["peak_rss_mib"],
        "rebuild_changed_invoices": rebuild["changed"],
        "balance_p50_ms": b["p50"] * 1e3,
        "balance_p99_ms": b["p99"] * 1e3,
        "invoice_p50_ms": i["p50"] * 1e3,
        "invoice_p99_ms": i["p99"] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--stores", default="postgres")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for store in args.stores.split(","):
        with scratch_store(store) as url:
            log(f"{store}: {args.records:,} records in one period")
            rows.append({"store": store, **measure(url, args.records, args.reads)})
    print_report(
        "Read models with one customer's period at scale",
        {"projections": rows},
        {"reads": args.reads},
        as_json=args.json,
    )


if __name__ == "__main__":
    main()
