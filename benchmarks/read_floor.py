"""What reading and decoding the log costs per stored event, before any projection work.

A projection's catch-up or rebuild reads the log's notifications through the library's
recorder and decodes each stored event into a domain event (`projections.runner.decode_direct`,
a batch at a time with the cycle collector paused, as the runner does) before a handler sees
it. This times those two steps alone over a store of one record per
stored event (`projection_realistic`'s `spread` shape: `--customers` customers, `--records`
records, ingested through the application; or an existing store, `--url`), beside:

- the raw read: the same rows fetched by one psycopg query (`SELECT ... ORDER BY
  notification_id`, tuple rows), the least any Python reader does;
- the JSON parse alone (`json.loads` of each state);
- binary COPY into PostgreSQL in the same run (`baseline_copy`), the machine's yardstick.

It prints microseconds per stored event and the ceiling they set: the records per second a
projection would reach if its handlers and writes took no time at all. Medians of `--runs`.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import psycopg

from api.bootstrap import build
from benchmarks.baseline_copy import measure_copy_baseline
from benchmarks.common import log, median_of, print_report, scratch_store
from benchmarks.projection_realistic import NOW, Usage, ingest, setup
from billing_domain.settings import Settings
from projections.runner import decode_direct, gc_paused

PAGE = 10_000  # notifications per read, as a rebuild's batches


def fill(url: str, customers: int, records: int) -> None:
    services = build(Settings(database_url=url), clock=lambda: NOW)
    try:
        ids = setup(services, customers)
        calls = Usage(ids, "e").calls(records, "spread", 1000, 0.01)
        log(f"  ingesting {records:,} records for {customers:,} customers")
        ingest(services, calls)
    finally:
        services.close()


def measure(url: str) -> dict[str, float]:
    services = build(Settings(database_url=url), clock=lambda: NOW)
    try:
        recorder: Any = services.app.recorder
        began = time.perf_counter()
        notifications: list[Any] = []
        after = 0
        while True:
            page = recorder.select_notifications(start=after + 1, limit=PAGE)
            if not page:
                break
            notifications += page
            after = page[-1].id
        recorder_s = time.perf_counter() - began
        began = time.perf_counter()
        events = []
        for start in range(0, len(notifications), PAGE):  # a batch at a time, as the runner
            with gc_paused():
                events += [decode_direct(n) for n in notifications[start : start + PAGE]]
        decode_s = time.perf_counter() - began
        assert all(e is not None for e in events)
        began = time.perf_counter()
        for n in notifications:
            json.loads(n.state)
        parse_s = time.perf_counter() - began
        records = sum(len(getattr(e, "records", ())) for e in events)
        env = Settings(database_url=url).eventsourcing_env()
        schema = env.get("POSTGRES_SCHEMA") or "public"
        table = services.app.recorder.events_table_name
    finally:
        services.close()
    with psycopg.connect(
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        dbname=env["POSTGRES_DBNAME"],
        user=env["POSTGRES_USER"],
        password=env.get("POSTGRES_PASSWORD") or None,
    ) as conn:
        began = time.perf_counter()
        rows = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f'FROM "{schema}"."{table}" ORDER BY notification_id'
        ).fetchall()
        raw_s = time.perf_counter() - began
    n = len(notifications)
    assert len(rows) == n
    per = 1e6 / n
    return {
        "stored_events": float(n),
        "records": float(records),
        "raw_fetch_us": raw_s * per,
        "recorder_read_us": recorder_s * per,
        "json_parse_us": parse_s * per,
        "decode_us": decode_s * per,
        "read_and_decode_us": (recorder_s + decode_s) * per,
        "ceiling_records_per_s": records / (recorder_s + decode_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--url", help="an existing PostgreSQL store (BILLING_DATABASE_URL form)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    copy = measure_copy_baseline()
    if args.url:
        runs = [measure(args.url) for _ in range(args.runs)]
    else:
        with scratch_store("postgres") as url:
            fill(url, args.customers, args.records)
            runs = [measure(url) for _ in range(args.runs)]
    row: dict[str, Any] = {k: median_of([r[k] for r in runs]) for k in runs[0]}
    row["copy_rows_per_s"] = copy
    row["ceiling_over_copy"] = row["ceiling_records_per_s"] / copy
    meta = {"runs": args.runs, "store": args.url or f"{args.customers} customers, scratch"}
    print_report(
        "Reading and decoding the log, per stored event (medians)",
        {"floor": [row]},
        meta,
        as_json=args.json,
        formats={"stored_events": ",.0f", "records": ",.0f", "copy_rows_per_s": ",.0f"},
    )


if __name__ == "__main__":
    main()
