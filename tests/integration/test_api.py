"""The HTTP API as a product backend and a finance person use it, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.api_support import ADMIN, bearer, event, http, setup_acme


@pytest.fixture
def api(settings, clock):
    with http(settings, clock) as pair:
        yield pair


def test_ingest_close_and_read_an_invoice(api):
    client, _ = api
    setup_acme(client)
    first = client.post("/v1/usage", json=event("req-1", 990), headers=ADMIN)
    assert first.status_code == 202
    assert first.json()["status"] == "accepted" and first.json()["period"] == "2026-10"
    assert first.json()["treatment"] == "on_time" and first.json()["received_at"]
    retry = client.post("/v1/usage", json=event("req-1", 990), headers=ADMIN)
    assert (retry.status_code, retry.json()["status"]) == (202, "duplicate")
    conflict = client.post("/v1/usage", json=event("req-1", 5), headers=ADMIN)
    assert (conflict.status_code, conflict.json()["status"]) == (409, "conflict")
    batch = client.post(
        "/v1/usage/batch",
        headers=ADMIN,
        json={
            "events": [
                event("req-2", 5),
                event("req-1", 990),
                event("req-3", -1),
                event("req-4", 0.5),
            ]
        },
    )
    assert batch.status_code == 200
    assert [r["status"] for r in batch.json()["results"]] == [
        "accepted",
        "duplicate",
        "rejected",
        "accepted",
    ]
    assert batch.json()["results"][2]["field"] == "quantity"
    usage = client.get("/v1/customers/acme/usage?period=2026-10", headers=ADMIN).json()
    assert usage["items"] == [
        {"meter": "api_calls", "quantity": "995.5", "amount": "9.96", "currency": "USD"}
    ] or [(i["meter"], i["quantity"], i["amount"]) for i in usage["items"]] == [
        ("api_calls", "995.5", "9.96")
    ]
    assert usage["lag"] == 0 and usage["position"] > 0
    closed = client.post("/v1/customers/acme/periods/2026-10/close", headers=ADMIN)
    assert closed.status_code == 200 and closed.json()["total"] == "9.96"
    listed = client.get("/v1/invoices?customer_id=acme&period=2026-10", headers=ADMIN).json()
    assert [(i["status"], i["revision"], i["total"]) for i in listed["items"]] == [
        ("issued", 1, "9.96")
    ]
    invoice = client.get(f"/v1/invoices/{listed['items'][0]['invoice_id']}", headers=ADMIN).json()
    assert invoice["lines"][0]["quantity"] == "995.5" and invoice["lineage_digest"]
    assert invoice["currency"] == "USD" and invoice["status"] == "issued"


def test_late_usage_restates_and_revisions_show_the_delta(api):
    client, _ = api
    setup_acme(client)
    assert (
        client.patch(
            "/v1/customers/acme", json={"late_usage_policy": "restate"}, headers=ADMIN
        ).status_code
        == 200
    )
    client.post("/v1/usage", json=event("a", 990), headers=ADMIN)
    invoice_id = client.post("/v1/customers/acme/periods/2026-10/close", headers=ADMIN).json()[
        "invoice_id"
    ]
    late = client.post("/v1/usage", json=event("late", 30, "2026-10-30T10:00:00Z"), headers=ADMIN)
    assert late.json()["treatment"] == "restated"
    revisions = client.get(f"/v1/invoices/{invoice_id}/revisions", headers=ADMIN).json()
    assert [(r["revision"], r["total"], r["delta"], r["status"]) for r in revisions["items"]] == [
        (1, "9.90", "9.90", "superseded"),
        (2, "12.10", "2.20", "issued"),
    ]
    first = client.get(f"/v1/invoices/{invoice_id}?revision=1", headers=ADMIN).json()
    assert first["status"] == "superseded" and first["total"] == "9.90"


def test_lineage_pages_through_the_records_of_a_line(api):
    client, _ = api
    setup_acme(client)
    client.post(
        "/v1/usage/batch",
        headers=ADMIN,
        json={"events": [event(f"e{i}", i + 1) for i in range(25)]},
    )
    client.post(
        "/v1/customers/acme/usage/e0/compensations",
        headers=ADMIN,
        json={"compensation_id": "c1", "reason": "job failed"},
    )
    invoice_id = client.get("/v1/invoices?customer_id=acme&period=2026-10", headers=ADMIN).json()[
        "items"
    ][0]["invoice_id"]
    seen, cursor = [], None
    while True:
        page = client.get(
            f"/v1/invoices/{invoice_id}/lineage",
            headers=ADMIN,
            params={"line": 0, "limit": 10, **({"cursor": cursor} if cursor else {})},
        )
        assert page.status_code == 200
        seen += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    from decimal import Decimal

    assert len(seen) == 26
    line = client.get(f"/v1/invoices/{invoice_id}", headers=ADMIN).json()["lines"][0]
    assert sum(Decimal(r["quantity"]) for r in seen) == Decimal(line["quantity"]) == 324
    assert client.get(f"/v1/invoices/{invoice_id}/lineage?line=7", headers=ADMIN).status_code == 404


def test_as_of_reads_the_invoice_as_it_was_known(api, clock):
    client, _ = api
    setup_acme(client)
    client.post("/v1/usage", json=event("early", 100), headers=ADMIN)
    before = clock.now.isoformat()
    clock.advance(hours=1)
    client.post("/v1/usage", json=event("later", 50), headers=ADMIN)
    then = client.get(
        "/v1/customers/acme/usage", headers=ADMIN, params={"period": "2026-10", "as_of": before}
    ).json()
    now = client.get("/v1/customers/acme/usage?period=2026-10", headers=ADMIN).json()
    assert then["items"][0]["quantity"] == "100" and now["items"][0]["quantity"] == "150"


def test_keys_emitters_and_grants_through_the_api(api):
    client, services = api
    setup_acme(client)
    assert (
        client.post(
            "/v1/emitters", json={"emitter_id": "checkout", "name": "Checkout"}, headers=ADMIN
        ).status_code
        == 201
    )
    created = client.post(
        "/v1/keys",
        json={"role": "emitter", "name": "checkout prod", "emitter_id": "checkout"},
        headers=ADMIN,
    )
    assert created.status_code == 201
    key_id, key = created.json()["key_id"], created.json()["key"]
    assert key not in str(services.app.recorder.select_notifications(1, 1000))
    refused = client.post("/v1/usage", json=event("e1"), headers=bearer(key))
    assert refused.status_code == 403
    grant = client.post(
        "/v1/emitters/checkout/grants",
        headers=ADMIN,
        json={"customer_id": "acme", "meters": ["api_calls"]},
    )
    assert grant.status_code == 201
    assert client.post("/v1/usage", json=event("e1"), headers=bearer(key)).status_code == 202
    assert client.delete(f"/v1/keys/{key_id}", headers=ADMIN).status_code == 200
    assert client.post("/v1/usage", json=event("e2"), headers=bearer(key)).status_code == 401
    audit = client.get("/v1/audit?limit=1000", headers=ADMIN).json()["items"]
    refusals = [a for a in audit if a["action"] in ("usage.ingest", "request.refused")]
    assert {r["key_id"] for r in refusals} >= {key_id}
    assert all(key not in str(a) for a in audit)


def test_health_needs_no_key_and_openapi_documents_every_endpoint(api):
    client, _ = api
    assert client.get("/health").status_code == 200
    schema = client.get("/schema/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/usage",
        "/v1/usage/batch",
        "/v1/customers",
        "/v1/plans",
        "/v1/customers/{customer_id}/subscription",
        "/v1/customers/{customer_id}/merge",
        "/v1/customers/{customer_id}/periods/{period}/close",
        "/v1/customers/{customer_id}/usage",
        "/v1/invoices",
        "/v1/invoices/{invoice_id}",
        "/v1/invoices/{invoice_id}/revisions",
        "/v1/invoices/{invoice_id}/lineage",
        "/v1/reconciliation",
        "/v1/projections",
        "/v1/projections/{name}/rebuild",
        "/v1/audit",
        "/v1/keys",
        "/v1/keys/{key_id}",
        "/v1/emitters",
        "/v1/emitters/{emitter_id}/grants",
        "/v1/customers/{customer_id}/usage/{event_id}/compensations",
        "/v1/customers/{customer_id}/adjustments",
    ):
        assert path in paths, path
    assert schema["components"]["securitySchemes"]["BearerAuth"]["scheme"] == "bearer"
    assert paths["/v1/usage"]["post"]["security"] == [{"BearerAuth": []}]
