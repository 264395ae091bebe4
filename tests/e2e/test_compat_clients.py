"""Teams leaving Stripe, Lago or OpenMeter keep their client code: each real client package,
pointed at a real `billing serve`, sends usage (retries included) and the invoice bills every
event exactly once, with each line's lineage adding up to it."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_e2e_serve import wait_healthy

stripe = pytest.importorskip("stripe")
lago = pytest.importorskip("lago_python_client")
openmeter = pytest.importorskip("openmeter")
cloudevents_http = pytest.importorskip("cloudevents.http")
cloudevents_conversion = pytest.importorskip("cloudevents.conversion")

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    base: str
    admin: httpx.Client
    key: str
    period: str
    occurred: datetime


def _ok(response: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json() if response.content else {}


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    admin_key = secrets.token_urlsafe(24)
    env = {**os.environ, "BILLING_DATABASE_URL": database_url, "BILLING_ADMIN_KEY": admin_key}
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, server)
        with httpx.Client(
            base_url=base, timeout=30, headers={"Authorization": f"Bearer {admin_key}"}
        ) as admin:
            for customer in ("acme", "globex"):
                _ok(admin.post("/v1/customers", json={"customer_id": customer, "name": customer}))
            _ok(
                admin.post(
                    "/v1/meters",
                    json={
                        "meter": "tokens",
                        "name": "Tokens",
                        "aggregation": "sum",
                        "field": "tokens",
                    },
                )
            )
            _ok(
                admin.post(
                    "/v1/plans",
                    json={
                        "plan_id": "std",
                        "currency": "USD",
                        "charges": [
                            {
                                "meter": "api_calls",
                                "aggregation": "sum",
                                "model": "per_unit",
                                "unit_amount": "0.10",
                            },
                            {"meter": "tokens", "model": "per_unit", "unit_amount": "0.01"},
                        ],
                    },
                )
            )
            now = datetime.now(UTC)
            period = f"{now.year:04d}-{now.month:02d}"
            for customer in ("acme", "globex"):
                _ok(
                    admin.put(
                        f"/v1/customers/{customer}/subscription",
                        json={"plan_id": "std", "effective_from": period},
                    ),
                    200,
                )
            _ok(admin.post("/v1/emitters", json={"emitter_id": "app", "name": "App"}))
            _ok(admin.post("/v1/emitters/app/grants", json={"customer_id": "*", "meters": ["*"]}))
            key = _ok(
                admin.post("/v1/keys", json={"role": "emitter", "name": "app", "emitter_id": "app"})
            )["key"]
            occurred = max(now - timedelta(minutes=2), datetime(now.year, now.month, 1, tzinfo=UTC))
            yield Served(base, admin, key, period, occurred.replace(microsecond=0))
    finally:
        server.terminate()
        server.wait(timeout=30)


def _line(served: Served, customer: str, meter: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The draft invoice's line for a meter and the records its lineage lists."""
    invoices = _ok(
        served.admin.get("/v1/invoices", params={"customer_id": customer, "period": served.period}),
        200,
    )["items"]
    invoice = _ok(served.admin.get(f"/v1/invoices/{invoices[0]['invoice_id']}"), 200)
    index, line = next((i, x) for i, x in enumerate(invoice["lines"]) if x["meter"] == meter)
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"line": index, **({"cursor": cursor} if cursor else {})}
        page = _ok(
            served.admin.get(f"/v1/invoices/{invoice['invoice_id']}/lineage", params=params), 200
        )
        records += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return line, records


def _billed_once(
    served: Served, customer: str, meter: str, quantity: str, amount: str, event_ids: set[str]
) -> None:
    line, records = _line(served, customer, meter)
    assert Decimal(line["quantity"]) == Decimal(quantity)
    assert Decimal(line["amount"]) == Decimal(amount)
    ids = [str(r.get("event_id") or r.get("id")) for r in records]
    assert sorted(ids) == sorted(event_ids)  # each event exactly once
    assert sum(Decimal(r["quantity"]) for r in records) == Decimal(quantity)


