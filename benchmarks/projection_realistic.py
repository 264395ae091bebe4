"""Read models under realistic ingest: many customers, one record per stored event.

Per run, on a fresh store: N customers (`--customers`) on one plan, then `--records` usage
records ingested through the application's group-commit path (`record_usage_from`), shaped as
`--shape`:

- `spread`: every stored event holds one customer's one record: a share of single-entry
  calls (`--single`, one call per record, as one HTTP event each would be) and the rest in
  calls of `--batch` entries for distinct customers (one stored event per entry);
- `mixed`: calls of `--batch` entries over `--batch // 10` customers (about ten records per
  stored event), plus the same share of single-entry calls.

Measured: ingest records/s; the live catch-up from zero of every live projection (what
`billing projections run --once` does), records/s; a rebuild of the invoices projection from
zero in a fresh process (records/s and that process's peak RSS); the lag of the live invoices
version while `--steady-seconds` of ingest run in this process and a projection worker
(`billing projections run`) follows in another (sampled every `--sample` seconds: p50, max and
the time to drain once ingest stops); and the ratios catch-up/ingest and rebuild/ingest.
Each figure is the median of `--runs` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from api.bootstrap import Services, build
from benchmarks.common import REPO_ROOT, log, median_of, print_report, scratch_store
from billing_domain.identity import SYSTEM
from billing_domain.settings import Settings
from billing_domain.usage import UsageInput

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
START = datetime(2026, 11, 1, tzinfo=UTC)

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
rebuilds.switch(version)
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
services.close()
"""

PROFILE = """
import cProfile, pstats, sys
from datetime import UTC, datetime
from api.bootstrap import build
from billing_domain.settings import Settings
services = build(Settings(database_url=sys.argv[1]),
                 clock=lambda: datetime(2026, 11, 24, 12, tzinfo=UTC))
rebuilds = services.read_models.rebuilds
version = rebuilds.begin("invoices")
profile = cProfile.Profile()
profile.enable()
rebuilds.build(version)
profile.disable()
pstats.Stats(profile).sort_stats(sys.argv[2]).print_stats(int(sys.argv[3]))
services.close()
"""


def setup(services: Services, customers: int) -> list[str]:
    app = services.app
    app.publish_plan(
        "metered",
        "USD",
        [
            {
                "meter": "api_calls",
                "aggregation": "sum",
                "model": "graduated",
                "tiers": [
                    {"up_to": 1000, "unit_amount": "0.001"},
                    {"up_to": None, "unit_amount": "0.0005"},
                ],
            },
            {
                "meter": "storage_gb",
                "aggregation": "max",
                "model": "per_unit",
                "unit_amount": "0.1",
            },
        ],
    )
    ids = [f"c{n:06d}" for n in range(customers)]
    for customer in ids:
        app.open_customer(customer, f"Customer {customer}")
        app.subscribe(customer, "metered", "2026-01")
    return ids


