"""Webhooks on both stores: registration and its bounds, signatures a receiver verifies with the
`standardwebhooks` package, at-least-once delivery in order, retries, and rebuilds that send
nothing twice. The receiver is a real HTTP server on loopback."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from standardwebhooks import Webhook

from api.bootstrap import Services, build
from billing_domain.settings import SettingsError
from projections.webhook_delivery import DeliverySettings
from tests.api_support import ADMIN, event, http, setup_acme
from tests.defects import alter_usage_quantity
from tests.integration.test_console_roles import _token
from tests.webhook_receiver import Receiver, free_port

FAST = DeliverySettings(
    timeout=2.0, backoff_base=0.05, backoff_max=0.4, give_up_after=30, failing_after=3
)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def register(client: Any, url: str, events: list[str], **extra: Any) -> dict[str, Any]:
    answer = client.post(
        "/v1/webhooks", json={"url": url, "events": events, **extra}, headers=ADMIN
    )
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def deliver(services: Services, rounds: int = 1) -> None:
    """Bring the outbox up to the log, then send whatever is due, `rounds` times."""
    services.deliveries.settings = replace(services.deliveries.settings, **FAST.__dict__)
    for _ in range(rounds):
        services.read_models.catch_up()
        services.deliveries.run_until_idle()


def close_october(client: Any) -> dict[str, Any]:
    setup_acme(client)
    assert client.post("/v1/usage", json=event("e-1", "1200"), headers=ADMIN).status_code == 202
    closed = client.post("/v1/customers/acme/periods/2026-10/close", headers=ADMIN)
    assert closed.status_code == 200
    return closed.json()  # type: ignore[no-any-return]


def conflict(client: Any, event_id: str) -> None:
    assert client.post("/v1/usage", json=event(event_id, "1"), headers=ADMIN).status_code == 202
    again = client.post("/v1/usage", json=event(event_id, "2"), headers=ADMIN)
    assert again.status_code == 409


def verified(secret: str, received: dict[str, Any]) -> dict[str, Any]:
    headers = received["headers"]
    return Webhook(secret).verify(received["body"], headers)  # type: ignore[no-any-return]


def test_an_issued_invoice_arrives_once_signed_with_its_total(settings, clock, receiver):
    with http(settings, clock) as (client, services):
        created = register(client, receiver.url, ["invoice.issued"])
        secret = created["secret"]
        assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
        invoice = close_october(client)
        deliver(services, rounds=3)
        assert len(receiver.received) == 1
        payload = verified(secret, receiver.received[0])
        assert payload["type"] == "invoice.issued"
        assert payload["data"]["total"] == "13.00" == invoice["total"]
        assert payload["data"]["invoice_id"] == invoice["invoice_id"]
        assert payload["data"]["customer_id"] == "acme"
        assert payload["data"]["period"] == "2026-10"
        assert payload["data"]["revision"] == 1

        log = client.get(f"/v1/webhooks/{created['webhook_id']}/deliveries", headers=ADMIN).json()
        [row] = log["items"]
        assert row["status"] == "delivered" and row["attempts"] == 1
        assert row["last_status_code"] == 200 and row["delivered_at"] is not None
        assert row["delivery_id"] == receiver.received[0]["headers"]["webhook-id"]
        assert log["next_cursor"] is None

        # Rebuilding the outbox from the log sends nothing already delivered.
        models = services.read_models
        version = models.rebuilds.begin("webhooks")
        models.rebuilds.build(version)
        models.rebuilds.switch(version)
        deliver(services, rounds=2)
        assert len(receiver.received) == 1
        again = client.get(f"/v1/webhooks/{created['webhook_id']}", headers=ADMIN).json()
        assert again["delivered"] == 1 and again["pending"] == 0 and again["status"] == "active"
        assert "secret" not in again


def test_registration_bounds_and_unknown_ids(settings, clock, receiver):
    with http(settings, clock) as (client, _services):
        bad_type = client.post(
            "/v1/webhooks",
            json={"url": receiver.url, "events": ["invoice.issued", "invoice.paid"]},
            headers=ADMIN,
        )
        assert bad_type.status_code == 422
        assert bad_type.json()["errors"][0]["field"] == "events[1]"
        assert "invoice.paid" in bad_type.json()["detail"]
        for url in ("ftp://x.example/", "http://", "http://u:p@x.example/", "x" * 3000):
            answer = client.post(
                "/v1/webhooks", json={"url": url, "events": ["usage.late"]}, headers=ADMIN
            )
            assert answer.status_code == 422, url
            assert answer.json()["errors"][0]["field"] == "url"
        weak = client.post(
            "/v1/webhooks",
            json={"url": receiver.url, "events": ["usage.late"], "secret": "whsec_c2hvcnQ="},
            headers=ADMIN,
        )
        assert weak.status_code == 422 and weak.json()["errors"][0]["field"] == "secret"
        assert "c2hvcnQ" not in weak.text
        unknown = "wh_" + "0" * 24
        for answer in (
            client.get(f"/v1/webhooks/{unknown}", headers=ADMIN),
            client.get("/v1/webhooks/nope", headers=ADMIN),
            client.delete(f"/v1/webhooks/{unknown}", headers=ADMIN),
            client.get(f"/v1/webhooks/{unknown}/deliveries", headers=ADMIN),
            client.post(f"/v1/webhooks/{unknown}/deliveries/msg_x/retry", headers=ADMIN),
        ):
            assert answer.status_code == 404, answer.text
        created = register(client, receiver.url, ["usage.late"])
        missing = client.post(
            f"/v1/webhooks/{created['webhook_id']}/deliveries/msg_x/retry", headers=ADMIN
        )
        assert missing.status_code == 404
        listed = client.get("/v1/webhooks", headers=ADMIN).json()
        assert [w["webhook_id"] for w in listed["items"]] == [created["webhook_id"]]
        assert all("secret" not in w for w in listed["items"])
        disabled = client.delete(f"/v1/webhooks/{created['webhook_id']}", headers=ADMIN)
        assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"


def test_a_supplied_secret_signs_and_no_secret_is_in_the_log(settings, clock, receiver):
    supplied = "whsec_" + base64.b64encode(b"k" * 32).decode()
    with http(settings, clock) as (client, services):
        mine = register(client, receiver.url, ["usage.conflict"], secret=supplied)
        assert mine["secret"] == supplied
        derived = register(client, receiver.url, ["usage.conflict"])["secret"]
        setup_acme(client)
        conflict(client, "c-1")
        deliver(services, rounds=2)
        assert len(receiver.received) == 2
        by_secret = {}
        for received in receiver.received:
            for secret in (supplied, derived):
                try:
                    by_secret[secret] = verified(secret, received)
                except Exception:
                    continue
        assert set(by_secret) == {supplied, derived}
        assert by_secret[supplied]["data"]["event_id"] == "c-1"
        stored = services.app.recorder.select_notifications(start=1, limit=10_000)
        text = b"".join(n.state for n in stored)
        for secret in (supplied, derived):
            assert secret.encode() not in text
            assert secret[6:].encode() not in text


def test_a_receiver_down_then_up_gets_everything_in_order(settings, clock):
    port = free_port()
    with http(settings, clock) as (client, services):
        created = register(client, f"http://127.0.0.1:{port}/hooks", ["usage.conflict"])
        setup_acme(client)
        for n in range(4):
            conflict(client, f"c-{n}")
        deliver(services, rounds=2)  # connection refused
        log = client.get(f"/v1/webhooks/{created['webhook_id']}/deliveries", headers=ADMIN).json()
        head, *rest = log["items"]
        assert head["status"] == "pending" and head["attempts"] >= 1
        assert "ConnectionRefused" in (head["last_error"] or "")
        assert head["last_status_code"] is None and head["next_attempt_at"] is not None
        assert all(r["attempts"] == 0 for r in rest)  # the head blocks its own queue
        backlog = services.webhooks.backlog()
        assert (backlog["pending"], backlog["failed"]) == (4, 0)
        assert backlog["oldest_pending_at"] == head["created_at"]
        receiver = Receiver(port).start()
        try:
            deadline = time.monotonic() + 20
            while len(receiver.messages()) < 4 and time.monotonic() < deadline:
                deliver(services)
                time.sleep(0.05)
            ids = [m["data"]["event_id"] for m in receiver.messages()]
            assert ids == ["c-0", "c-1", "c-2", "c-3"]
        finally:
            receiver.stop()


def test_a_failing_receiver_is_retried_with_backoff_marked_failing_then_given_up(
    settings, clock, receiver
):
    receiver.status = 500
    with http(settings, clock) as (client, services):
        created = register(client, receiver.url, ["usage.conflict"])
        setup_acme(client)
        conflict(client, "c-0")
        conflict(client, "c-1")
        services.read_models.catch_up()
        worker = services.deliveries
        worker.settings = replace(FAST, give_up_after=1)
        deadline = time.monotonic() + 10
        while not any(r["status"] == 200 for r in receiver.received[-1:]):
            worker.run_until_idle()
            answer = client.get(f"/v1/webhooks/{created['webhook_id']}/deliveries", headers=ADMIN)
            if answer.json()["items"][0]["status"] == "failed":
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first = [r for r in receiver.received if json.loads(r["body"])["data"]["event_id"] == "c-0"]
        gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(first)]
        assert len(first) >= 4
        assert min(gaps) >= FAST.backoff_base * 0.9  # never at full speed
        assert len(first) < 1 / FAST.backoff_base  # far fewer than a tight loop would send
        endpoint = client.get(f"/v1/webhooks/{created['webhook_id']}", headers=ADMIN).json()
        assert endpoint["status"] == "failing" and endpoint["consecutive_failures"] >= 3
        log = client.get(f"/v1/webhooks/{created['webhook_id']}/deliveries", headers=ADMIN).json()
        head = log["items"][0]
        assert head["status"] == "failed" and head["last_status_code"] == 500
        assert head["last_error"] == "HTTP 500" and head["attempts"] == len(first)
        backlog = services.webhooks.backlog()
        assert (backlog["failed"], backlog["failing_endpoints"]) == (1, 1)
        # The queue moves on; the receiver recovers; a replay sends the failed one again.
        receiver.status = 200
        deadline = time.monotonic() + 10
        while not receiver.messages():
            worker.run_until_idle()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert [m["data"]["event_id"] for m in receiver.messages()] == ["c-1"]
        healthy = client.get(f"/v1/webhooks/{created['webhook_id']}", headers=ADMIN).json()
        assert healthy["status"] == "active"
        assert services.webhooks.backlog()["failing_endpoints"] == 0
        retried = client.post(
            f"/v1/webhooks/{created['webhook_id']}/deliveries/{head['delivery_id']}/retry",
            headers=ADMIN,
        )
        assert retried.status_code == 202 and retried.json()["status"] == "pending"
        worker.run_until_idle()
        assert [m["data"]["event_id"] for m in receiver.messages()] == ["c-1", "c-0"]
        assert receiver.messages()[-1]["webhook-id"] == head["delivery_id"]
        audit = client.get("/v1/audit", headers=ADMIN).json()["items"]
        assert any(e["action"] == "webhook.delivery_retried" for e in audit)


def test_late_usage_restatement_reconciliation_and_rebuild_are_told(settings, clock, receiver):
    every = [
        "invoice.issued",
        "invoice.restated",
        "usage.late",
        "reconciliation.finding",
        "projection.rebuilt",
    ]
    with http(settings, clock) as (client, services):
        register(client, receiver.url, every)
        close_october(client)
        client.patch("/v1/customers/acme", json={"late_usage_policy": "restate"}, headers=ADMIN)
        late = client.post("/v1/usage", json=event("late-1", "100"), headers=ADMIN)
        assert late.json()["treatment"] == "restated"
        models = services.read_models
        version = models.rebuilds.begin("audit")
        models.rebuilds.build(version)
        models.rebuilds.switch(version)
        report = {
            "findings": [{"check": "index", "cause": "tampering"}],
            "summary": {"tampering": 1},
        }
        assert services.app.note_reconciliation(report, "2026-10", None)
        assert not services.app.note_reconciliation(report, "2026-10", None)  # told once a day
        deliver(services, rounds=2)
        types = [m["type"] for m in receiver.messages()]
        assert types[:2] == ["invoice.issued", "usage.late"]
        assert set(types) == set(every) and len(types) == len(every)
        by_type = {m["type"]: m["data"] for m in receiver.messages()}
        assert by_type["usage.late"]["records"][0]["event_id"] == "late-1"
        assert by_type["usage.late"]["customer_id"] == "acme"
        assert by_type["invoice.restated"]["revision"] == 2
        assert by_type["invoice.restated"]["total"] == "13.50"  # 1,300 calls
        assert by_type["projection.rebuilt"]["name"] == "audit"
        assert by_type["reconciliation.finding"]["summary"] == {"tampering": 1}
        assert by_type["reconciliation.finding"]["count"] == 1


def test_the_master_key_outlives_a_restart_and_a_changed_one_is_named(
    settings, clock, receiver, monkeypatch, tmp_path
):
    with http(settings, clock) as (client, services):
        created = register(client, receiver.url, ["usage.conflict"])
        secret = services.app.webhook_secret(created["webhook_id"])
    assert secret == created["secret"]
    if not settings.is_postgres:
        key_file = tmp_path / "billing.secret"
        assert key_file.stat().st_mode & 0o777 == 0o600
    with http(settings, clock) as (client, services):  # a restart: the same derived secret
        assert services.app.webhook_secret(created["webhook_id"]) == secret
    monkeypatch.setenv("BILLING_SECRET_KEY", "k" * 31)
    with pytest.raises(SettingsError, match="BILLING_SECRET_KEY"):
        build(settings, clock=clock)
    monkeypatch.setenv("BILLING_SECRET_KEY", "another master key, long enough: " + "k" * 8)
    with http(settings, clock) as (client, services):
        setup_acme(client)
        conflict(client, "c-0")
        deliver(services)
        assert receiver.received == []
        log = client.get(f"/v1/webhooks/{created['webhook_id']}/deliveries", headers=ADMIN)
        assert "BILLING_SECRET_KEY changed" in log.json()["items"][0]["last_error"]
        fresh = register(client, receiver.url, ["usage.conflict"])
        conflict(client, "c-1")
        deliver(services)
        [received] = receiver.received
        assert verified(fresh["secret"], received)["data"]["event_id"] == "c-1"


def test_a_tampered_record_found_by_reconciliation_is_told_once_from_the_api_or_console(
    settings, clock, receiver
):
    with http(settings, clock) as (client, services):
        created = register(client, receiver.url, ["reconciliation.finding"])
        close_october(client)
        clean = client.get("/v1/reconciliation?period=2026-10", headers=ADMIN).json()
        assert clean["ok"] is True
        alter_usage_quantity(settings, "e-1", "1250")
        for _ in range(2):
            report = client.get("/v1/reconciliation?period=2026-10", headers=ADMIN).json()
            assert report["ok"] is False
        deliver(services)
        [message] = receiver.messages()
        assert message["type"] == "reconciliation.finding"
        assert message["data"]["period"] == "2026-10" and message["data"]["count"] >= 1
        assert message["data"]["summary"]["tampering"] >= 1
        assert message["data"]["actor"] == "bootstrap-admin/bootstrap"
        # The console's run of another scope (the customer) is told as well.
        operator = client.post(
            "/v1/keys", json={"role": "operator", "name": "ops"}, headers=ADMIN
        ).json()["key"]
        client.cookies.clear()
        form = client.get("/login")
        signed = client.post("/login", data={"key": operator, "csrf_token": _token(form.text)})
        csrf = _token(signed.text)
        ran = client.post(
            "/reconciliation",
            data={"period": "2026-10", "customer_id": "acme", "csrf_token": csrf},
            follow_redirects=False,
        )
        assert ran.status_code == 303
        deliver(services)
        told = receiver.messages()
        assert len(told) == 2 and told[1]["data"]["customer_id"] == "acme"
        assert client.get(f"/v1/webhooks/{created['webhook_id']}", headers=ADMIN).status_code == 200