def test_external_ids_name_one_customer_and_are_listed(served: Served) -> None:
    admin = served.admin
    body = {"system": "stripe", "id": "cus_Acme"}
    _ok(admin.post("/v1/customers/acme/external_ids", json=body))
    _ok(admin.post("/v1/customers/acme/external_ids", json=body))  # the same again
    taken = admin.post("/v1/customers/globex/external_ids", json=body)
    assert taken.status_code == 409, taken.text
    assert "acme" in taken.json()["detail"]
    assert (
        admin.post(
            "/v1/customers/acme/external_ids", json={"system": "chargebee", "id": "x"}
        ).status_code
        == 422
    )
    assert (
        admin.post(
            "/v1/customers/nobody/external_ids", json={"system": "lago", "id": "x"}
        ).status_code
        == 404
    )
    customer = _ok(admin.get("/v1/customers/acme"), 200)
    assert customer["external_ids"] == [{"system": "stripe", "id": "cus_Acme"}]
    added = [
        item
        for item in _ok(admin.get("/v1/audit"), 200)["items"]
        if item["action"] == "customer.external_id_added"
    ]
    assert len(added) == 1 and added[0]["detail"]["external_id"] == "cus_Acme", added
    # Kept across a merge: still listed, and usage sent under it follows the merge.
    _ok(
        admin.post(
            "/v1/customers/acme/merge",
            json={"into": "globex", "effective_at": served.occurred.isoformat()},
        ),
        200,
    )
    assert _ok(admin.get("/v1/customers/acme"), 200)["external_ids"] == [
        {"system": "stripe", "id": "cus_Acme"}
    ]
    stripe.api_base = f"{served.base}/compat/stripe"
    stripe.api_key = served.key
    stripe.billing.MeterEvent.create(
        event_name="api_calls",
        payload={"stripe_customer_id": "cus_Acme", "value": "4"},
        identifier="after-merge",
        timestamp=int(served.occurred.timestamp()) + 1,
    )
    _billed_once(served, "globex", "api_calls", "4", "0.40", {"after-merge"})


def test_stripe_meter_events_v1_and_v2_are_billed_once(served: Served) -> None:
    _ok(
        served.admin.post(
            "/v1/customers/acme/external_ids", json={"system": "stripe", "id": "cus_Acme"}
        )
    )
    stripe.api_base = f"{served.base}/compat/stripe"
    stripe.api_key = served.key
    ts = int(served.occurred.timestamp())
    for _ in range(2):  # the second is a retry
        event = stripe.billing.MeterEvent.create(
            event_name="api_calls",
            payload={"stripe_customer_id": "cus_Acme", "value": "5"},
            identifier="s-1",
            timestamp=ts,
        )
        assert event.identifier == "s-1" and event.event_name == "api_calls"
    stripe.billing.MeterEvent.create(
        event_name="api_calls",
        payload={"stripe_customer_id": "acme", "value": "7"},  # a customer_id works too
        identifier="s-2",
        timestamp=ts,
    )
    with pytest.raises(stripe.error.InvalidRequestError) as unknown:
        stripe.billing.MeterEvent.create(
            event_name="api_calls",
            payload={"stripe_customer_id": "cus_Nobody", "value": "1"},
            identifier="s-3",
            timestamp=ts,
        )
    assert unknown.value.param == "payload[stripe_customer_id]"
    assert "cus_Nobody" in str(unknown.value.user_message)
    with pytest.raises(stripe.error.IdempotencyError):
        stripe.billing.MeterEvent.create(
            event_name="api_calls",
            payload={"stripe_customer_id": "cus_Acme", "value": "6"},
            identifier="s-1",
            timestamp=ts,
        )
    stripe.api_key = "bk_0000000000000000_wrong"
    with pytest.raises(stripe.error.AuthenticationError):
        stripe.billing.MeterEvent.create(
            event_name="api_calls", payload={"stripe_customer_id": "acme", "value": "1"}
        )

    bases = {"api": f"{served.base}/compat/stripe", "meter_events": f"{served.base}/compat/stripe"}
    client = stripe.StripeClient(served.key, base_addresses=bases)
    session = client.v2.billing.meter_event_session.create()
    streamer = stripe.StripeClient(session.authentication_token, base_addresses=bases)
    stamp = served.occurred.isoformat().replace("+00:00", "Z")
    events = [
        {
            "event_name": "api_calls",
            "identifier": f"v2-{i}",
            "payload": {"stripe_customer_id": "cus_Acme", "value": str(i)},
            "timestamp": stamp,
        }
        for i in range(1, 11)
    ]
    for _ in range(2):  # a retried stream request
        streamer.v2.billing.meter_event_stream.create({"events": events})
    forged = stripe.StripeClient(session.authentication_token[:-4] + "0000", base_addresses=bases)
    with pytest.raises(stripe.error.AuthenticationError):
        forged.v2.billing.meter_event_stream.create({"events": events[:1]})

    ids = {"s-1", "s-2", *(f"v2-{i}" for i in range(1, 11))}
    # 5 + 7 + (1 + ... + 10) = 67 calls at 0.10
    _billed_once(served, "acme", "api_calls", "67", "6.70", ids)
    reconciled = _ok(served.admin.get("/v1/reconciliation", params={"period": served.period}), 200)
    assert reconciled["ok"] is True, reconciled
    # A key without a grant for the customer is refused in Stripe's shape, and audited.
    _ok(served.admin.post("/v1/emitters", json={"emitter_id": "narrow", "name": "Narrow"}))
    _ok(
        served.admin.post(
            "/v1/emitters/narrow/grants", json={"customer_id": "globex", "meters": ["*"]}
        )
    )
    stripe.api_key = _ok(
        served.admin.post(
            "/v1/keys", json={"role": "emitter", "name": "narrow", "emitter_id": "narrow"}
        )
    )["key"]
    with pytest.raises(stripe.error.PermissionError):
        stripe.billing.MeterEvent.create(
            event_name="api_calls",
            payload={"stripe_customer_id": "cus_Acme", "value": "1"},
            identifier="s-4",
            timestamp=ts,
        )
    audit = _ok(served.admin.get("/v1/audit"), 200)["items"]
    assert any("s-4" in str(item) and "narrow" in str(item) for item in audit), audit


