"""Bare-endpoint baseline: requests/s and latency of a validate-and-answer-202 litestar app.

Starts benchmarks.bare_app under uvicorn (1 worker) on 127.0.0.1 and loads POST /v1/usage
with `concurrency` keep-alive clients (wrk if installed, else a pure-Python generator).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from benchmarks.common import (
    free_port,
    http_request,
    log,
    median_of,
    peak_rss_pid_kib,
    print_report,
    running_server,
)
from benchmarks.loadgen import LoadResult, choose_generator, run_load, usage_body


def bare_app_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.bare_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--workers",
        "1",
    ]


def check_endpoint(port: int) -> None:
    """Fail fast if the app does not answer as specified (202 for a good body, 400 for a bad
    one)."""
    headers = {"Content-Type": "application/json"}
    status, body = http_request(port, "POST", "/v1/usage", usage_body("check", 0, 1), headers)
    if status != 202 or json.loads(body) != {"event_id": "check-0-1", "status": "accepted"}:
        raise RuntimeError(f"unexpected answer to a valid body: {status} {body!r}")
    bad = json.loads(usage_body("check", 0, 2))
    bad["quantity"] = 1.5  # a JSON number, not a decimal string
    status, body = http_request(port, "POST", "/v1/usage", json.dumps(bad).encode(), headers)
    if status != 400:
        raise RuntimeError(f"a numeric quantity should be rejected with 400, got {status} {body!r}")


def measure_bare_endpoint(
    duration: int = 10,
    runs: int = 3,
    concurrency: int = 32,
    *,
    generator: str = "auto",
    wrk_threads: int = 1,
    warmup: int = 1,
) -> dict[str, Any]:
    """Serve the bare app, load it `runs` times; per-run figures, medians and the server's peak
    RSS."""
    chosen = choose_generator(generator)
    port = free_port()
    results: list[LoadResult] = []
    with running_server(bare_app_command(port), port) as server:
        check_endpoint(port)
        if warmup > 0:
            run_load(
                port,
                duration=warmup,
                concurrency=concurrency,
                label="warmup",
                generator=chosen,
                wrk_threads=wrk_threads,
            )
        for run in range(1, runs + 1):
            log(f"run {run}/{runs}: {duration}s, {concurrency} clients, {chosen}")
            results.append(
                run_load(
                    port,
                    duration=duration,
                    concurrency=concurrency,
                    label=f"run{run}",
                    generator=chosen,
                    wrk_threads=wrk_threads,
                )
            )
        server_rss = peak_rss_pid_kib(server.pid)
    return {
        "load_generator": results[0].generator,
        "concurrency": concurrency,
        "duration_s": duration,
        "server_peak_rss_kib": server_rss,
        "runs": [
            {
                "run": i,
                "requests": r.requests,
                "errors": r.errors,
                "requests_per_s": r.requests_per_s,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "capped": r.capped,
            }
            for i, r in enumerate(results, start=1)
        ],
        "median_requests_per_s": median_of([r.requests_per_s for r in results]),
        "median_p50_ms": median_of([r.p50_ms for r in results]),
        "median_p99_ms": median_of([r.p99_ms for r in results]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="auto = wrk if installed, else the pure-Python generator",
    )
    parser.add_argument(
        "--wrk-threads", type=int, default=1, help="wrk threads (leave a core to the server)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )
    args = parser.parse_args()

    result = measure_bare_endpoint(
        args.duration,
        args.runs,
        args.concurrency,
        generator=args.loadgen,
        wrk_threads=args.wrk_threads,
    )
    meta = {k: v for k, v in result.items() if k != "runs"}
    meta["cpu_count"] = os.cpu_count()
    if result["load_generator"].startswith("python"):
        meta["note"] = (
            "the Python client shares the CPUs with the server: figures may be a lower bound"
        )
    print_report(
        "baseline_endpoint: bare litestar POST /v1/usage (validate, 202)",
        {"runs": result["runs"]},
        meta,
        as_json=args.json,
        formats={"requests_per_s": ",.0f", "p50_ms": ".2f", "p99_ms": ".2f"},
    )


if __name__ == "__main__":
    main()
