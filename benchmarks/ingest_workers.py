"""Ingest through `billing serve --workers N`, beside baselines on the same number of processes.

For each worker count (default 1 and 2) and store, a fresh store is served by
`billing serve --workers N`; 100 customers on one plan are created through the API, and an
emitter with a `*` grant gets a key (so every request authenticates a stored key, as
producers do; `--key admin` uses BILLING_ADMIN_KEY instead). Then, per run: batch ingest
(2 clients x 10 requests of 1,000 events, 10% re-sent) and single-event ingest (32
connections, every 10th request a retry). In the same run: raw PostgreSQL COPY
(`measure_copy_baseline`) and the bare litestar endpoint served by uvicorn with the same
number of worker processes sharing one socket (`benchmarks.bare_serve`). Figures are
medians of --runs runs.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.baseline_copy import measure_copy_baseline
from benchmarks.baseline_endpoint import check_endpoint
from benchmarks.common import (
    free_port,
    log,
    median_of,
    print_report,
    running_server,
)
from benchmarks.ingest_http import CUSTOMERS, _call, run_batches, setup_customers, store_url
from benchmarks.loadgen import LoadResult, choose_generator, run_load


def bare_command(port: int, workers: int) -> list[str]:
    """The bare endpoint on `workers` processes sharing one socket, as `billing serve` shares
    its own (benchmarks.bare_serve: TCP_NODELAY on every connection, like serve's)."""
    return [
        sys.executable,
        "-m",
        "benchmarks.bare_serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def measure_bare(workers: int, args: argparse.Namespace, generator: str) -> dict[str, Any]:
    port = free_port()
    results: list[LoadResult] = []
    with running_server(bare_command(port, workers), port):
        check_endpoint(port)
        run_load(port, duration=1, concurrency=args.concurrency, label="w", generator=generator)
        for run in range(1, args.runs + 1):
            log(f"bare endpoint, {workers} worker(s): run {run}/{args.runs}")
            results.append(
                run_load(
                    port,
                    duration=args.duration,
                    concurrency=args.concurrency,
                    label=f"bare{run}",
                    generator=generator,
                )
            )
    return {
        "requests_per_s": median_of([r.requests_per_s for r in results]),
        "p50_ms": median_of([r.p50_ms for r in results]),
        "p99_ms": median_of([r.p99_ms for r in results]),
        "errors": sum(r.errors for r in results),
    }


def emitter_key(port: int, admin: str) -> str:
    _call(port, "POST", "/v1/emitters", admin, {"emitter_id": "bench", "name": "bench"})
    _call(
        port,
        "POST",
        "/v1/emitters/bench/grants",
        admin,
        {"customer_id": "*", "meters": ["*"]},
    )
    created = _call(
        port, "POST", "/v1/keys", admin, {"role": "emitter", "name": "bench", "emitter_id": "bench"}
    )
    return str(created["key"])


def measure_serve(
    store: str, workers: int, args: argparse.Namespace, generator: str
) -> dict[str, Any]:
    occurred_at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = store_url(store, Path(tmp))
        admin = secrets.token_urlsafe(24)
        port = free_port()
        env = {"BILLING_DATABASE_URL": url, "BILLING_ADMIN_KEY": admin}
        command = ["billing", "serve", "--port", str(port), "--workers", str(workers)]
        try:
            with running_server(command, port, env=env, timeout=90):
                setup_customers(port, admin)
                key = admin if args.key == "admin" else emitter_key(port, admin)
                batch_runs, single_runs = [], []
                tag = uuid.uuid4().hex[:6]
                for run in range(1, args.runs + 1):
                    log(f"{store}, {workers} worker(s): batch run {run}/{args.runs}")
                    batch_runs.append(
                        run_batches(
                            port,
                            key,
                            f"b{tag}{run}",
                            args.batch_clients,
                            args.batches,
                            occurred_at,
                        )
                    )
                    log(f"{store}, {workers} worker(s): single-event run {run}/{args.runs}")
                    single_runs.append(
                        run_load(
                            port,
                            duration=args.duration,
                            concurrency=args.concurrency,
                            label=f"s{tag}{run}",
                            generator=generator,
                            headers={"Authorization": f"Bearer {key}"},
                            customers=CUSTOMERS,
                            occurred_at=occurred_at,
                            dup_every=10,
                        )
                    )
        finally:
            if drop:
                drop()
    return {
        "store": store,
        "workers": workers,
        "batch_events_per_s": median_of([r["events_per_s"] for r in batch_runs]),
        "batch_p50_ms": median_of([r["p50_ms"] for r in batch_runs]),
        "batch_p99_ms": median_of([r["p99_ms"] for r in batch_runs]),
        "batch_other": sum(r["other"] for r in batch_runs),
        "single_per_s": median_of([r.requests_per_s for r in single_runs]),
        "single_p50_ms": median_of([r.p50_ms for r in single_runs]),
        "single_p99_ms": median_of([r.p99_ms for r in single_runs]),
        "single_non_2xx": sum(r.errors for r in single_runs),
        "runs": {
            "batch_events_per_s": [round(r["events_per_s"]) for r in batch_runs],
            "single_per_s": [round(r.requests_per_s) for r in single_runs],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2")
    parser.add_argument("--batches", type=int, default=10, help="batch requests per client per run")
    parser.add_argument("--batch-clients", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10, help="seconds per single-event run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stores", default="postgres,sqlite")
    parser.add_argument("--key", default="emitter", choices=["emitter", "admin"])
    parser.add_argument("--loadgen", default="auto", choices=["auto", "wrk", "python"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    generator = choose_generator(args.loadgen)
    counts = [int(n) for n in args.workers.split(",")]

    log("baseline: raw PostgreSQL COPY")
    copy_rate = measure_copy_baseline(rows=50_000, runs=args.runs)
    bare = {n: measure_bare(n, args, generator) for n in counts}
    rows = []
    for store in args.stores.split(","):
        for n in counts:
            row = measure_serve(store, n, args, generator)
            row["batch_vs_copy"] = row["batch_events_per_s"] / copy_rate
            row["single_vs_bare"] = row["single_per_s"] / bare[n]["requests_per_s"]
            rows.append(row)
    runs = [{"store": r["store"], "workers": r["workers"], **r.pop("runs")} for r in rows]
    print_report(
        "Ingest through billing serve --workers N (medians)",
        {
            "ingest": rows,
            "runs": runs,
            "baselines": [
                {"baseline": "PostgreSQL binary COPY rows/s", "median": copy_rate},
                *(
                    {
                        "baseline": f"bare endpoint, {n} worker(s): req/s, p50/p99 ms, errors",
                        "median": (
                            f"{b['requests_per_s']:.0f}, {b['p50_ms']:.1f}/{b['p99_ms']:.1f}, "
                            f"{b['errors']}"
                        ),
                    }
                    for n, b in bare.items()
                ),
            ],
        },
        {
            "runs": args.runs,
            "batch": f"{args.batch_clients} clients x {args.batches} x 1,000 events",
            "single": f"{args.concurrency} connections x {args.duration}s",
            "key": args.key,
            "load_generator": generator,
        },
        as_json=args.json,
    )


if __name__ == "__main__":
    main()