class Usage:
    """Usage records in the order a fleet of product backends would send them."""

    def __init__(self, customers: list[str], prefix: str) -> None:
        self.customers = customers
        self.prefix = prefix
        self.n = 0

    def next(self, customer: str) -> UsageInput:
        self.n += 1
        meter = "storage_gb" if self.n % 5 == 0 else "api_calls"
        return UsageInput(
            f"{self.prefix}{self.n}",
            customer,
            meter,
            Decimal(self.n % 7 + 1),
            START + timedelta(seconds=self.n % 1_900_000),
        )

    def calls(self, records: int, shape: str, batch: int, single: float) -> list[list[UsageInput]]:
        """The calls carrying `records` records: single-entry ones spread among batches."""
        calls: list[list[UsageInput]] = []
        singles = int(records * single)
        every = max(1, (records - singles) // max(singles, 1))
        done = 0
        c = 0
        per_customer = 1 if shape == "spread" else 10
        if shape == "spread":  # distinct customers in a call: one stored event per record
            batch = min(batch, len(self.customers))
        while done < records:
            if singles and (len(calls) % every == 0):
                customer = self.customers[c % len(self.customers)]
                c += 1
                calls.append([self.next(customer)])
                singles -= 1
                done += 1
                continue
            size = min(batch, records - done - singles)
            if size <= 0:
                singles = max(singles, records - done)
                every = 1
                continue
            items = []
            for i in range(size):
                if i % per_customer == 0:
                    customer = self.customers[c % len(self.customers)]
                    c += 1
                items.append(self.next(customer))
            calls.append(items)
            done += size
        return calls


def ingest(services: Services, calls: list[list[UsageInput]]) -> int:
    app = services.app
    total = 0
    for items in calls:
        results = app.record_usage_from([(item, SYSTEM) for item in items])
        total += sum(1 for r in results if r.status == "accepted")
    return total


def lag_of(services: Services) -> int:
    head = services.read_models.max_position()
    live = services.read_models.runner.live("invoices")
    return int(max(head - live.position, 0))


def steady(
    url: str, services: Services, customers: list[str], args: argparse.Namespace, shape: str
) -> dict[str, float]:
    """Ingest for `--steady-seconds` while `billing projections run` follows in another
    process; sample the live invoices version's lag."""
    env = {**os.environ, "BILLING_DATABASE_URL": url, "PYTHONPATH": str(REPO_ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "projections", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while lag_of(services) > 0:  # the worker has started and caught up
            assert time.monotonic() < deadline and worker.poll() is None, "worker did not start"
            time.sleep(0.1)
        source = Usage(customers, "s")
        stop = threading.Event()
        samples: list[int] = []
        sent = [0]

        def sample() -> None:
            while not stop.wait(args.sample):
                samples.append(lag_of(services))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.perf_counter()
        while time.perf_counter() - began < args.steady_seconds:
            calls = source.calls(args.batch * 2, shape, args.batch, args.single)
            sent[0] += ingest(services, calls)
        ingest_s = time.perf_counter() - began
        stop.set()
        sampler.join()
        drained = time.perf_counter()
        while lag_of(services) > 0:
            assert time.perf_counter() - drained < 600, "worker did not drain"
            time.sleep(0.05)
        drain_s = time.perf_counter() - drained
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    ordered = sorted(samples) or [0]
    return {
        "steady_ingest_records_per_s": sent[0] / ingest_s,
        "lag_p50_notifications": float(ordered[len(ordered) // 2]),
        "lag_max_notifications": float(ordered[-1]),
        "drain_s": drain_s,
    }


def measure(url: str, args: argparse.Namespace, shape: str) -> dict[str, float]:
    services = build(Settings(database_url=url), clock=lambda: NOW)
    try:
        log(f"  {args.customers:,} customers")
        customers = setup(services, args.customers)
        services.read_models.catch_up()
        source = Usage(customers, "e")
        calls = source.calls(args.records, shape, args.batch, args.single)
        head = services.read_models.max_position()
        log(f"  ingesting {args.records:,} records in {len(calls):,} calls")
        began = time.perf_counter()
        accepted = ingest(services, calls)
        ingest_s = time.perf_counter() - began
        assert accepted == args.records, accepted
        events = services.read_models.max_position() - head
        log(f"  {events:,} stored events; live catch-up from zero")
        models = services.read_models
        with models.store.write() as cur:  # every live version back to zero, for a clean start
            for version in models.runner.versions():
                models.runner.projection(version).drop(cur)
                models.runner.projection(version).create(cur)
            cur.execute("UPDATE projection_versions SET position = 0")
        began = time.perf_counter()
        models.catch_up()
        catch_up_s = time.perf_counter() - began
        log("  rebuilding the invoices projection in a fresh process")
        out = subprocess.run(
            [sys.executable, "-c", REBUILD, url], capture_output=True, text=True, check=True
        ).stdout
        rebuild = json.loads(out.strip().splitlines()[-1])
        row: dict[str, float] = {
            "stored_events": float(events),
            "ingest_records_per_s": args.records / ingest_s,
            "catch_up_records_per_s": args.records / catch_up_s,
            "rebuild_records_per_s": args.records / rebuild["seconds"],
            "rebuild_peak_rss_mib": rebuild["peak_rss_mib"],
        }
        if args.steady_seconds > 0:
            log(f"  {args.steady_seconds:g} s of ingest with a projection worker following")
            row.update(steady(url, services, customers, args, shape))
        row["catch_up_over_ingest"] = row["catch_up_records_per_s"] / row["ingest_records_per_s"]
        row["rebuild_over_ingest"] = row["rebuild_records_per_s"] / row["ingest_records_per_s"]
        return row
    finally:
        services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--store", default="postgres", help="postgres, sqlite or both")
    parser.add_argument("--shape", default="spread,mixed")
    parser.add_argument("--batch", type=int, default=1000, help="entries per batched call")
    parser.add_argument("--single", type=float, default=0.01, help="share of single calls")
    parser.add_argument("--steady-seconds", type=float, default=20.0)
    parser.add_argument("--sample", type=float, default=0.25)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--profile", default="", help="cumulative|tottime: profile one rebuild, print, exit"
    )
    args = parser.parse_args()
    stores = ["postgres", "sqlite"] if args.store == "both" else args.store.split(",")
    if args.profile:
        with scratch_store(stores[0]) as url:
            services = build(Settings(database_url=url), clock=lambda: NOW)
            customers = setup(services, args.customers)
            ingest(services, Usage(customers, "e").calls(args.records, args.shape, args.batch, 0))
            services.close()
            subprocess.run([sys.executable, "-c", PROFILE, url, args.profile, "25"], check=True)
        return
    rows: list[dict[str, Any]] = []
    for store in stores:
        for shape in args.shape.split(","):
            runs = []
            for run in range(args.runs):
                with scratch_store(store) as url:
                    log(f"{store} {shape} run {run + 1}/{args.runs}: {args.records:,} records")
                    runs.append(measure(url, args, shape))
                    log(f"  {json.dumps(runs[-1])}")
            row: dict[str, Any] = {"store": store, "shape": shape}
            for key in runs[0]:
                row[key] = median_of([r[key] for r in runs])
            rows.append(row)
    print_report(
        "Read models under realistic ingest (medians)",
        {"projections": rows},
        {
            "customers": args.customers,
            "records": args.records,
            "runs": args.runs,
            "batch": args.batch,
            "single": args.single,
            "steady_seconds": args.steady_seconds,
        },
        as_json=args.json,
    )


if __name__ == "__main__":
    main()
