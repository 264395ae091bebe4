"""What an operator watches: `/metrics` counts every ingest outcome exactly, by dialect, and
every request by route template; a request log line is JSON and never carries a key."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.console import runs
from api.logs import LOGGERS, configure
from projections.reconciliation import reconcile
from tests.api_support import ADMIN, bearer, event, http, setup_acme
from tests.defects import alter_usage_quantity


@pytest.fixture
def api(settings, clock):
    with http(settings, clock) as pair:
        yield pair


def scrape(client: Any, headers: dict[str, str] = ADMIN) -> dict[str, dict[tuple, float]]:
    """Every sample of /metrics by name, keyed by its sorted labels."""
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def ingested(samples: dict[str, dict[tuple, float]]) -> dict[tuple[str, str], float]:
    return {
        (dict(k)["dialect"], dict(k)["status"]): v
        for k, v in samples["billing_ingest_events_total"].items()
    }


def stripe_form(identifier: str, value: str) -> dict[str, str]:
    moment = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
    return {
        "event_name": "api_calls",
        "identifier": identifier,
        "timestamp": str(int(moment.timestamp())),
        "payload[stripe_customer_id]": "acme",
        "payload[value]": value,
    }


def test_every_ingest_outcome_is_counted_once_by_dialect(api):
    client, _ = api
    setup_acme(client)
    sent = [
        ("req-1", "990", 202),  # accepted
        ("req-1", "990", 202),  # duplicate
        ("req-1", "5", 409),  # conflict
        ("req-2", "-1", 422),  # rejected by the domain
    ]
    for event_id, quantity, status in sent:
        answer = client.post("/v1/usage", json=event(event_id, quantity), headers=ADMIN)
        assert answer.status_code == status, answer.text
    batch = client.post(
        "/v1/usage/batch",
        headers=ADMIN,
        json={"events": [event("req-3", 5), event("req-1", 990), event("req-4", "x"), {}]},
    )
    assert [r["status"] for r in batch.json()["results"]] == [
        "accepted",
        "duplicate",
        "rejected",
        "rejected",
    ]
    stripe = "/compat/stripe/v1/billing/meter_events"
    assert client.post(stripe, data=stripe_form("s-1", "4"), headers=ADMIN).status_code == 200
    assert client.post(stripe, data=stripe_form("s-1", "4"), headers=ADMIN).status_code == 200

    samples = scrape(client)
    counts = ingested(samples)
    assert {k: v for k, v in counts.items() if v} == {
        ("v1", "accepted"): 2,
        ("v1", "duplicate"): 2,
        ("v1", "conflict"): 1,
        ("v1", "rejected"): 3,
        ("stripe", "accepted"): 1,
        ("stripe", "duplicate"): 1,
    }
    assert len(counts) == 16  # every status and dialect is listed, at zero until it happens
    # Single events go through the group commit: 3 from /v1/usage (the fourth was refused
    # by its schema before ingest) and 2 from Stripe.
    assert samples["billing_group_commit_batch_size_sum"][()] == 5
    # A usage read of one customer: counted under its route template, not its path.
    assert client.get("/v1/customers/acme/usage?period=2026-10", headers=ADMIN).status_code == 200
    latency = scrape(client)["billing_http_request_duration_seconds_count"]
    by_route = {
        tuple(dict(k)[n] for n in ("route", "method", "status")): v for k, v in latency.items()
    }
    assert by_route[("/v1/usage", "POST", "202")] == 2
    assert by_route[("/v1/usage", "POST", "409")] == 1
    assert by_route[("/v1/usage", "POST", "422")] == 1
    assert by_route[("/v1/customers/{customer_id}/usage", "GET", "200")] == 1
    assert not [k for k in latency if "acme" in json.dumps(k)]


def test_projection_lag_and_reconciliation_findings_are_read_from_the_stores(api, settings):
    client, services = api
    setup_acme(client)
    for event_id in ("a", "b"):
        client.post("/v1/usage", json=event(event_id, 10), headers=ADMIN)
    behind = scrape(client)
    head = behind["billing_event_log_position"][()]
    assert head == services.read_models.max_position()
    invoices = {
        k: v for k, v in behind["billing_projection_lag"].items() if ("projection", "invoices") in k
    }
    assert list(invoices.values()) == [head - services.read_models.runner.live("invoices").position]
    services.read_models.catch_up()
    current = scrape(client)
    lags = current["billing_projection_lag"]
    assert lags and set(lags.values()) == {0}
    assert {dict(k)["projection"] for k in lags} >= {"invoices", "audit", "activity"}
    assert set(current["billing_projection_quarantined"].values()) == {0}
    assert "billing_reconciliation_findings" not in current  # no run kept yet

    alter_usage_quantity(settings, "a", "250")
    report = reconcile(services, period="2026-10")
    assert report["ok"] is False and report["summary"]
    runs.keep(services, "operator-key", report)
    after = scrape(client)
    findings = {dict(k)["cause"]: v for k, v in after["billing_reconciliation_findings"].items()}
    assert findings == {cause: float(n) for cause, n in report["summary"].items()}
    assert findings.get("tampering", 0) >= 1
    assert after["billing_reconciliation_last_run_ok"][()] == 0


def test_metrics_need_an_admin_or_operator_key(api):
    client, _ = api
    keys = {
        role: client.post("/v1/keys", json={"role": role, "name": role}, headers=ADMIN).json()
        for role in ("operator", "finance")
    }
    client.post("/v1/emitters", json={"emitter_id": "svc", "name": "svc"}, headers=ADMIN)
    keys["emitter"] = client.post(
        "/v1/keys", json={"role": "emitter", "name": "e", "emitter_id": "svc"}, headers=ADMIN
    ).json()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("bk_0123456789abcdef_nope")).status_code == 401
    assert client.get("/metrics", headers=bearer(keys["finance"]["key"])).status_code == 403
    assert client.get("/metrics", headers=bearer(keys["emitter"]["key"])).status_code == 403
    assert scrape(client, bearer(keys["operator"]["key"]))
    assert scrape(client, ADMIN)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure("json", stream)
    try:
        yield stream
    finally:
        handler.drain()
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).propagate = True


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.flush()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_request_is_one_json_line_that_never_carries_the_key(api, captured):
    client, _ = api
    created = client.post("/v1/keys", json={"role": "operator", "name": "ops"}, headers=ADMIN)
    key, key_id = created.json()["key"], created.json()["key_id"]
    wrong = f"bk_{key_id}_{'x' * 43}"
    assert client.get("/v1/projections", headers=bearer(key)).status_code == 200
    assert (
        client.get("/v1/projections", headers={**bearer(wrong), "X-Request-ID": "trace-7"})
    ).status_code == 401
    assert client.get("/v1/projections", headers=bearer("not-a-key-at-all")).status_code == 401
    assert client.get("/nowhere/acme").status_code == 404

    logged = lines(captured)
    requests = [line for line in logged if line.get("event") == "request"]
    ok, refused, garbled, missing = requests[-4:]
    for line in (ok, refused, garbled, missing):
        assert {"time", "level", "method", "route", "status", "latency_ms", "request_id"} <= set(
            line
        )
        assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
        datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
    assert (ok["route"], ok["method"], ok["status"]) == ("/v1/projections", "GET", 200)
    assert (ok["key_id"], ok["role"]) == (key_id, "operator")
    assert (refused["status"], refused["request_id"]) == (401, "trace-7")
    assert "key_id" not in refused and "key_id" not in garbled
    assert (missing["route"], missing["status"]) == ("unmatched", 404)
    output = captured.getvalue()
    for secret in (key, wrong, "not-a-key-at-all", "test-admin-key", key.split("_")[2]):
        assert secret not in output
    assert "authorization" not in output.lower()


def test_text_format_for_a_terminal(api):
    client, _ = api
    stream = io.StringIO()
    handler = configure("text", stream)
    try:
        assert client.get("/health").status_code == 200
        handler.drain()
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).propagate = True
    line = stream.getvalue().splitlines()[-1]
    assert "billing.request: GET /health 200" in line and "latency_ms=" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_the_webhook_outbox_is_counted(api):
    client, services = api
    if getattr(services, "webhooks", None) is None:
        pytest.skip("this build has no webhook outbox")
    setup_acme(client)
    hook = {"url": "http://127.0.0.1:9/hooks", "events": ["invoice.issued"]}
    assert client.post("/v1/webhooks", json=hook, headers=ADMIN).status_code == 201
    assert client.post("/v1/usage", json=event("req-1", 10), headers=ADMIN).status_code == 202
    closed = client.post("/v1/customers/acme/periods/2026-10/close", headers=ADMIN)
    assert closed.status_code == 200
    services.read_models.catch_up()
    backlog = services.webhooks.backlog()
    assert backlog["pending"] == 1  # nobody delivers in this test: the receiver is not there
    samples = scrape(client)
    deliveries = {dict(k)["status"]: v for k, v in samples["billing_webhook_deliveries"].items()}
    assert deliveries == {"pending": 1, "failed": 0}
    assert samples["billing_webhook_failing_endpoints"][()] == 0
    assert samples["billing_webhook_oldest_pending_age_seconds"][()] >= 0