def test_lago_events_and_batches_are_billed_once(served: Served) -> None:
    _ok(
        served.admin.post(
            "/v1/customers/acme/external_ids", json={"system": "lago", "id": "lago_acme"}
        )
    )
    from lago_python_client.client import Client
    from lago_python_client.exceptions import LagoApiError
    from lago_python_client.models import BatchEvent
    from lago_python_client.models import Event as LagoEvent

    def Event(**fields: Any) -> Any:  # the client's model, its optional fields unset
        return LagoEvent(precise_total_amount_cents=None, **fields)

    client = Client(api_key=served.key, api_url=f"{served.base}/compat/lago/")
    ts = int(served.occurred.timestamp())
    one = Event(
        transaction_id="l-1",
        external_subscription_id="lago_acme",
        code="tokens",
        timestamp=ts,
        properties={"tokens": 12},
    )
    for _ in range(2):
        answered = client.events.create(one)
        assert answered is not None and answered.transaction_id == "l-1"
    batch = BatchEvent(
        events=[
            Event(
                transaction_id=f"lb-{i}",
                external_subscription_id="acme",
                code="tokens",
                timestamp=str(ts),
                properties={"tokens": "100.5"},
            )
            for i in range(3)
        ]
    )
    for _ in range(2):
        client.events.batch_create(batch)
    with pytest.raises(LagoApiError) as missing:
        client.events.create(
            Event(
                transaction_id="l-2",
                external_subscription_id="lago_acme",
                code="tokens",
                timestamp=ts,
                properties={"other": 1},
            )
        )
    assert missing.value.status_code == 422
    assert "properties.tokens" in str(missing.value.response)
    with pytest.raises(LagoApiError) as unknown:
        client.events.create(
            Event(
                transaction_id="l-3",
                external_subscription_id="lago_nobody",
                code="tokens",
                timestamp=ts,
                properties={"tokens": 1},
            )
        )
    assert unknown.value.status_code == 404
    # 12 + 3 x 100.5 = 313.5 tokens at 0.01
    _billed_once(served, "acme", "tokens", "313.5", "3.14", {"l-1", "lb-0", "lb-1", "lb-2"})


def test_openmeter_cloudevents_are_billed_once(served: Served) -> None:
    _ok(
        served.admin.post(
            "/v1/customers/acme/external_ids", json={"system": "openmeter", "id": "om-acme"}
        )
    )
    from corehttp.exceptions import HttpResponseError
    from openmeter import Client
    from openmeter.models import Event

    client = Client(endpoint=f"{served.base}/compat/openmeter", token=served.key)

    def cloud_event(event_id: str, tokens: int, subject: str = "om-acme") -> Any:
        return Event(
            id=event_id,
            source="app",
            specversion="1.0",
            type="tokens",
            subject=subject,
            time=served.occurred,
            data={"tokens": tokens},
        )

    for _ in range(2):
        client.events.ingest_event(cloud_event("o-1", 40))
        client.events.ingest_events([cloud_event("ob-1", 1), cloud_event("ob-2", 2, "acme")])
    with pytest.raises(HttpResponseError) as unknown:
        client.events.ingest_event(cloud_event("o-2", 1, "om-nobody"))
    assert unknown.value.status_code == 400

    binary = cloudevents_http.CloudEvent(
        {
            "id": "bin-1",
            "source": "app",
            "type": "tokens",
            "subject": "om-acme",
            "time": served.occurred.isoformat(),
        },
        {"tokens": 300},
    )
    headers, body = cloudevents_conversion.to_binary(binary)
    for _ in range(2):
        sent = httpx.post(
            f"{served.base}/compat/openmeter/api/v1/events",
            headers={**headers, "Authorization": f"Bearer {served.key}"},
            content=body,
        )
        assert sent.status_code == 204, sent.text
    # 40 + 1 + 2 + 300 = 343 tokens at 0.01
    _billed_once(served, "acme", "tokens", "343", "3.43", {"o-1", "ob-1", "ob-2", "bin-1"})
    refused = httpx.post(
        f"{served.base}/compat/openmeter/api/v1/events",
        headers={"Authorization": "Bearer nope", "Content-Type": "application/cloudevents+json"},
        content=b"{}",
    )
    assert refused.status_code == 401
    assert refused.headers["content-type"].startswith("application/problem+json")


