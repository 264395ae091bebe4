"""Every role against every endpoint family: 401 without a valid key, 403 outside the role."""

from __future__ import annotations

import pytest

from api.http.auth import ROLES_FOR
from tests.api_support import ADMIN, bearer, event, http, setup_acme

ENDPOINTS = [  # (family, method, path, body)
    ("ingest", "POST", "/v1/usage", event("m-1")),
    ("ingest", "POST", "/v1/usage/batch", {"events": [event("m-2")]}),
    (
        "ingest",
        "POST",
        "/v1/customers/acme/usage/seed/compensations",
        {"compensation_id": "mc", "reason": "r", "quantity": "0.1"},
    ),
    (
        "manage",
        "POST",
        "/v1/customers/acme/adjustments",
        {
            "adjustment_id": "ma",
            "meter": "api_calls",
            "quantity": "1",
            "occurred_at": "2026-10-05T10:00:00Z",
            "reason": "r",
        },
    ),
    ("manage", "POST", "/v1/customers", {"customer_id": "m-cust", "name": "M"}),
    ("manage", "PATCH", "/v1/customers/acme", {"name": "Acme Renamed"}),
    (
        "manage",
        "POST",
        "/v1/plans",
        {
            "plan_id": "m-plan",
            "currency": "USD",
            "charges": [{"meter": "api_calls", "model": "per_unit", "unit_amount": "1"}],
        },
    ),
    (
        "manage",
        "PUT",
        "/v1/customers/acme/subscription",
        {"plan_id": "std", "effective_from": "2026-11"},
    ),
    (
        "manage",
        "POST",
        "/v1/customers/other/merge",
        {"into": "acme", "effective_at": "2026-11-01T00:00:00Z"},
    ),
    ("manage", "POST", "/v1/keys", {"role": "finance", "name": "m-key"}),
    ("manage", "POST", "/v1/emitters", {"emitter_id": "m-emitter", "name": "M"}),
    ("manage", "POST", "/v1/emitters/svc/grants", {"customer_id": "*", "meters": ["*"]}),
    ("close", "POST", "/v1/customers/acme/periods/2026-09/close", None),
    ("read", "GET", "/v1/customers/acme", None),
    ("read", "GET", "/v1/plans/std", None),
    ("read", "GET", "/v1/customers/acme/usage?period=2026-10", None),
    ("read", "GET", "/v1/invoices?customer_id=acme", None),
    ("reconcile", "GET", "/v1/reconciliation?period=2026-10", None),
    ("audit", "GET", "/v1/audit", None),
    ("projections", "GET", "/v1/projections", None),
]
ROLES = ["admin", "operator", "finance", "emitter"]


@pytest.fixture
def world(settings, clock):
    with http(settings, clock) as (client, services):
        setup_acme(client)
        client.post("/v1/customers", json={"customer_id": "other", "name": "Other"}, headers=ADMIN)
        client.post("/v1/emitters", json={"emitter_id": "svc", "name": "Service"}, headers=ADMIN)
        client.post(
            "/v1/emitters/svc/grants", json={"customer_id": "*", "meters": ["*"]}, headers=ADMIN
        )
        client.post("/v1/usage", json=event("seed", 5), headers=ADMIN)
        keys = {}
        for role in ROLES:
            body = {"role": role, "name": f"{role} key"}
            if role == "emitter":
                body["emitter_id"] = "svc"
            keys[role] = client.post("/v1/keys", json=body, headers=ADMIN).json()["key"]
        yield client, keys


def test_every_role_gets_exactly_what_its_role_allows(world):
    client, keys = world
    surprises = []
    for role in ROLES:
        for family, method, path, body in ENDPOINTS:
            answer = client.request(method, path, json=body, headers=bearer(keys[role]))
            allowed = role in ROLES_FOR[family]
            if allowed and answer.status_code in (401, 403):
                surprises.append((role, method, path, answer.status_code, answer.text))
            if not allowed and answer.status_code != 403:
                surprises.append((role, method, path, answer.status_code, "expected 403"))
            if allowed and answer.status_code >= 500:
                surprises.append((role, method, path, answer.status_code, answer.text))
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
def test_a_missing_or_unknown_key_is_401_everywhere(world, headers):
    client, _ = world
    for _, method, path, body in ENDPOINTS:
        answer = client.request(method, path, json=body, headers=headers)
        assert answer.status_code == 401, (method, path)
        assert answer.headers["www-authenticate"] == "Bearer"


def test_a_refused_emitter_is_audited_with_its_key_id_never_the_key(world):
    client, keys = world
    key = keys["finance"]
    assert client.post("/v1/usage", json=event("x"), headers=bearer(key)).status_code == 403
    audit = client.get("/v1/audit?limit=1000", headers=ADMIN).json()["items"]
    refused = [
        a for a in audit if a["action"] == "request.refused" and a["key_id"] == key.split("_")[1]
    ]
    assert refused and "finance" in refused[-1]["detail"]["reason"]
    assert key not in str(audit)
