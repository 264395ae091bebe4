"""`/metrics` of a real `billing serve --workers 2`: whichever worker answers the scrape, the
counts are the service's (every worker's summed), and the log lines are JSON without a key."""

from __future__ import annotations

import glob
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_e2e_serve import ROOT, free_port, stop_group, wait_healthy

ADMIN = secrets.token_urlsafe(24)
NOW = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0)
METRICS_DIRS = os.path.join(tempfile.gettempdir(), "billing-metrics-*")


def ingest_counts(base: str) -> dict[tuple[str, str], float]:
    # A new connection each time, so the two workers take turns answering.
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    counts = {}
    for family in text_string_to_metric_families(text):
        if family.name == "billing_ingest_events":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[(sample.labels["dialect"], sample.labels["status"])] = sample.value
    return counts


def send(base: str, event_id: str, quantity: str = "1") -> int:
    body = {
        "event_id": event_id,
        "customer_id": "acme",
        "meter": "api_calls",
        "quantity": quantity,
        "occurred_at": NOW.isoformat(),
    }
    headers = {"Authorization": f"Bearer {ADMIN}", "Connection": "close"}
    return httpx.post(f"{base}/v1/usage", json=body, headers=headers, timeout=30).status_code


def start(database_url: str, log: Path, workers: int = 2) -> tuple[subprocess.Popen[Any], str]:
    port = free_port()
    env = {
        **os.environ,
        "BILLING_DATABASE_URL": database_url,
        "BILLING_ADMIN_KEY": ADMIN,
        "BILLING_LOG_FORMAT": "json",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, server, log.read_text)
    return server, base


def metrics_dirs_of(server: subprocess.Popen[Any]) -> set[str]:
    """The PROMETHEUS_MULTIPROC_DIR the supervisor gave its worker processes."""
    found = set()
    for task in glob.glob(f"/proc/{server.pid}/task/*/children"):
        for child in Path(task).read_text().split():
            with suppress(OSError):
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                found |= {
                    v.split(b"=", 1)[1].decode()
                    for v in environ
                    if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")
                }
    return found


def test_two_workers_count_as_one_service(database_url, tmp_path):
    log = tmp_path / "serve.log"
    server, base = start(database_url, log)
    try:
        ours = metrics_dirs_of(server)
        assert len(ours) == 1  # the supervisor's directory for the workers' counts
        assert glob.glob(METRICS_DIRS) and ours <= set(glob.glob(METRICS_DIRS))
        admin = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=base, headers=admin, timeout=30) as client:
            assert client.post("/v1/customers", json={"customer_id": "acme", "name": "A"})
            meter = {"meter": "api_calls", "name": "calls", "aggregation": "sum"}
            assert client.post("/v1/meters", json=meter).status_code == 201
        with ThreadPoolExecutor(8) as pool:
            accepted = list(pool.map(lambda i: send(base, f"e-{i}"), range(40)))
            duplicates = list(pool.map(lambda i: send(base, f"e-{i}"), range(10)))
        assert set(accepted) == {202} and set(duplicates) == {202}
        assert send(base, "e-0", "7") == 409
        assert send(base, "e-x", "-1") == 422

        expected = {
            ("v1", "accepted"): 40,
            ("v1", "duplicate"): 10,
            ("v1", "conflict"): 1,
            ("v1", "rejected"): 1,
        }
        for _ in range(6):  # every scrape, whichever worker answers it
            counts = ingest_counts(base)
            assert {k: v for k, v in counts.items() if v} == expected
    finally:
        stop_group(server)
    assert not [d for d in ours if os.path.exists(d)]  # removed at stop

    output = log.read_text()
    assert ADMIN not in output
    logged = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    ingests = [
        line for line in logged if line.get("event") == "request" and line["route"] == "/v1/usage"
    ]
    assert len(ingests) == 52
    assert all(line["key_id"] == "bootstrap" and line["request_id"] for line in ingests)
    by_worker = Counter(line["pid"] for line in ingests)
    assert len(by_worker) == 2, by_worker  # both workers answered, and /metrics summed them


def test_a_log_nobody_reads_never_stalls_the_service(database_url, tmp_path):
    """stderr is a pipe that is never read: once it is full, log lines are dropped, requests
    are still answered at once, and SIGTERM still stops the service cleanly."""
    port = free_port()
    env = {**os.environ, "BILLING_DATABASE_URL": database_url, "BILLING_ADMIN_KEY": ADMIN}
    env["BILLING_LOG_FORMAT"] = "json"
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # never read until the end
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, server)
        started = time.monotonic()
        long_path = "/nowhere/" + "x" * 2000  # logged: about 2.3 kB a line

        def forty(_: int) -> list[int]:
            with httpx.Client(base_url=base, timeout=10) as client:
                return [client.get(long_path).status_code for _ in range(40)]

        with ThreadPoolExecutor(8) as pool:
            statuses = Counter(s for some in pool.map(forty, range(8)) for s in some)
        # 320 lines of 2.3 kB: several times what a pipe holds, all answered.
        assert statuses == {404: 320}
        assert time.monotonic() - started < 30
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)  # stops as it would with its log read
    finally:
        stop_group(server)
        assert server.stderr is not None
        server.stderr.close()
