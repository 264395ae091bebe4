"""One bad request must never hurt anyone else: floods of refused requests are throttled and
counted, not kept one event each, and a caller without a grant learns nothing of customers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent

from billing_domain.identity import AuditFact, Principal
from billing_domain.refusals import RefusalLog
from billing_domain.throttle import FailureThrottle, RateLimited
from tests.api_support import ADMIN, bearer, event, http, setup_acme

BAD_KEY = "bk_0123456789abcdef_not-a-real-secret"


@pytest.fixture
def world(settings, clock):
    with http(settings, clock) as (client, services):
        setup_acme(client)
        client.post("/v1/customers", json={"customer_id": "other", "name": "Other"}, headers=ADMIN)
        client.post("/v1/emitters", json={"emitter_id": "svc", "name": "Service"}, headers=ADMIN)
        client.post(
            "/v1/emitters/svc/grants",
            json={"customer_id": "acme", "meters": ["api_calls"]},
            headers=ADMIN,
        )
        created = client.post(
            "/v1/keys",
            json={"role": "emitter", "name": "svc key", "emitter_id": "svc"},
            headers=ADMIN,
        ).json()
        finance = client.post(
            "/v1/keys", json={"role": "finance", "name": "finance key"}, headers=ADMIN
        ).json()
        assert client.post("/v1/usage", json=event("seed", 5), headers=ADMIN).status_code == 202
        services.app.refusals.flush()
        yield client, services, {"emitter": created["key"], "finance": finance["key"]}


def audit_of(services: Any, action: str) -> list[dict[str, Any]]:
    """The audit as finance reads it, once counted refusals are written."""
    services.app.refusals.flush()
    services.read_models.catch_up()
    items = services.read_models.audit(limit=1000)["items"]
    return [a for a in items if a["action"] == action]


def position(services: Any) -> int:
    return services.app.recorder.max_notification_id() or 0


def counted(entries: list[dict[str, Any]]) -> int:
    return sum(e["detail"].get("count", 1) for e in entries)


# Throttling failed authentication ------------------------------------------------------------


def test_after_twenty_failed_keys_a_client_must_wait_and_its_keys_are_not_checked(world):
    client, services, _ = world
    services.throttle = FailureThrottle(20, monotonic=lambda: 0.0)  # no refill meanwhile
    answers = [client.get("/v1/audit", headers=bearer(BAD_KEY)) for _ in range(20)]
    assert {a.status_code for a in answers} == {401}
    checked = []
    authenticate = services.app.authenticate
    services.app.authenticate = lambda token: checked.append(token) or authenticate(token)
    before = position(services)
    limited = [client.get("/v1/audit", headers=bearer(BAD_KEY)) for _ in range(50)]
    assert {a.status_code for a in limited} == {429}
    body = limited[0].json()
    assert body["errors"] == [
        {"field": "authorization", "reason": body["errors"][0]["reason"], "code": "rate_limited"}
    ]
    assert body["detail"].startswith("authorization: too many failed authentications")
    assert limited[0].headers["retry-after"] == "3"
    assert checked == []
    assert position(services) - before <= 1
    # The same client with a good key is refused too: it is the client that failed.
    assert client.get("/v1/audit", headers=ADMIN).status_code == 429
    throttled = audit_of(services, "request.rate_limited")
    assert counted(throttled) == 51


def test_good_keys_spend_nothing_of_the_allowance(world):
    client, services, keys = world
    services.throttle = FailureThrottle(20, monotonic=lambda: 0.0)  # no refill meanwhile
    for _ in range(19):
        assert client.get("/v1/audit", headers=bearer(BAD_KEY)).status_code == 401
    for n in range(60):
        ok = client.post("/v1/usage", json=event(f"ok-{n}"), headers=bearer(keys["emitter"]))
        assert ok.status_code == 202
        assert client.get("/v1/audit?limit=1", headers=bearer(keys["finance"])).status_code == 200
    assert client.get("/v1/audit", headers=bearer(BAD_KEY)).status_code == 401
    assert client.get("/v1/audit", headers=bearer(BAD_KEY)).status_code == 429


def test_a_guessed_key_id_is_limited_from_every_client_and_refills_with_time():
    now = [0.0]
    throttle = FailureThrottle(20, monotonic=lambda: now[0])
    for n in range(20):
        throttle.check(f"10.0.0.{n}", "0123456789abcdef")
        throttle.failed(f"10.0.0.{n}", "0123456789abcdef")
    with pytest.raises(RateLimited) as refused:
        throttle.check("10.9.9.9", "0123456789abcdef")
    assert refused.value.retry_after == 3  # one failure back every 3 s at 20 a minute
    throttle.check("10.9.9.9", "fedcba9876543210")  # another key id from a fresh client
    now[0] += 3
    throttle.check("10.9.9.9", "0123456789abcdef")


def test_a_key_id_others_failed_on_still_admits_its_holder(world):
    client, services, keys = world
    services.throttle = FailureThrottle(20, monotonic=lambda: 0.0)  # no refill meanwhile
    key_id = keys["finance"].split("_")[1]
    for n in range(20):  # someone guessing at the finance key's secret from many addresses
        services.throttle.failed(f"10.0.0.{n}", key_id)
    assert client.get("/v1/audit?limit=1", headers=bearer(keys["finance"])).status_code == 200
    wrong = client.get("/v1/audit", headers=bearer(f"bk_{key_id}_wrong-secret"))
    assert wrong.status_code == 429 and wrong.headers["retry-after"] == "3"
    assert client.get("/v1/audit?limit=1", headers=bearer(keys["finance"])).status_code == 200


def test_malformed_keys_count_against_the_client_only():
    throttle = FailureThrottle(2, monotonic=lambda: 0.0)
    throttle.failed("10.0.0.1", None)
    throttle.failed("10.0.0.1", None)
    with pytest.raises(RateLimited):
        throttle.check("10.0.0.1", None)
    throttle.check("10.0.0.2", None)


def test_the_throttle_remembers_a_bounded_number_of_clients_and_key_ids():
    throttle = FailureThrottle(20, max_buckets=100, monotonic=lambda: 0.0)
    for n in range(5000):
        throttle.failed(f"client-{n}", f"{n:016x}")
    assert throttle.tracked == 200


# Counting refusals instead of keeping one event each -----------------------------------------


def test_a_flood_of_bad_keys_adds_a_handful_of_events_and_the_audit_counts_them(
    settings, clock, monkeypatch
):
    monkeypatch.setenv("BILLING_AUTH_FAILURES_PER_MINUTE", "100000")
    with http(settings, clock) as (client, services):
        before = position(services)
        for _ in range(500):
            assert client.get("/v1/audit", headers=bearer(BAD_KEY)).status_code == 401
        services.app.refusals.flush()
        assert position(services) - before <= 3
        refused = [
            a for a in audit_of(services, "request.refused") if a["key_id"] == "0123456789abcdef"
        ]
        assert counted(refused) == 500
        assert {r["detail"]["reason"] for r in refused} == {"unknown key"}
        assert {r["detail"]["client"] for r in refused} == {"testclient"}
        assert all(r["detail"]["first_at"] <= r["detail"]["last_at"] for r in refused)


def test_the_refusal_log_is_bounded_and_says_who_how_often_and_when():
    written: list[AuditFact] = []
    log = RefusalLog(lambda facts: written.extend(facts), max_kinds=10, at_once_per_window=5)
    at = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    who = Principal(emitter="svc", key_id="0123456789abcdef", role="emitter")
    for n in range(1000):
        log.record(who, "usage.ingest", f"no customer 'c{n % 50}'", {"event_id": f"e{n}"}, at)
    assert len(written) == 5
    assert log.flush() <= 11
    facts = [f.collect_events()[0] for f in written]
    assert sum(f.count for f in facts) == 1000
    assert {f.emitter for f in facts} == {"svc"}
    assert all(f.first_at == at and f.at == at for f in facts)
    assert log.flush() == 0


def test_refusals_are_written_when_the_service_stops(settings, clock):
    with http(settings, clock) as (client, services):
        for _ in range(3):
            client.get("/v1/audit", headers=bearer(BAD_KEY))
        assert services.app.refusals.pending == 2
    with http(settings, clock) as (client, services):
        refused = audit_of(services, "request.refused")
        assert counted(refused) == 3


def test_a_fact_stored_before_refusals_were_counted_still_loads_as_one(app):
    app.record_refusal(None, "request.refused", "missing bearer key", {"request": "GET /x"})
    (notification,) = app.recorder.select_notifications(start=1, limit=1)
    stored = app.mapper.to_domain_event(notification)
    assert (stored.count, stored.first_at) == (1, stored.at)
    transcoder = app.mapper.transcoder
    state = transcoder.decode(notification.state)
    del state["count"], state["first_at"]
    old = StoredEvent(
        originator_id=notification.originator_id,
        originator_version=notification.originator_version,
        topic=notification.topic,
        state=transcoder.encode(state),
    )
    loaded = app.mapper.to_domain_event(old)
    assert (loaded.count, loaded.first_at, loaded.reason) == (1, None, "missing bearer key")
    assert loaded.mutate(None).count == 1


# A caller without a grant learns nothing -----------------------------------------------------


def test_an_emitter_gets_the_same_refusal_for_unknown_and_ungranted_customers(world):
    client, _, keys = world
    key = bearer(keys["emitter"])
    known = client.post("/v1/usage", json=event("k1", customer_id="other"), headers=key)
    unknown = client.post("/v1/usage", json=event("k2", customer_id="ghost"), headers=key)
    assert (known.status_code, unknown.status_code) == (403, 403)
    assert known.json()["errors"][0]["code"] == unknown.json()["errors"][0]["code"]
    batch = client.post(
        "/v1/usage/batch",
        json={"events": [event("k3", customer_id="other"), event("k4", customer_id="ghost")]},
        headers=key,
    ).json()["results"]
    assert [r["status"] for r in batch] == ["rejected", "rejected"]
    assert all("no grant" in r["detail"] for r in batch)
    admin = client.post("/v1/usage", json=event("k5", customer_id="ghost"), headers=ADMIN)
    assert admin.status_code == 422 and admin.json()["errors"][0]["code"] == "unknown_customer"


def test_an_emitter_cannot_probe_customers_or_events_through_compensations(world):
    client, _, keys = world
    key = bearer(keys["emitter"])
    body = {"compensation_id": "c1", "reason": "probe"}
    answers = [
        client.post(
            f"/v1/customers/{customer}/usage/{event_id}/compensations", json=body, headers=key
        )
        for customer, event_id in (("other", "seed"), ("ghost", "seed"), ("other", "nothing"))
    ]
    assert [a.status_code for a in answers] == [403, 403, 403]
    assert len({a.json()["errors"][0]["code"] for a in answers}) == 1


# Every refusal of an ingest and every 403 is audited ----------------------------------------


def test_refused_compensations_and_rejected_ingests_are_audited(world):
    client, services, keys = world
    key = bearer(keys["emitter"])
    body = {"compensation_id": "c1", "reason": "probe"}
    assert (
        client.post("/v1/customers/other/usage/seed/compensations", json=body, headers=key)
    ).status_code == 403
    late = event("bad", occurred_at="2027-06-01T00:00:00Z")
    assert client.post("/v1/usage", json=late, headers=key).status_code == 422
    compensations = audit_of(services, "usage.compensate")
    assert [(c["actor"], c["detail"]["customer_id"]) for c in compensations] == [
        (f"svc/{keys['emitter'].split('_')[1]}", "other")
    ]
    ingests = audit_of(services, "usage.ingest")
    assert [
        (i["detail"]["field"], i["detail"]["event_ids"], i["detail"]["count"]) for i in ingests
    ] == [("occurred_at", ["bad"], 1)]
    assert all(k not in str(compensations + ingests) for k in keys.values())


def test_every_403_is_audited(world):
    client, services, keys = world
    key = bearer(keys["finance"])
    for _ in range(30):
        assert client.post("/v1/usage", json=event("f"), headers=key).status_code == 403
    refused = [
        a
        for a in audit_of(services, "request.refused")
        if a["key_id"] == keys["finance"].split("_")[1]
    ]
    assert counted(refused) == 30 and len(refused) <= 2


# Keys stay secret ----------------------------------------------------------------------------


def test_no_log_line_ever_carries_a_key(world, caplog):
    client, services, keys = world
    caplog.set_level(logging.DEBUG)
    for key in (keys["emitter"], keys["finance"], BAD_KEY, "test-admin-key"):
        client.post("/v1/usage", json=event("log-1"), headers=bearer(key))
        client.get("/v1/audit", headers=bearer(key))
        client.get("/v1/audit", headers=bearer(key[:-1]))
    for _ in range(25):
        client.get("/v1/audit", headers=bearer(BAD_KEY))
    services.app.refusals.flush()
    logged = caplog.text + str([r.__dict__ for r in caplog.records])
    for key in (*keys.values(), BAD_KEY, "test-admin-key"):
        assert key not in logged
        assert key.split("_", 2)[-1] not in logged
