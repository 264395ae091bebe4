"""`billing serve` as a real process on a free port, driven over HTTP like a client would."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(
    base: str, server: subprocess.Popen[Any], output: Callable[[], str] | None = None
) -> None:
    """Wait until `billing serve` answers GET /health with 200. If it exits first, fail with
    what it printed (`output`, else its piped stdout); if it is not healthy within 60 s, say so."""
    deadline = time.monotonic() + 60
    while True:
        with suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        if server.poll() is not None:
            if output is not None:
                raise AssertionError(output())
            raise AssertionError(server.stdout.read() if server.stdout else "billing serve exited")
        assert time.monotonic() < deadline, "billing serve did not become healthy"
        time.sleep(0.2)


def stop_group(server: subprocess.Popen[Any]) -> None:
    """Stop a `billing serve` started in a session of its own: SIGTERM, then whatever of its
    process group is left (workers, the projection child) is killed, so nothing outlives it."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            server.wait(timeout=15)
    with suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def billing(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_a_new_user_serves_ingests_closes_and_reads_an_invoice(database_url):
    admin = secrets.token_urlsafe(24)
    env = {**os.environ, "BILLING_DATABASE_URL": database_url, "BILLING_ADMIN_KEY": admin}
    created = billing("keys", "create", "--role", "operator", "--name", "ops", env=env)
    operator = next(
        line.split()[-1] for line in created.stdout.splitlines() if line.startswith("key:")
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, server)
        with httpx.Client(
            base_url=base, timeout=30, headers={"Authorization": f"Bearer {admin}"}
        ) as client:
            assert (
                client.post(
                    "/v1/customers", json={"customer_id": "acme", "name": "Acme"}
                ).status_code
                == 201
            )
            assert (
                client.post(
                    "/v1/plans",
                    json={
                        "plan_id": "std",
                        "currency": "USD",
                        "charges": [
                            {"meter": "api_calls", "model": "per_unit", "unit_amount": "0.002"}
                        ],
                    },
                ).status_code
                == 201
            )
            this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            last_month = (this_month - timedelta(days=1)).replace(day=1)
            period = last_month.strftime("%Y-%m")
            assert (
                client.put(
                    "/v1/customers/acme/subscription",
                    json={"plan_id": "std", "effective_from": period},
                ).status_code
                == 200
            )
            events = [
                {
                    "event_id": f"e{i}",
                    "customer_id": "acme",
                    "meter": "api_calls",
                    "quantity": "250",
                    "occurred_at": (last_month + timedelta(hours=i)).isoformat(),
                }
                for i in range(8)
            ]
            batch = client.post("/v1/usage/batch", json={"events": events})
            assert [r["status"] for r in batch.json()["results"]] == ["accepted"] * 8
            assert client.post("/v1/usage", json=events[0]).json()["status"] == "duplicate"
            closed = client.post(
                f"/v1/customers/acme/periods/{period}/close",
                headers={"Authorization": f"Bearer {operator}"},
            )
            assert closed.status_code == 200 and closed.json()["total"] == "4.00"
            listed = client.get(
                "/v1/invoices", params={"customer_id": "acme", "period": period}
            ).json()["items"]
            assert [(i["status"], i["total"]) for i in listed] == [("issued", "4.00")]
            invoice = client.get(f"/v1/invoices/{listed[0]['invoice_id']}").json()
            assert invoice["lines"] == [
                {
                    "meter": "api_calls",
                    "quantity": "2000",
                    "amount": "4.00",
                    "kind": "usage",
                    "usage_period": period,
                }
            ]
            assert client.get("/schema/openapi.json").status_code == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        if server.stdout:
            output = server.stdout.read()
            assert admin not in output and operator not in output
