"""Reconciliation and verification on a store of 100,000+ records: clean, then with each defect.

Fills October for several customers through the application (batches of 5,000), with a
compensation and an adjustment each, closes October, opens November, and catches the read
models up. Then it times `reconcile` for 2026-10 and `verify` on the clean store (median of
--runs), and injects the defects one after another with SQL into the stored tables
(`tests/defects.py`), each in another customer's period, timing the reconciliation after each
and printing what it named. Defects accumulate; each step lists only the new findings.

A clean reconciliation also runs alone in a fresh process, so that its own peak RSS is
reported (the main process's peak includes the fill).

    python -m benchmarks.reconcile_scale [--store sqlite|postgres|both] [--records 100000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from api.bootstrap import Services, build
from benchmarks.common import (
    REPO_ROOT,
    log,
    median_of,
    peak_rss_self_kib,
    print_report,
    scratch_store,
)
from billing_domain.settings import Settings
from billing_domain.usage import UsageInput
from projections.reconciliation import reconcile, verify
from tests import defects

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
PERIOD = "2026-10"
TOPIC = "billing_domain.period:BillingPeriod."
CHARGES: list[dict[str, Any]] = [
    {
        "meter": "api_calls",
        "aggregation": "sum",
        "model": "graduated",
        "tiers": [
            {"up_to": 10000, "unit_amount": "0.001"},
            {"up_to": None, "unit_amount": "0.0005", "flat_amount": "1"},
        ],
    },
    {"meter": "storage_gb", "aggregation": "max", "model": "per_unit", "unit_amount": "0.25"},
]


def fill(services: Services, records: int, customers: int) -> float:
    app = services.app
    app.publish_plan("std", "USD", CHARGES)
    each = records // customers
    start = datetime(2026, 10, 1, tzinfo=UTC)
    began = time.perf_counter()
    for c in range(customers):
        cid = f"c{c:02d}"
        app.open_customer(cid, f"Customer {c}")
        app.subscribe(cid, "std", "2026-01")
        for offset in range(0, each, 5000):
            app.record_usage(
                [
                    UsageInput(
                        f"{cid}-{offset + i}",
                        cid,
                        "storage_gb" if i % 50 == 0 else "api_calls",
                        Decimal(i % 7 + 1) / 4,
                        start + timedelta(seconds=offset + i),
                    )
                    for i in range(min(5000, each - offset))
                ]
            )
        app.compensate(cid, f"{cid}-1", f"{cid}-comp", Decimal("0.25"), "duplicate call")
        app.adjust(
            cid, f"{cid}-adj", "api_calls", Decimal("-3"), start + timedelta(days=3), "goodwill"
        )
        app.record_usage(
            [
                UsageInput(
                    f"{cid}-nov", cid, "api_calls", Decimal(2), datetime(2026, 11, 2, tzinfo=UTC)
                )
            ]
        )
        log(f"  {(c + 1) * each:,} records")
    seconds = time.perf_counter() - began
    for c in range(customers):
        app.close_period(f"c{c:02d}", PERIOD)
    return seconds


def read_log(services: Services) -> float:
    """Seconds to fetch every stored event's row, undecoded: the floor under any check that
    reads the whole log."""
    recorder = services.app.recorder
    began = time.perf_counter()
    start, stop = 1, int(recorder.max_notification_id() or 0)
    while start <= stop:
        page = recorder.select_notifications(start, 500, stop=stop)
        if not page:
            break
        start = page[-1].id + 1
    return time.perf_counter() - began


def reconcile_alone(url: str) -> dict[str, Any]:
    """Reconcile the period in a fresh process: its seconds and its own peak RSS."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.reconcile_scale", "--reconcile-only", url],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _reconcile_only(url: str) -> None:
    services = build(Settings(database_url=url), clock=lambda: NOW)
    try:
        report = reconcile(services, PERIOD)
    finally:
        services.close()
    assert report["ok"], report["findings"]
    print(
        json.dumps(
            {
                "seconds": report["seconds"],
                "records": report["checked"]["records"],
                "peak_rss_mib": round(peak_rss_self_kib() / 1024, 1),
                "cpu_seconds": round(time.process_time(), 3),
            }
        )
    )


def _rate(records: Any, seconds: Any) -> int | None:
    return round(records / seconds) if records and seconds else None


def defect_steps(settings: Settings) -> list[tuple[str, Callable[[], Any]]]:
    record = [["v9", "c06", "api_calls", "1", "2026-10-03T00:00:00Z", {}]]
    state = defects.usage_state(record, "2026-11-24T12:00:00Z", {"api_calls": ["sum", None]})
    return [
        (
            "stored quantity altered (c00)",
            lambda: defects.alter_usage_quantity(settings, "c00-7", "999"),
        ),
        (
            "balance row deleted (c01)",
            lambda: defects.delete_balance(settings, "c01", PERIOD, "api_calls"),
        ),
        (
            "invoice row altered (c02)",
            lambda: defects.alter_invoice_total(settings, "c02", PERIOD, "0.01"),
        ),
        (
            "event inserted with drifted clock (c03)",
            lambda: defects.insert_usage(
                settings,
                "c03",
                PERIOD,
                [["drift1", "c03", "api_calls", "1", "2026-10-20T00:00:00Z", {}]],
                "2026-10-19T00:00:00Z",
                {"api_calls": ["sum", None]},
            ),
        ),
        (
            "event id recorded again in 2026-11 (c04)",
            lambda: defects.insert_usage(
                settings,
                "c04",
                "2026-11",
                [["c04-9", "c04", "api_calls", "1", "2026-11-03T00:00:00Z", {}]],
                "2026-11-24T12:00:00Z",
                {"api_calls": ["sum", None]},
            ),
        ),
        (
            "event of unknown topic (c05)",
            lambda: defects.insert_raw(settings, "c05", PERIOD, TOPIC + "UsageRecordedV9", state),
        ),
        (
            "event of a newer class version (c06)",
            lambda: defects.insert_raw(
                settings,
                "c06",
                PERIOD,
                TOPIC + "UsageRecorded",
                json.dumps({**json.loads(state), "class_version": 7}).encode(),
            ),
        ),
        (
            "event whose state does not decode (c07)",
            lambda: defects.insert_raw(
                settings, "c07", PERIOD, TOPIC + "UsageRecorded", state[:40]
            ),
        ),
    ]


