"""A period with 1,000,000 usage records: closing it, and reading it.

Fills one customer's period through the application (batches of 1,000), then measures:
closing it in a fresh process (the aggregate comes from its latest snapshot plus the events
after it: what `billing close-periods` pays) and reading the invoice from the aggregate.
Read-model figures (balances, invoices at 1,000,000 records) and rebuild come from
`benchmarks.projection_scale`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from benchmarks.common import log, median_of, print_report, scratch_store
from billing_domain.application import BillingApplication
from billing_domain.settings import Settings
from billing_domain.usage import UsageInput

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
PERIOD = "2026-10"


def fill(url: str, records: int) -> float:
    app = BillingApplication(Settings(database_url=url), clock=lambda: NOW)
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
    start = datetime(2026, 10, 1, tzinfo=UTC)
    began = time.perf_counter()
    for batch in range(records // 1000):
        app.record_usage(
            [
                UsageInput(
                    f"e{batch}-{i}",
                    "big",
                    "api_calls",
                    Decimal(1),
                    start + timedelta(seconds=batch * 2 + i // 500),
                )
                for i in range(1000)
            ]
        )
        if batch % 100 == 99:
            log(f"  {(batch + 1) * 1000:,} records")
    elapsed = time.perf_counter() - began
    app.close()
    return records / elapsed


def timed_in_fresh_process(url: str, action: str) -> float:
    """Seconds for `action` in a new interpreter (no aggregate cache), measured inside it."""
    code = (
        "import time,sys;from datetime import datetime,UTC;"
        "from billing_domain.application import BillingApplication;"
        "from billing_domain.settings import Settings;"
        f"app=BillingApplication(Settings(database_url={url!r}),"
        "clock=lambda:datetime(2026,11,24,12,tzinfo=UTC));"
        "t=time.perf_counter();"
        + (
            "r=app.close_period('big','2026-10');"
            if action == "close"
            else "r=app.invoice('big','2026-10');"
        )
        + "print(time.perf_counter()-t, r['total'], r['status'], r['lines'][0]['quantity'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}
    ).stdout.split()
    log(f"  {action}: {float(out[0]):.3f}s total={out[1]} status={out[2]} quantity={out[3]}")
    return float(out[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stores", default="postgres,sqlite")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for store in args.stores.split(","):
        with scratch_store(store) as url:
            log(f"{store}: filling one period with {args.records:,} records")
            rate = fill(url, args.records)
            reads = [timed_in_fresh_process(url, "invoice") for _ in range(args.runs)]
            close = timed_in_fresh_process(url, "close")
            rows.append(
                {
                    "store": store,
                    "records": args.records,
                    "fill_records_per_s": rate,
                    "cold_invoice_read_s": median_of(reads),
                    "cold_close_s": close,
                }
            )
    print_report(
        "A period with many records: close and aggregate reads",
        {"period": rows},
        {"runs": args.runs, "period": PERIOD},
        as_json=args.json,
    )


if __name__ == "__main__":
    main()