def test_two_customers_racing_for_one_external_id_cannot_both_hold_it(app: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from billing_domain.errors import ExternalIdTaken

    customers = [f"racer-{i}" for i in range(8)]
    for customer in customers:
        app.open_customer(customer, customer)

    def claim(customer: str) -> str:
        try:
            app.add_external_id(customer, "stripe", "cus_Contested")
        except ExternalIdTaken:
            return "taken"
        return customer

    with ThreadPoolExecutor(len(customers)) as pool:
        outcomes = list(pool.map(claim, customers))
    winners = [o for o in outcomes if o != "taken"]
    assert len(winners) == 1
    holders = [c for c in customers if app.get_customer(c).external_ids]
    assert holders == winners
    assert app.resolve_customer("stripe", "cus_Contested") == winners[0]


def test_each_dialect_refuses_out_of_bounds_input_in_its_own_shape(served: Served) -> None:
    auth = {"Authorization": f"Bearer {served.key}"}
    ts = str(int(served.occurred.timestamp()))
    long_id = "x" * 257
    stripe_refused = httpx.post(
        f"{served.base}/compat/stripe/v1/billing/meter_events",
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
        content=(
            f"event_name=api_calls&identifier={long_id}&timestamp={ts}"
            "&payload[stripe_customer_id]=acme&payload[value]=1"
        ).encode(),
    )
    assert stripe_refused.status_code == 400
    assert stripe_refused.json()["error"]["param"] == "identifier"
    huge = httpx.post(
        f"{served.base}/compat/stripe/v1/billing/meter_events",
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
        content=(
            f"event_name=api_calls&identifier=big&timestamp={ts}"
            "&payload[stripe_customer_id]=acme&payload[value]=1e999"
        ).encode(),
    )
    assert huge.status_code == 400
    assert huge.json()["error"]["param"] == "payload[value]"

    lago_refused = httpx.post(
        f"{served.base}/compat/lago/api/v1/events/batch",
        headers=auth,
        json={
            "events": [
                {
                    "transaction_id": "ok-1",
                    "external_customer_id": "acme",
                    "code": "tokens",
                    "timestamp": ts,
                    "properties": {"tokens": 1},
                },
                {
                    "transaction_id": "bad-1",
                    "external_customer_id": "acme",
                    "code": "tokens",
                    "timestamp": "yesterday",
                    "properties": {"tokens": 1},
                },
            ]
        },
    )
    assert lago_refused.status_code == 422
    assert lago_refused.json()["error_details"] == {"1": {"timestamp": [ANY_TEXT]}}

    om_refused = httpx.post(
        f"{served.base}/compat/openmeter/api/v1/events",
        headers={**auth, "Content-Type": "application/cloudevents+json"},
        json={
            "specversion": "1.0",
            "id": "neg-1",
            "source": "app",
            "type": "tokens",
            "subject": "acme",
            "data": {"tokens": -5},
        },
    )
    assert om_refused.status_code == 400
    assert om_refused.json()["extensions"]["field"] == "data.tokens"


class _AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = str.__hash__


ANY_TEXT = _AnyText()


def test_an_account_stored_before_external_ids_loads_and_takes_one(app: Any) -> None:
    import json
    from uuid import UUID

    from eventsourcing.persistence import StoredEvent

    fixture = json.loads((ROOT / "tests/fixtures/customer_opened_v1.json").read_text())
    app.recorder.insert_events(
        [
            StoredEvent(
                originator_id=UUID(fixture["originator_id"]),
                originator_version=fixture["originator_version"],
                topic=fixture["topic"],
                state=fixture["state"].encode(),
            )
        ]
    )
    assert app.get_customer("legacy-co").external_ids == []
    app.add_external_id("legacy-co", "lago", "lago_legacy")
    assert app.get_customer("legacy-co").external_ids == [{"system": "lago", "id": "lago_legacy"}]
    assert app.resolve_customer("lago", "lago_legacy") == "legacy-co"
    assert app.resolve_customer("lago", "legacy-co") == "legacy-co"