def _key(f: dict[str, Any]) -> tuple[Any, ...]:
    return (
        f["check"],
        f["cause"],
        f["customer_id"],
        f["meter"],
        f["event_id"],
        f["revision"],
        f["detail"],
    )


def named(findings: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for f in findings:
        key = f"{f['cause']}/{f['check']}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(counts.items())) or "-"


def run_store(store: str, records: int, customers: int, runs: int) -> list[dict[str, Any]]:
    with scratch_store(store) as url:
        settings = Settings(database_url=url)
        services = build(settings, clock=lambda: NOW)
        try:
            log(f"{store}: filling {records:,} records for {customers} customers")
            fill_seconds = fill(services, records, customers)
            began = time.perf_counter()
            services.read_models.catch_up()
            log(
                f"{store}: filled in {fill_seconds:.1f} s, read models caught up in "
                f"{time.perf_counter() - began:.1f} s"
            )
            rows = []
            baseline = median_of([read_log(services) for _ in range(runs)])
            rows.append(
                {
                    "store": store,
                    "step": f"baseline: read the log's rows (median of {runs})",
                    "seconds": round(baseline, 4),
                    "records": None,
                    "stored_events": None,
                    "ok": None,
                    "findings": None,
                    "new": "-",
                }
            )
            clean = [reconcile(services, PERIOD) for _ in range(runs)]
            assert all(r["ok"] for r in clean), clean[0]["findings"]
            rows.append(
                {
                    "store": store,
                    "step": f"clean (median of {runs})",
                    "seconds": median_of([r["seconds"] for r in clean]),
                    "records": clean[0]["checked"]["records"],
                    "stored_events": clean[0]["checked"]["stored_events"],
                    "ok": clean[0]["ok"],
                    "findings": 0,
                    "new": "-",
                }
            )
            alone = reconcile_alone(url)
            rows.append(
                {
                    "store": store,
                    "step": "clean, alone in a fresh process",
                    "seconds": alone["seconds"],
                    "records": alone["records"],
                    "stored_events": None,
                    "ok": True,
                    "findings": 0,
                    "new": f"peak RSS {alone['peak_rss_mib']} MiB, "
                    f"{alone['cpu_seconds']} s CPU in all",
                }
            )
            checked = [verify(services.app) for _ in range(runs)]
            rows.append(
                {
                    "store": store,
                    "step": f"verify, clean (median of {runs})",
                    "seconds": median_of([r["seconds"] for r in checked]),
                    "records": None,
                    "stored_events": checked[0]["checked"]["stored_events"],
                    "ok": checked[0]["ok"],
                    "findings": len(checked[0]["failures"]),
                    "new": f"{checked[0]['checked']['revisions']} revisions",
                }
            )
            before: set[tuple[Any, ...]] = set()
            for label, inject in defect_steps(settings):
                inject()
                report = reconcile(services, PERIOD)
                keys = {_key(f): f for f in report["findings"]}
                rows.append(
                    {
                        "store": store,
                        "step": label,
                        "seconds": report["seconds"],
                        "records": report["checked"]["records"],
                        "stored_events": report["checked"]["stored_events"],
                        "ok": report["ok"],
                        "findings": len(report["findings"]),
                        "new": named([f for k, f in keys.items() if k not in before]),
                    }
                )
                before = set(keys)
                log(f"{store}: {label}: {report['seconds']} s, {rows[-1]['new']}")
            after = verify(services.app)
            rows.append(
                {
                    "store": store,
                    "step": "verify, after all defects",
                    "seconds": after["seconds"],
                    "records": None,
                    "stored_events": after["checked"]["stored_events"],
                    "ok": after["ok"],
                    "findings": len(after["failures"]) + len(after["undecodable"]),
                    "new": ", ".join(
                        f"{f['customer_id']} rev {f['revision']}" for f in after["failures"]
                    )
                    or "-",
                }
            )
            for row in rows:
                row["records/s"] = _rate(row["records"], row["seconds"])
            return rows
        finally:
            services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--reconcile-only", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reconcile_only:
        _reconcile_only(args.reconcile_only)
        return
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    rows = [
        row for store in stores for row in run_store(store, args.records, args.customers, args.runs)
    ]
    print_report(
        "reconciliation at scale",
        {"runs": rows},
        {
            "records per store": args.records,
            "customers": args.customers,
            "peak RSS MiB": round(peak_rss_self_kib() / 1024, 1),
        },
        as_json=args.json,
        formats={"seconds": ",.3f"},
    )


if __name__ == "__main__":
    main()
