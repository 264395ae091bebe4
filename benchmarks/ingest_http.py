"""Ingest through `billing serve` over HTTP: batches of 1,000 and single events from 32 clients.

For each store (PostgreSQL, SQLite) a fresh store is served by `billing serve`; 100 customers
on one plan are created through the API. Duplicates are mixed in: every batch re-sends 10% of
the previous batch's events, and every 10th single request repeats the one before it.
The raw PostgreSQL COPY baseline and the bare endpoint are measured in the same run, so the
ratios hold on a noisy machine. Every figure is the median of --runs runs.
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.baseline_copy import measure_copy_baseline
from benchmarks.baseline_endpoint import measure_bare_endpoint
from benchmarks.common import (
    free_port,
    http_request,
    latency_percentiles,
    log,
    median_of,
    peak_rss_pid_kib,
    pg_dsn,
    print_report,
    running_server,
)
from benchmarks.loadgen import choose_generator, run_load

CUSTOMERS = 100
PLAN = {
    "plan_id": "bench",
    "currency": "USD",
    "charges": [
        {
            "meter": "api_calls",
            "aggregation": "sum",
            "model": "graduated",
            "tiers": [
                {"up_to": 100000, "unit_amount": "0.001"},
                {"up_to": None, "unit_amount": "0.0005", "flat_amount": "10"},
            ],
        }
    ],
}


def _call(
    port: int,
    method: str,
    path: str,
    key: str,
    body: Any = None,
    expect: tuple[int, ...] = (200, 201, 202),
    timeout: float = 60.0,
) -> Any:
    status, payload = http_request(
        port,
        method,
        path,
        None if body is None else json.dumps(body).encode(),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=timeout,
    )
    if status not in expect:
        raise RuntimeError(f"{method} {path} answered {status}: {payload[:500]!r}")
    return json.loads(payload) if payload else None


def setup_customers(port: int, key: str) -> None:
    _call(port, "POST", "/v1/plans", key, PLAN)
    for i in range(CUSTOMERS):
        _call(
            port,
            "POST",
            "/v1/customers",
            key,
            {"customer_id": f"cust-{i}", "name": f"Customer {i}"},
        )
        _call(
            port,
            "PUT",
            f"/v1/customers/cust-{i}/subscription",
            key,
            {"plan_id": "bench", "effective_from": "2026-01"},
        )


def batch_events(label: str, client: int, number: int, occurred_at: str) -> list[dict[str, Any]]:
    fresh = [
        {
            "event_id": f"{label}-{client}-{number}-{i}",
            "customer_id": f"cust-{(client * 7 + i) % CUSTOMERS}",
            "meter": "api_calls",
            "quantity": "1.5",
            "occurred_at": occurred_at,
            "properties": {"region": "eu-west-1"},
        }
        for i in range(1000)
    ]
    if number == 0:
        return fresh
    retried = batch_events(label, client, number - 1, occurred_at)[:100]
    return fresh[:900] + retried


def run_batches(
    port: int, key: str, label: str, clients: int, batches: int, occurred_at: str
) -> dict[str, Any]:
    latencies: list[float] = []
    counts = {"accepted": 0, "duplicate": 0, "other": 0}
    lock = threading.Lock()
    bodies = {
        (c, b): json.dumps({"events": batch_events(label, c, b, occurred_at)}).encode()
        for c in range(clients)
        for b in range(batches)
    }

    def client(c: int) -> None:
        for b in range(batches):
            started = time.perf_counter()
            status, payload = http_request(
                port,
                "POST",
                "/v1/usage/batch",
                bodies[(c, b)],
                {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                timeout=120,
            )
            elapsed = time.perf_counter() - started
            if status != 200:
                raise RuntimeError(f"batch answered {status}: {payload[:300]!r}")
            statuses = [r["status"] for r in json.loads(payload)["results"]]
            with lock:
                latencies.append(elapsed)
                for s in statuses:
                    counts[s if s in counts else "other"] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    events = clients * batches * 1000
    pct = latency_percentiles(latencies)
    return {
        "events": events,
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "p50_ms": pct["p50"] * 1e3,
        "p99_ms": pct["p99"] * 1e3,
        **counts,
    }


def store_url(store: str, workdir: Path) -> tuple[str, Any]:
    if store == "sqlite":
        return f"sqlite:///{workdir}/bench-{uuid.uuid4().hex[:8]}.db", None
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return f"{pg_dsn()}?schema={schema}", drop


def measure_store(store: str, args: argparse.Namespace, generator: str) -> dict[str, Any]:
    occurred_at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = store_url(store, Path(tmp))
        key = secrets.token_urlsafe(24)
        port = free_port()
        env = {"BILLING_DATABASE_URL": url, "BILLING_ADMIN_KEY": key}
        try:
            with running_server(
                ["billing", "serve", "--host", "127.0.0.1", "--port", str(port)],
                port,
                env=env,
                timeout=60,
            ) as server:
                setup_customers(port, key)
                batch_runs, single_runs = [], []
                for run in range(1, args.runs + 1):
                    log(f"{store}: batch run {run}/{args.runs}")
                    batch_runs.append(
                        run_batches(
                            port, key, f"b{run}", args.batch_clients, args.batches, occurred_at
                        )
                    )
                    log(f"{store}: single-event run {run}/{args.runs}")
                    single = run_load(
                        port,
                        duration=args.duration,
                        concurrency=args.concurrency,
                        label=f"s{run}",
                        generator=generator,
                        headers={"Authorization": f"Bearer {key}"},
                        customers=CUSTOMERS,
                        occurred_at=occurred_at,
                        dup_every=10,
                    )
                    single_runs.append(single)
                rss = peak_rss_pid_kib(server.pid)
        finally:
            if drop:
                drop()
    return {
        "store": store,
        "batch_events_per_s": median_of([r["events_per_s"] for r in batch_runs]),
        "batch_p50_ms": median_of([r["p50_ms"] for r in batch_runs]),
        "batch_p99_ms": median_of([r["p99_ms"] for r in batch_runs]),
        "batch_duplicates": batch_runs[-1]["duplicate"],
        "single_events_per_s": median_of([r.requests_per_s for r in single_runs]),
        "single_p50_ms": median_of([r.p50_ms for r in single_runs]),
        "single_p99_ms": median_of([r.p99_ms for r in single_runs]),
        "single_errors": sum(r.errors for r in single_runs),
        "server_peak_rss_mib": (rss or 0) / 1024,
        "generator": single_runs[0].generator,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10, help="batch requests per client per run")
    parser.add_argument("--batch-clients", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10, help="seconds per single-event run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stores", default="postgres,sqlite")
    parser.add_argument("--loadgen", default="auto", choices=["auto", "wrk", "python"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    generator = choose_generator(args.loadgen)

    log("baseline: raw PostgreSQL COPY")
    copy_rate = measure_copy_baseline(rows=50_000, runs=args.runs)
    log("baseline: bare litestar endpoint")
    bare = measure_bare_endpoint(
        duration=args.duration, runs=args.runs, concurrency=args.concurrency, generator=generator
    )
    rows = [measure_store(store, args, generator) for store in args.stores.split(",")]
    for row in rows:
        row["batch_vs_copy"] = row["batch_events_per_s"] / copy_rate
        row["single_vs_bare"] = row["single_events_per_s"] / bare["median_requests_per_s"]
    print_report(
        "Ingest through billing serve (medians)",
        {
            "ingest": rows,
            "baselines": [
                {"baseline": "PostgreSQL binary COPY rows/s", "median": copy_rate},
                {"baseline": "bare endpoint requests/s", "median": bare["median_requests_per_s"]},
                {"baseline": "bare endpoint p99 ms", "median": bare["median_p99_ms"]},
            ],
        },
        {
            "runs": args.runs,
            "batch": f"{args.batch_clients} clients x {args.batches} x 1,000 events",
            "single": f"{args.concurrency} clients x {args.duration}s",
            "load_generator": generator,
        },
        as_json=args.json,
    )


if __name__ == "__main__":
    main()
