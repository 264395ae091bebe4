"""Bad input is answered 4xx naming the field, and the store is left exactly as it was."""

from __future__ import annotations

import pytest

from tests.api_support import ADMIN, event, http, setup_acme

NO_OFFSET = event("x", occurred_at="2026-10-05T10:00:00")
CASES = [  # (method, path, body, status, field)
    ("POST", "/v1/usage", event("x", "abc"), 422, "quantity"),
    ("POST", "/v1/usage", event("x", -3), 422, "quantity"),
    ("POST", "/v1/usage", event("x", True), 422, "quantity"),
    (
        "POST",
        "/v1/usage",
        {k: v for k, v in event("x").items() if k != "occurred_at"},
        422,
        "occurred_at",
    ),
    ("POST", "/v1/usage", NO_OFFSET, 422, "occurred_at"),
    ("POST", "/v1/usage", event("x", occurred_at="2030-01-01T00:00:00Z"), 422, "occurred_at"),
    ("POST", "/v1/usage", event("x", occurred_at="2024-01-01T00:00:00Z"), 422, "occurred_at"),
    ("POST", "/v1/usage", event("x", customer_id="nobody"), 422, "customer_id"),
    ("POST", "/v1/usage", event("x", meter="bogus"), 422, "meter"),
    ("POST", "/v1/usage", {**event("x"), "colour": "red"}, 422, "colour"),
    ("POST", "/v1/usage", event(""), 422, "event_id"),
    ("POST", "/v1/usage/batch", {"events": []}, 422, "events"),
    ("POST", "/v1/usage/batch", {"events": [event(f"b{i}") for i in range(5001)]}, 422, "events"),
    ("POST", "/v1/usage/batch", {"evnts": [event("x")]}, 422, "evnts"),
    ("POST", "/v1/customers", {"customer_id": "c2"}, 422, "name"),
    (
        "POST",
        "/v1/customers",
        {"customer_id": "c2", "name": "C", "currency": "XYZ"},
        422,
        "currency",
    ),
    (
        "POST",
        "/v1/customers",
        {"customer_id": "c2", "name": "C", "late_usage_policy": "ignore"},
        422,
        "late_usage_policy",
    ),
    ("POST", "/v1/customers", {"customer_id": "acme", "name": "Dup"}, 409, "customer_id"),
    ("PATCH", "/v1/customers/acme", {"name": ""}, 422, "name"),
    ("POST", "/v1/plans", {"plan_id": "p", "charges": []}, 422, "charges"),
    (
        "POST",
        "/v1/plans",
        {
            "plan_id": "p",
            "charges": [
                {"meter": "m", "model": "graduated", "tiers": [{"up_to": 5, "unit_amount": "1"}]}
            ],
        },
        422,
        "charges[0].tiers[0].up_to",
    ),
    (
        "POST",
        "/v1/plans",
        {"plan_id": "p", "charges": [{"meter": "m", "model": "per_unit", "unit_amount": "-0.1"}]},
        422,
        "charges[0].unit_amount",
    ),
    (
        "PUT",
        "/v1/customers/acme/subscription",
        {"plan_id": "std", "effective_from": "2026-11-15"},
        422,
        "effective_from",
    ),
    (
        "PUT",
        "/v1/customers/acme/subscription",
        {"plan_id": "nope", "effective_from": "2026-11"},
        422,
        "plan_id",
    ),
    (
        "POST",
        "/v1/customers/acme/merge",
        {"into": "acme", "effective_at": "2026-11-01T00:00:00Z"},
        422,
        "into",
    ),
    (
        "POST",
        "/v1/customers/acme/merge",
        {"into": "ghost", "effective_at": "2026-11-01T00:00:00Z"},
        422,
        "into",
    ),
    (
        "POST",
        "/v1/customers/acme/usage/seed/compensations",
        {"compensation_id": "c", "quantity": "999", "reason": "too much"},
        422,
        "quantity",
    ),
    (
        "POST",
        "/v1/customers/acme/usage/ghost/compensations",
        {"compensation_id": "c", "reason": "r"},
        404,
        "event_id",
    ),
    (
        "POST",
        "/v1/customers/acme/usage/seed/compensations",
        {"compensation_id": "c"},
        422,
        "reason",
    ),
    (
        "POST",
        "/v1/customers/acme/adjustments",
        {
            "adjustment_id": "a",
            "meter": "bogus",
            "quantity": "1",
            "reason": "r",
            "occurred_at": "2026-10-05T10:00:00Z",
        },
        422,
        "meter",
    ),
    ("POST", "/v1/customers/acme/periods/2026-13/close", None, 422, "period"),
    ("POST", "/v1/customers/acme/periods/2026-11/close", None, 422, "period"),
    ("POST", "/v1/customers/ghost/periods/2026-10/close", None, 404, "customer_id"),
    ("POST", "/v1/keys", {"role": "root", "name": "k"}, 422, "role"),
    ("POST", "/v1/keys", {"role": "emitter", "name": "k"}, 422, "emitter_id"),
    ("POST", "/v1/emitters/ghost/grants", {"customer_id": "*", "meters": ["*"]}, 404, None),
    ("GET", "/v1/customers/acme/usage?period=October", None, 422, "period"),
    ("GET", "/v1/invoices/inv_unknown", None, 404, "invoice_id"),
    ("GET", "/v1/invoices?limit=0", None, 422, "limit"),
]


