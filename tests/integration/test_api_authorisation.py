"""Who may call what: every role against every route, as the table below states it.

The table is written out here, not read from the code under test, and it names every route
the application serves under /v1/: a route added without a row fails the last test."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api_support import ADMIN, bearer, event, http, setup_acme

ADMIN_ONLY = {"admin"}
INGEST = {"admin", "emitter"}
READ = {"admin", "finance"}
OPERATE = {"admin", "operator"}
ALL_BUT_EMITTER = {"admin", "operator", "finance"}

ADJUSTMENT = {
    "adjustment_id": "ma",
    "meter": "api_calls",
    "quantity": "1",
    "occurred_at": "2026-10-05T10:00:00Z",
    "reason": "r",
}
PLAN = {
    "plan_id": "m-plan",
    "currency": "USD",
    "charges": [{"meter": "api_calls", "model": "per_unit", "unit_amount": "1"}],
}
METER = {"meter": "m-meter", "name": "M", "aggregation": "sum"}
WEBHOOK = {"url": "http://127.0.0.1:9/hooks", "events": ["invoice.issued"]}

# (method, route, roles allowed, a request path, its body)
TABLE = [
    ("POST", "/v1/usage", INGEST, "/v1/usage", event("m-1")),
    ("POST", "/v1/usage/batch", INGEST, "/v1/usage/batch", {"events": [event("m-2")]}),
    (
        "POST",
        "/v1/customers/{customer_id}/usage/{event_id}/compensations",
        INGEST,
        "/v1/customers/acme/usage/seed/compensations",
        {"compensation_id": "mc", "reason": "r", "quantity": "0.1"},
    ),
    (
        "POST",
        "/v1/customers/{customer_id}/adjustments",
        ADMIN_ONLY,
        "/v1/customers/acme/adjustments",
        ADJUSTMENT,
    ),
    (
        "GET",
        "/v1/customers/{customer_id}/usage",
        READ,
        "/v1/customers/acme/usage?period=2026-10",
        None,
    ),
    (
        "GET",
        "/v1/customers/{customer_id}/usage/series",
        READ,
        "/v1/customers/acme/usage/series?meter=api_calls",
        None,
    ),
    ("POST", "/v1/customers", ADMIN_ONLY, "/v1/customers", {"customer_id": "m-c", "name": "M"}),
    ("GET", "/v1/customers/{customer_id}", READ, "/v1/customers/acme", None),
    (
        "PATCH",
        "/v1/customers/{customer_id}",
        ADMIN_ONLY,
        "/v1/customers/acme",
        {"name": "Acme Renamed"},
    ),
    (
        "PUT",
        "/v1/customers/{customer_id}/subscription",
        ADMIN_ONLY,
        "/v1/customers/acme/subscription",
        {"plan_id": "std", "effective_from": "2026-11"},
    ),
    (
        "POST",
        "/v1/customers/{customer_id}/external_ids",
        ADMIN_ONLY,
        "/v1/customers/acme/external_ids",
        {"system": "stripe", "id": "cus_acme"},
    ),
    (
        "POST",
        "/v1/customers/{customer_id}/merge",
        ADMIN_ONLY,
        "/v1/customers/other/merge",
        {"into": "acme", "effective_at": "2026-11-01T00:00:00Z"},
    ),
    ("POST", "/v1/plans", ADMIN_ONLY, "/v1/plans", PLAN),
    ("GET", "/v1/plans/{plan_id}", READ, "/v1/plans/std", None),
    ("GET", "/v1/plans", READ, "/v1/plans?limit=1", None),
    ("GET", "/v1/plans/{plan_id}/versions", READ, "/v1/plans/std/versions", None),
    ("GET", "/v1/customers", READ, "/v1/customers?q=acme", None),
    ("POST", "/v1/meters", ADMIN_ONLY, "/v1/meters", METER),
    ("GET", "/v1/meters", READ, "/v1/meters", None),
    ("GET", "/v1/meters/{meter}", READ, "/v1/meters/api_calls", None),
    (
        "POST",
        "/v1/customers/{customer_id}/periods/{period}/close",
        OPERATE,
        "/v1/customers/acme/periods/2026-09/close",
        None,
    ),
    ("GET", "/v1/invoices", READ, "/v1/invoices?customer_id=acme", None),
    ("GET", "/v1/invoices/{invoice_id}", READ, "/v1/invoices/{invoice}", None),
    ("GET", "/v1/invoices/{invoice_id}/revisions", READ, "/v1/invoices/{invoice}/revisions", None),
    (
        "GET",
        "/v1/invoices/{invoice_id}/lineage",
        READ,
        "/v1/invoices/{invoice}/lineage?line=0",
        None,
    ),
    (
        "GET",
        "/v1/invoices/{invoice_id}/lineage/proof",
        READ,
        "/v1/invoices/{invoice}/lineage/proof?event_id=seed",
        None,
    ),
    ("GET", "/v1/reconciliation", ALL_BUT_EMITTER, "/v1/reconciliation?period=2026-10", None),
    ("GET", "/v1/projections", OPERATE, "/v1/projections", None),
    (
        "POST",
        "/v1/projections/{name}/rebuild",
        OPERATE,
        "/v1/projections/audit/rebuild",
        None,
    ),
    (
        "GET",
        "/v1/projections/{name}/quarantine",
        ALL_BUT_EMITTER,
        "/v1/projections/invoices/quarantine",
        None,
    ),
    (
        "POST",
        "/v1/projections/{name}/quarantine/{notification_id}/retry",
        OPERATE,
        "/v1/projections/invoices/quarantine/1/retry",
        None,
    ),
    ("GET", "/v1/audit", READ, "/v1/audit", None),
    ("POST", "/v1/keys", ADMIN_ONLY, "/v1/keys", {"role": "finance", "name": "m-key"}),
    ("DELETE", "/v1/keys/{key_id}", ADMIN_ONLY, "/v1/keys/{spare_key}", None),
    ("POST", "/v1/emitters", ADMIN_ONLY, "/v1/emitters", {"emitter_id": "m-e", "name": "M"}),
    (
        "POST",
        "/v1/emitters/{emitter_id}/grants",
        ADMIN_ONLY,
        "/v1/emitters/svc/grants",
        {"customer_id": "*", "meters": ["*"]},
    ),
    (
        "DELETE",
        "/v1/emitters/{emitter_id}/grants/{grant_id}",
        ADMIN_ONLY,
        "/v1/emitters/svc/grants/{spare_grant}",
        None,
    ),
    ("GET", "/v1/emitters", ALL_BUT_EMITTER, "/v1/emitters", None),
    ("GET", "/v1/emitters/{emitter_id}", ALL_BUT_EMITTER, "/v1/emitters/svc", None),
    ("PATCH", "/v1/emitters/{emitter_id}", ADMIN_ONLY, "/v1/emitters/svc", {"owner": "payments"}),
    (
        "GET",
        "/v1/emitters/{emitter_id}/activity",
        ALL_BUT_EMITTER,
        "/v1/emitters/svc/activity",
        None,
    ),
    ("GET", "/v1/keys", ALL_BUT_EMITTER, "/v1/keys?stale_days=1", None),
    ("POST", "/v1/keys/{key_id}/rotate", ADMIN_ONLY, "/v1/keys/{spare_key}/rotate", None),
    (
        "POST",
        "/v1/emitters/{emitter_id}/offboard",
        OPERATE,
        "/v1/emitters/m-e/offboard",
        {"reason": "retired"},
    ),
    ("POST", "/v1/webhooks", ADMIN_ONLY, "/v1/webhooks", WEBHOOK),
    ("GET", "/v1/webhooks", OPERATE, "/v1/webhooks", None),
    ("GET", "/v1/webhooks/{webhook_id}", OPERATE, "/v1/webhooks/{webhook}", None),
    (
        "GET",
        "/v1/webhooks/{webhook_id}/deliveries",
        OPERATE,
        "/v1/webhooks/{webhook}/deliveries",
        None,
    ),
    (
        "POST",
        "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
        OPERATE,
        "/v1/webhooks/{webhook}/deliveries/msg_none/retry",
        None,
    ),
    ("DELETE", "/v1/webhooks/{webhook_id}", ADMIN_ONLY, "/v1/webhooks/{webhook}", None),
]
ROLES = ["admin", "operator", "finance", "emitter"]


@pytest.fixture
def world(settings: Any, clock: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # Every refused key below is a failed authentication from one client address.
    monkeypatch.setenv("BILLING_AUTH_FAILURES_PER_MINUTE", "100000")
    with http(settings, clock) as (client, _):
        setup_acme(client)
        client.post("/v1/customers", json={"customer_id": "other", "name": "Other"}, headers=ADMIN)
        client.post("/v1/emitters", json={"emitter_id": "svc", "name": "Service"}, headers=ADMIN)
        client.post(
            "/v1/emitters/svc/grants", json={"customer_id": "*", "meters": ["*"]}, headers=ADMIN
        )
        spare_grant = client.post(
            "/v1/emitters/svc/grants", json={"customer_id": "acme", "meters": ["*"]}, headers=ADMIN
        ).json()["grant_id"]
        client.post("/v1/usage", json=event("seed", 5), headers=ADMIN)
        invoice = client.get("/v1/invoices?customer_id=acme", headers=ADMIN).json()["items"][0]
        keys = {}
        for role in ROLES:
            body = {"role": role, "name": f"{role} key"}
            if role == "emitter":
                body["emitter_id"] = "svc"
            keys[role] = client.post("/v1/keys", json=body, headers=ADMIN).json()["key"]
        spare_key = client.post(
            "/v1/keys", json={"role": "finance", "name": "spare"}, headers=ADMIN
        ).json()["key_id"]
        names = {"invoice": invoice["invoice_id"], "spare_key": spare_key}
        names["spare_grant"] = spare_grant
        names["webhook"] = client.post("/v1/webhooks", json=WEBHOOK, headers=ADMIN).json()[
            "webhook_id"
        ]
        yield client, keys, names


def requests(names: dict[str, str]) -> Iterator[tuple[str, str, set[str], str, Any]]:
    for method, route, allowed, path, body in TABLE:
        yield method, route, allowed, path.format(**names), body


def test_every_role_gets_exactly_what_its_role_allows(world: Any) -> None:
    client, keys, names = world
    surprises = []
    for role in ROLES:
        for method, route, allowed, path, body in requests(names):
            answer = client.request(method, path, json=body, headers=bearer(keys[role]))
            if role in allowed and answer.status_code in (401, 403):
                surprises.append((role, method, route, answer.status_code, answer.text))
            if role not in allowed and answer.status_code != 403:
                surprises.append((role, method, route, answer.status_code, "expected 403"))
            if answer.status_code >= 500:
                surprises.append((role, method, route, answer.status_code, answer.text))
    assert surprises == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer bk_0123456789abcdef_not-a-real-secret"},
        {"Authorization": "Bearer nonsense"},
    ],
)
def test_a_missing_or_unknown_key_is_401_everywhere(world: Any, headers: dict[str, str]) -> None:
    client, _, names = world
    for method, route, _, path, body in requests(names):
        answer = client.request(method, path, json=body, headers=headers)
        assert answer.status_code == 401, (method, route)
        assert answer.headers["www-authenticate"] == "Bearer"


def test_a_refused_emitter_is_audited_with_its_key_id_never_the_key(world: Any) -> None:
    client, keys, _ = world
    key = keys["finance"]
    assert client.post("/v1/usage", json=event("x"), headers=bearer(key)).status_code == 403
    audit = client.get("/v1/audit?limit=1000", headers=ADMIN).json()["items"]
    refused = [
        a for a in audit if a["action"] == "request.refused" and a["key_id"] == key.split("_")[1]
    ]
    assert refused and "finance" in refused[-1]["detail"]["reason"]
    assert key not in str(audit)


def test_the_table_names_every_route_the_api_serves(settings: Any, clock: Any) -> None:
    with http(settings, clock) as (client, _):
        served = {
            (method, re.sub(r":\w+}", "}", route.path))
            for route in client.app.routes
            for method in getattr(route, "methods", ())
            if route.path.startswith("/v1/") and method not in ("HEAD", "OPTIONS")
        }
    assert served == {(method, route) for method, route, *_ in TABLE}
