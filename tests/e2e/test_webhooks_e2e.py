"""Webhooks from a real `billing serve` process to a real receiver on loopback: killed mid-delivery
and restarted nothing is skipped, a failing receiver is retried ever more slowly and marked
failing, and a slow receiver does not slow ingest."""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.e2e.test_e2e_serve import ROOT, stop_group, wait_healthy
from tests.webhook_receiver import Receiver, free_port

FAST = {
    "BILLING_WEBHOOK_TIMEOUT": "1s",
    "BILLING_WEBHOOK_BACKOFF_BASE": "100ms",
    "BILLING_WEBHOOK_BACKOFF_MAX": "2s",
    "BILLING_WEBHOOK_FAILING_AFTER": "3",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


@pytest.fixture
def env(database_url: str, tmp_path: Any) -> dict[str, str]:
    return {
        **os.environ,
        **FAST,
        "BILLING_DATABASE_URL": database_url,
        "BILLING_ADMIN_KEY": secrets.token_urlsafe(24),
    }


@contextmanager
def serving(env: dict[str, str], port: int, workers: int = 1) -> Iterator[subprocess.Popen[str]]:
    """`billing serve` in a session of its own, so its whole process group can be killed (with
    two workers the webhooks are sent by its projection worker child)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server)
        yield server
    finally:
        stop_group(server)


def client_for(env: dict[str, str], port: int) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        timeout=30,
        headers={"Authorization": f"Bearer {env['BILLING_ADMIN_KEY']}"},
    )


def usage(event_id: str, quantity: str) -> dict[str, Any]:
    moment = datetime.now(UTC) - timedelta(minutes=1)
    return {
        "event_id": event_id,
        "customer_id": "acme",
        "meter": "api_calls",
        "quantity": quantity,
        "occurred_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def set_up(client: httpx.Client, url: str, events: list[str]) -> dict[str, Any]:
    assert (
        client.post("/v1/customers", json={"customer_id": "acme", "name": "A"}).status_code == 201
    )
    plan = {
        "plan_id": "std",
        "currency": "USD",
        "charges": [{"meter": "api_calls", "model": "per_unit", "unit_amount": "0.01"}],
    }
    assert client.post("/v1/plans", json=plan).status_code == 201
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = (this_month - timedelta(days=1)).strftime("%Y-%m")
    subscribed = client.put(
        "/v1/customers/acme/subscription", json={"plan_id": "std", "effective_from": last_month}
    )
    assert subscribed.status_code == 200
    created = client.post("/v1/webhooks", json={"url": url, "events": events})
    assert created.status_code == 201, created.text
    return created.json()  # type: ignore[no-any-return]


def conflict(client: httpx.Client, event_id: str) -> None:
    assert client.post("/v1/usage", json=usage(event_id, "1")).status_code == 202
    assert client.post("/v1/usage", json=usage(event_id, "2")).status_code == 409


def first_seen(receiver: Receiver) -> list[str]:
    seen: dict[str, str] = {}
    for message in receiver.messages(None):
        seen.setdefault(message["webhook-id"], message["data"].get("event_id", message["type"]))
    return list(seen.values())


def test_killed_mid_delivery_and_restarted_nothing_is_skipped(env, receiver):
    port = free_port()
    receiver.release.clear()  # the first request is held until the service is killed
    with serving(env, port, workers=2) as server, client_for(env, port) as client:
        created = set_up(client, receiver.url, ["usage.conflict"])
        for n in range(5):
            conflict(client, f"c-{n}")
        receiver.wait_for(1, timeout=30, status=None)
        os.killpg(server.pid, signal.SIGKILL)  # the server, its workers and its sender
        server.wait(10)
    receiver.release.set()
    with serving(env, port, workers=2), client_for(env, port) as client:
        receiver.wait_for(5, timeout=60, status=None)
        deadline = time.monotonic() + 30
        while first_seen(receiver) != [f"c-{n}" for n in range(5)]:
            assert time.monotonic() < deadline, first_seen(receiver)
            time.sleep(0.1)
        # A repeat (the send whose outcome the kill lost) carries the same webhook-id.
        ids = [m["webhook-id"] for m in receiver.messages(None)]
        assert len(set(ids)) == 5 and len(ids) - len(set(ids)) <= 1
        for received in receiver.received:
            Webhook(created["secret"]).verify(received["body"], received["headers"])
        log = client.get(f"/v1/webhooks/{created['webhook_id']}/deliveries").json()["items"]
        assert [r["status"] for r in log] == ["delivered"] * 5
        assert log[0]["attempts"] >= 2


def test_an_issued_invoice_arrives_once_and_a_failing_receiver_is_retried_slower(env, receiver):
    port = free_port()
    receiver.status = 500
    with serving(env, port), client_for(env, port) as client:
        created = set_up(client, receiver.url, ["invoice.issued"])
        this_month = datetime.now(UTC).replace(day=1)
        moment = (this_month - timedelta(days=3)).strftime("%Y-%m-%dT10:00:00Z")
        period = (this_month - timedelta(days=3)).strftime("%Y-%m")
        body = {**usage("u-1", "1200"), "occurred_at": moment}
        assert client.post("/v1/usage", json=body).status_code == 202
        closed = client.post(f"/v1/customers/acme/periods/{period}/close")
        assert closed.status_code == 200 and closed.json()["total"] == "12.00"
        deadline = time.monotonic() + 30
        while True:
            endpoint = client.get(f"/v1/webhooks/{created['webhook_id']}").json()
            if endpoint["status"] == "failing" and len(receiver.received) >= 7:
                break
            assert time.monotonic() < deadline, endpoint
            time.sleep(0.1)
        times = [r["at"] for r in receiver.received]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.09  # the 100 ms floor: never at full speed
        assert max(gaps[2:]) > 0.3  # windows of 0.4, 0.8, 1.6, 2 s: later waits grow
        assert len(times) < (times[-1] - times[0]) / 0.1  # far fewer than a tight loop sends
        assert endpoint["consecutive_failures"] >= 3 and endpoint["pending"] == 1
        [row] = client.get(f"/v1/webhooks/{created['webhook_id']}/deliveries").json()["items"]
        assert row["last_status_code"] == 500
        assert row["attempts"] - len(receiver.received) in (0, 1)  # one may be in flight
        receiver.status = 200
        receiver.wait_for(1, timeout=30)
        [message] = receiver.messages()
        assert message["type"] == "invoice.issued" and message["data"]["total"] == "12.00"
        time.sleep(1.0)
        assert len(receiver.messages()) == 1
        healthy = client.get(f"/v1/webhooks/{created['webhook_id']}").json()
        assert healthy["status"] == "active" and healthy["delivered"] == 1


def test_a_slow_receiver_does_not_slow_ingest(env, receiver):
    port = free_port()
    receiver.delay = 5.0
    env = {**env, "BILLING_WEBHOOK_TIMEOUT": "10s"}  # the worker waits on the receiver
    with serving(env, port), client_for(env, port) as client:
        set_up(client, receiver.url, ["usage.conflict"])
        conflict(client, "slow-0")
        receiver.wait_for(1, timeout=30, status=None)  # the receiver is now sleeping
        started = time.monotonic()
        answers = [client.post("/v1/usage", json=usage(f"fast-{n}", "1")) for n in range(20)]
        elapsed = time.monotonic() - started
        assert [a.status_code for a in answers] == [202] * 20
        assert elapsed < 2.5, f"20 ingests took {elapsed:.2f} s while the receiver slept 5 s"
        assert len(receiver.received) == 1  # still sleeping on the first delivery