@pytest.fixture
def api(settings, clock):
    with http(settings, clock) as (client, services):
        setup_acme(client)
        client.post("/v1/usage", json=event("seed", 5), headers=ADMIN)
        yield client, services


def test_each_bad_request_names_its_field_and_changes_nothing(api):
    client, services = api
    wrong = []
    for method, path, body, status, field in CASES:
        before = services.app.recorder.max_notification_id()
        answer = client.request(method, path, json=body, headers=ADMIN)
        payload = answer.json()
        fields = [e["field"] for e in payload.get("errors", [])]
        if (
            answer.status_code != status
            or (field is not None and field not in fields)
            or not payload.get("detail")
        ):
            wrong.append(
                (
                    method,
                    path,
                    body if body is None else str(body)[:60],
                    answer.status_code,
                    payload,
                )
            )
        if services.app.recorder.max_notification_id() != before:
            wrong.append((method, path, "wrote to the store"))
    assert wrong == []


def test_malformed_and_oversized_bodies_are_refused_cleanly(api):
    client, services = api
    before = services.app.recorder.max_notification_id()
    headers = {**ADMIN, "Content-Type": "application/json"}
    malformed = client.post("/v1/usage", content=b'{"event_id": "x", ', headers=headers)
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["detail"]
    not_object = client.post("/v1/usage", content=b"[1, 2]", headers=headers)
    assert 400 <= not_object.status_code < 500
    huge = client.post(
        "/v1/usage/batch",
        content=b'{"events": [' + b" " * (17 * 1024 * 1024) + b"]}",
        headers=headers,
    )
    assert huge.status_code == 413
    assert services.app.recorder.max_notification_id() == before


def test_json_numbers_are_read_exactly(api):
    client, _ = api
    assert (
        client.post(
            "/v1/usage",
            content=(
                b'{"event_id":"exact","customer_id":"acme","meter":"api_calls",'
                b'"quantity":0.100000000000000005,'
                b'"occurred_at":"2026-10-05T10:00:00Z"}'
            ),
            headers={**ADMIN, "Content-Type": "application/json"},
        ).status_code
        == 202
    )
    invoice_id = client.get("/v1/invoices?customer_id=acme&period=2026-10", headers=ADMIN).json()[
        "items"
    ][0]["invoice_id"]
    lineage = client.get(f"/v1/invoices/{invoice_id}/lineage?line=0", headers=ADMIN).json()
    exact = [r for r in lineage["items"] if r["id"] == "exact"]
    assert exact[0]["quantity"] == "0.100000000000000005"
