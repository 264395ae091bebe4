"""One bad request never hurts anyone else: every input has a documented bound, refused with
422 naming the field before any work, and the store is left exactly as it was."""

from __future__ import annotations

import itertools
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing_domain import bounds
from billing_domain.errors import InvalidInput
from tests.api_support import ADMIN, event, http, setup_acme

JSON = {**ADMIN, "Content-Type": "application/json"}
ROOT = Path(__file__).resolve().parents[2]
_ids = itertools.count()

GOOD_ADJUSTMENT = {
    "adjustment_id": "adj",
    "meter": "api_calls",
    "quantity": "1",
    "reason": "r",
    "occurred_at": "2026-10-05T10:00:00Z",
}


def _plan(charge: dict[str, Any]) -> dict[str, Any]:
    return {"plan_id": "p2", "currency": "USD", "charges": [charge]}


def _graduated(**tier: Any) -> dict[str, Any]:
    return {
        "meter": "api_calls",
        "aggregation": "sum",
        "model": "graduated",
        "tiers": [{"up_to": None, "unit_amount": "0.01", **tier}],
    }


def _per_unit(**fields: Any) -> dict[str, Any]:
    return {"meter": "api_calls", "model": "per_unit", "unit_amount": "0.01", **fields}


def _raw_usage(quantity_json: str, **fields: str) -> bytes:
    """A usage body with the quantity as a raw JSON number (exactly as a client wrote it)."""
    parts = {**{k: json.dumps(v) for k, v in event("x").items()}, **fields}
    parts["quantity"] = quantity_json
    return ("{" + ",".join(f'"{k}":{v}' for k, v in parts.items()) + "}").encode()


# (method, path, json body, field the refusal names)
REFUSED = [
    # quantities: plain decimal text, 38 significant digits, below 10^28, 18 decimal places
    ("POST", "/v1/usage", event("x", "1e400"), "quantity"),
    ("POST", "/v1/usage", event("x", "1e999999999"), "quantity"),
    ("POST", "/v1/usage", event("x", "1e-999999999"), "quantity"),
    ("POST", "/v1/usage", event("x", "1E3"), "quantity"),
    ("POST", "/v1/usage", event("x", " 1"), "quantity"),
    ("POST", "/v1/usage", event("x", "1 "), "quantity"),
    ("POST", "/v1/usage", event("x", "1_000"), "quantity"),
    ("POST", "/v1/usage", event("x", "\u0661"), "quantity"),
    ("POST", "/v1/usage", event("x", "+1"), "quantity"),
    ("POST", "/v1/usage", event("x", ".5"), "quantity"),
    ("POST", "/v1/usage", event("x", "NaN"), "quantity"),
    ("POST", "/v1/usage", event("x", "Infinity"), "quantity"),
    ("POST", "/v1/usage", event("x", "1" + "0" * 28), "quantity"),
    ("POST", "/v1/usage", event("x", 10**28), "quantity"),
    ("POST", "/v1/usage", event("x", "0." + "0" * 18 + "1"), "quantity"),
    ("POST", "/v1/usage", event("x", "1" * 20 + "." + "1" * 19), "quantity"),
    ("POST", "/v1/usage", event("x", "9" * 100_000), "quantity"),
    # times: RFC 3339 with an offset, at most microseconds
    ("POST", "/v1/usage", event("x", occurred_at=1_791_000_000), "occurred_at"),  # type: ignore[arg-type]
    ("POST", "/v1/usage", event("x", occurred_at="1791000000"), "occurred_at"),
    ("POST", "/v1/usage", event("x", occurred_at="2026-10-05T10:00:00.123456789Z"), "occurred_at"),
    ("POST", "/v1/usage", event("x", occurred_at="2026-10-05"), "occurred_at"),
    ("POST", "/v1/usage", event("x", occurred_at="2026-10-05 10:00:00Z"), "occurred_at"),
    ("POST", "/v1/usage", event("x", occurred_at="20261005T100000Z"), "occurred_at"),
    ("POST", "/v1/usage", event("x", occurred_at="2026-10-05T10:00:00Z\n"), "occurred_at"),
    (
        "POST",
        "/v1/usage",
        event("x", occurred_at="2026-10-05T10:00:00" + "0" * 10**5),
        "occurred_at",
    ),
    # ids: printable, NFC, no '/', not '.', '..' or '*', bounded
    ("POST", "/v1/usage", event("a\x00b"), "event_id"),
    ("POST", "/v1/usage", event("x", customer_id="ac\x00me"), "customer_id"),
    ("POST", "/v1/usage", event("x" * 257), "event_id"),
    ("POST", "/v1/usage", event("x", meter="api calls"), "meter"),
    ("POST", "/v1/customers", {"customer_id": "a/b", "name": "A"}, "customer_id"),
    ("POST", "/v1/customers", {"customer_id": "..", "name": "A"}, "customer_id"),
    ("POST", "/v1/customers", {"customer_id": "../acme", "name": "A"}, "customer_id"),
    ("POST", "/v1/customers", {"customer_id": "*", "name": "A"}, "customer_id"),
    ("POST", "/v1/customers", {"customer_id": "ac\x07me", "name": "A"}, "customer_id"),
    ("POST", "/v1/customers", {"customer_id": "ac\u202eme", "name": "A"}, "customer_id"),
    ("POST", "/v1/customers", {"customer_id": "ac\u200bme", "name": "A"}, "customer_id"),
    ("POST", "/v1/customers", {"customer_id": "cafe\u0301", "name": "A"}, "customer_id"),
    ("POST", "/v1/customers", {"customer_id": "c" * 201, "name": "A"}, "customer_id"),
    ("POST", "/v1/customers", {"customer_id": "c2", "name": "A\x00"}, "name"),
    ("POST", "/v1/customers", {"customer_id": "c2", "name": "A\u202e"}, "name"),
    ("POST", "/v1/customers", {"customer_id": "c2", "name": "A" * 201}, "name"),
    ("POST", "/v1/emitters", {"emitter_id": "svc/1", "name": "S"}, "emitter_id"),
    ("POST", "/v1/plans", {**_plan(_per_unit()), "plan_id": "p/2"}, "plan_id"),
    # properties: 50 keys and items, 4 levels, keys 128, strings 1,024, 8 KiB in all
    ("POST", "/v1/usage", event("x", properties={"blob": "x" * 7_000_000}), "properties"),
    ("POST", "/v1/usage", event("x", properties={f"k{i}": i for i in range(51)}), "properties"),
    ("POST", "/v1/usage", event("x", properties={"l": list(range(51))}), "properties"),
    (
        "POST",
        "/v1/usage",
        event("x", properties={"a": {"b": {"c": {"d": {}}}}}),
        "properties",
    ),
    ("POST", "/v1/usage", event("x", properties={"k" * 129: 1}), "properties"),
    ("POST", "/v1/usage", event("x", properties={"a": "b\x00"}), "properties"),
    (
        "POST",
        "/v1/usage",
        event("x", properties={f"k{i}": "v" * 1000 for i in range(9)}),
        "properties",
    ),
    ("POST", "/v1/usage", event("x", properties={"n": "1"}) | {"properties": []}, "properties"),
    # corrections
    (
        "POST",
        "/v1/customers/acme/adjustments",
        {**GOOD_ADJUSTMENT, "quantity": "1e400"},
        "quantity",
    ),
    (
        "POST",
        "/v1/customers/acme/adjustments",
        {**GOOD_ADJUSTMENT, "quantity": "-1e-30"},
        "quantity",
    ),
    (
        "POST",
        "/v1/customers/acme/adjustments",
        {**GOOD_ADJUSTMENT, "occurred_at": 1},
        "occurred_at",
    ),
    (
        "POST",
        "/v1/customers/acme/usage/seed/compensations",
        {"compensation_id": "c", "quantity": "1e-999999999", "reason": "r"},
        "quantity",
    ),
    (
        "POST",
        "/v1/customers/acme/usage/seed/compensations",
        {"compensation_id": "c\u200b", "reason": "r"},
        "compensation_id",
    ),
    # plans: known fields only, amounts bounded like quantities
    ("POST", "/v1/plans", _plan(_per_unit(includd_quantity="5")), "charges[0].includd_quantity"),
    ("POST", "/v1/plans", _plan(_graduated(flat_amout="5")), "charges[0].tiers[0].flat_amout"),
    ("POST", "/v1/plans", _plan(_per_unit(tiers=[])), "charges[0].tiers"),
    ("POST", "/v1/plans", _plan(_per_unit(unit_amount="1e400")), "charges[0].unit_amount"),
    ("POST", "/v1/plans", _plan(_per_unit(unit_amount=" 1")), "charges[0].unit_amount"),
    (
        "POST",
        "/v1/plans",
        _plan(_per_unit(included_quantity="1_0")),
        "charges[0].included_quantity",
    ),
    (
        "POST",
        "/v1/plans",
        _plan(_graduated(flat_amount="1e-99")),
        "charges[0].tiers[0].flat_amount",
    ),
    (
        "POST",
        "/v1/plans",
        _plan(
            {
                "meter": "api_calls",
                "model": "package",
                "package_size": 10**30,
                "package_amount": "1",
            }
        ),
        "charges[0].package_size",
    ),
    (
        "POST",
        "/v1/plans",
        _plan(
            {
                "meter": "api_calls",
                "model": "graduated",
                "tiers": [
                    {"up_to": 10**30, "unit_amount": "1"},
                    {"up_to": None, "unit_amount": "1"},
                ],
            }
        ),
        "charges[0].tiers[0].up_to",
    ),
    # every other time input
    (
        "PUT",
        "/v1/customers/acme/subscription",
        {"plan_id": "std", "effective_from": "1790000000"},
        "effective_from",
    ),
    (
        "PUT",
        "/v1/customers/acme/subscription",
        {"plan_id": "std", "effective_from": "2026-11-01T00:00:00"},
        "effective_from",
    ),
    (
        "PUT",
        "/v1/customers/acme/subscription",
        {"plan_id": "std", "effective_from": "2026-11\n"},
        "effective_from",
    ),
    ("POST", "/v1/customers/acme/merge", {"into": "x", "effective_at": 1790000000}, "effective_at"),
    (
        "POST",
        "/v1/customers/acme/merge",
        {"into": "x", "effective_at": "2026-11-01T00:00:00"},
        "effective_at",
    ),
    ("GET", "/v1/invoices?as_of=0.5", None, "as_of"),
    ("GET", "/v1/invoices?as_of=2026-11-01T00:00:00", None, "as_of"),
    ("GET", "/v1/customers/acme/usage?period=2026-10&as_of=1790000000", None, "as_of"),
    ("GET", "/v1/audit?until=2026-11-01T00:00:00", None, "until"),
    ("GET", "/v1/audit?since=0", None, "since"),
    ("GET", "/v1/customers/acme/usage?period=2026-10%0A", None, "period"),
    # batches
    ("POST", "/v1/usage/batch", {"events": [{}] * 5001}, "events"),
]

GRANT_REFUSED = [
    ({"customer_id": "a/b", "meters": ["*"]}, "customer_id"),
    ({"customer_id": "*", "meters": ["api\x00calls"]}, "meters"),
    ({"customer_id": "*", "meters": ["*"], "valid_from": 1790000000}, "valid_from"),
    ({"customer_id": "*", "meters": ["*"], "valid_until": "2027-01-01T00:00:00"}, "valid_until"),
    ({"customer_id": "*", "meters": ["m"] * 101}, "meters"),
]

RAW_REFUSED = [  # (path, raw body, field)
    ("/v1/usage", _raw_usage("1e400"), "quantity"),
    ("/v1/usage", _raw_usage("1e999999999"), "quantity"),
    ("/v1/usage", _raw_usage("1e-999999999"), "quantity"),
    ("/v1/usage", _raw_usage("1." + "0" * 100_000 + "1"), "quantity"),
    ("/v1/usage", _raw_usage("1" + "0" * 30), "quantity"),
    ("/v1/usage", _raw_usage("1", occurred_at="1791000000"), "occurred_at"),
    ("/v1/usage", _raw_usage("1", occurred_at="1791000000.5"), "occurred_at"),
    ("/v1/usage", b'{"a":' * 1000 + b"1" + b"}" * 1000, "body"),
    ("/v1/usage", b"[" * 33 + b"]" * 33, "body"),
    ("/v1/usage", b"[" * 200_000 + b"]" * 200_000, "body"),
    (
        "/v1/usage",
        _raw_usage("1", customer_id='"acme","customer_id":"globex"'),
        "customer_id",
    ),
    ("/v1/usage", _raw_usage("1", properties='{"a":1, "a" :2}'), "a"),
    (
        "/v1/usage/batch",
        b'{"events":[' + _raw_usage("1").replace(b'"meter"', b'"meter":"x","meter"') + b"]}",
        "meter",
    ),
]


@pytest.fixture
def api(settings, clock):
    with http(settings, clock) as (client, services):
        setup_acme(client)
        assert client.post("/v1/usage", json=event("seed", 5), headers=ADMIN).status_code == 202
        yield client, services


def _refusal(answer: Any, field: str) -> str | None:
    """What is wrong with an answer that should refuse naming `field`; None when right."""
    payload = answer.json()
    fields = [e["field"] for e in payload.get("errors", [])]
    if answer.status_code != 422 or not payload.get("detail"):
        return f"{answer.status_code} {str(payload)[:200]}"
    if not any(f == field or (f or "").startswith(field) for f in fields):
        return f"names {fields}, not {field}"
    if len(answer.content) > 2000:
        return "the refusal echoes the input"
    return None


def test_each_out_of_bounds_input_is_refused_naming_its_field_and_writes_nothing(api):
    client, services = api
    wrong = []
    for method, path, body, field in REFUSED:
        before = services.app.recorder.max_notification_id()
        answer = client.request(method, path, json=body, headers=ADMIN)
        problem = _refusal(answer, field)
        if problem:
            wrong.append((method, path, str(body)[:80], problem))
        if services.app.recorder.max_notification_id() != before:
            wrong.append((method, path, str(body)[:80], "wrote to the store"))
    assert wrong == []


def test_raw_json_numbers_depth_and_repeated_keys_are_refused_naming_the_field(api):
    client, services = api
    wrong = []
    for path, body, field in RAW_REFUSED:
        before = services.app.recorder.max_notification_id()
        answer = client.post(path, content=body, headers=JSON)
        problem = _refusal(answer, field)
        if problem:
            wrong.append((path, body[:80], problem))
        if services.app.recorder.max_notification_id() != before:
            wrong.append((path, body[:80], "wrote to the store"))
    assert wrong == []


def test_grants_hold_the_id_and_time_bounds(api):
    client, services = api
    assert (
        client.post("/v1/emitters", json={"emitter_id": "svc", "name": "S"}, headers=ADMIN)
    ).status_code == 201
    wrong = []
    for body, field in GRANT_REFUSED:
        before = services.app.recorder.max_notification_id()
        problem = _refusal(client.post("/v1/emitters/svc/grants", json=body, headers=ADMIN), field)
        if problem or services.app.recorder.max_notification_id() != before:
            wrong.append((str(body)[:80], problem))
    assert wrong == []


def test_composed_and_decomposed_names_cannot_become_two_customers(api):
    client, _ = api
    composed = client.post(
        "/v1/customers", json={"customer_id": "caf\u00e9", "name": "Café"}, headers=ADMIN
    )
    assert composed.status_code == 201
    decomposed = client.post(
        "/v1/customers", json={"customer_id": "cafe\u0301", "name": "Café"}, headers=ADMIN
    )
    assert decomposed.status_code == 422
    assert decomposed.json()["errors"][0]["field"] == "customer_id"
    assert client.get("/v1/customers/caf%C3%A9", headers=ADMIN).status_code == 200


def _usage_quantity(client: Any, customer_id: str) -> Decimal:
    answer = client.get(f"/v1/customers/{customer_id}/usage?period=2026-10", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    return sum((Decimal(i["quantity"]) for i in answer.json()["items"]), Decimal(0))


def _invoice_quantity(client: Any, customer_id: str) -> Decimal:
    listed = client.get(f"/v1/invoices?customer_id={customer_id}&period=2026-10", headers=ADMIN)
    invoice_id = listed.json()["items"][0]["invoice_id"]
    invoice = client.get(f"/v1/invoices/{invoice_id}", headers=ADMIN).json()
    return sum((Decimal(line["quantity"]) for line in invoice["lines"]), Decimal(0))


def test_a_batch_with_out_of_bounds_events_bills_the_good_ones_and_keeps_projections_moving(api):
    client, _ = api
    for customer_id in ("globex", "initech"):
        assert (
            client.post(
                "/v1/customers",
                json={"customer_id": customer_id, "name": customer_id},
                headers=ADMIN,
            ).status_code
            == 201
        )
        assert (
            client.put(
                f"/v1/customers/{customer_id}/subscription",
                json={"plan_id": "std", "effective_from": "2026-01"},
                headers=ADMIN,
            ).status_code
            == 200
        )
    good = [
        _raw_usage('"2.5"', event_id='"g1"'),
        _raw_usage("1e400", event_id='"bad-number"'),
        _raw_usage("3", event_id='"g2"', customer_id='"globex"'),
        _raw_usage('"1e999999999"', event_id='"bad-text"', customer_id='"globex"'),
        _raw_usage("1e-999999999", event_id='"bad-small"', customer_id='"initech"'),
        _raw_usage('"4"', event_id='"g3"', customer_id='"initech"'),
        _raw_usage('"1"', event_id='"bad-id/"', customer_id='"initech"'),
        _raw_usage('"1"', event_id='"bad-props"', properties='{"blob":"' + "x" * 5000 + '"}'),
        _raw_usage('"1"', event_id='"bad-time"', occurred_at='"2026-10-05T10:00:00.1234567Z"'),
    ]
    body = b'{"events":[' + b",".join(good) + b"]}"
    answer = client.post("/v1/usage/batch", content=body, headers=JSON)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [
        "accepted",
        "rejected",
        "accepted",
        "rejected",
        "rejected",
        "accepted",
        "rejected",
        "rejected",
        "rejected",
    ]
    assert [r["field"] for r in results if r["status"] == "rejected"] == [
        "quantity",
        "quantity",
        "quantity",
        "event_id",
        "properties.blob",
        "occurred_at",
    ]
    assert _usage_quantity(client, "acme") == Decimal("7.5")  # the seed's 5 and 2.5
    assert _usage_quantity(client, "globex") == Decimal(3)
    assert _usage_quantity(client, "initech") == Decimal(4)
    assert _invoice_quantity(client, "acme") == Decimal("7.5")
    assert _invoice_quantity(client, "globex") == Decimal(3)
    # the projections keep moving after the refusals
    later = client.post("/v1/usage", json=event("after", "0.5"), headers=ADMIN)
    assert later.status_code == 202
    assert _usage_quantity(client, "acme") == Decimal(8)


def test_a_batch_of_5000_events_within_bounds_is_accepted(api):
    client, _ = api
    events = [
        event(f"b{i}", "1.25", properties={"region": "eu", "n": i, "tags": ["a", "b"]})
        for i in range(bounds.MAX_BATCH_EVENTS)
    ]
    answer = client.post("/v1/usage/batch", json={"events": events}, headers=ADMIN)
    assert answer.status_code == 200
    assert {r["status"] for r in answer.json()["results"]} == {"accepted"}
    assert _usage_quantity(client, "acme") == Decimal(5) + Decimal("1.25") * 5000


def test_times_with_an_offset_and_microseconds_are_read_exactly(api):
    client, services = api
    answer = client.post(
        "/v1/usage",
        json=event("micro", occurred_at="2026-10-05T12:00:00.123456+02:00"),
        headers=ADMIN,
    )
    assert answer.status_code == 202
    _, record = services.app.recorded_usage("acme", "micro")
    assert record[4] == "2026-10-05T10:00:00.123456Z"
    for as_of in ("2026-11-24T12:00:00Z", "2026-11-24T13:00:00%2B01:00"):
        assert client.get(f"/v1/invoices?as_of={as_of}", headers=ADMIN).status_code == 200
    assert (
        client.get(
            "/v1/audit?since=2026-01-01T00:00:00Z&until=2027-01-01T00:00:00Z", headers=ADMIN
        ).status_code
        == 200
    )


# Any quantity text is either refused or kept exactly ----------------------------------------------

quantity_texts = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=18).map(str),
    st.from_regex(r"\A-?[0-9]{1,40}(\.[0-9]{1,25})?([eE][-+]?[0-9]{1,10})?\Z"),
    st.text(alphabet="0123456789.-+eE _\u0661 ", max_size=30),
)


def _either_refused_or_exact(check: Any, text: str) -> None:
    try:
        number = check(text)
    except InvalidInput as error:
        assert error.field == "quantity"
        return
    assert number == Decimal(text)


@settings(max_examples=500, deadline=None)
@given(text=quantity_texts)
@example("1e999999999")
@example("1e-999999999")
@example("9" * 1_000_000)
@example("0e999999999")
def test_any_quantity_text_is_refused_or_read_exactly(text):
    _either_refused_or_exact(lambda t: bounds.parse_decimal(t, "quantity", signed=True), text)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=quantity_texts, as_number=st.booleans())
@example(text="1e999999999", as_number=True)
@example(text="1e-999999999", as_number=True)
@example(text="1e999999999", as_number=False)
@example(text="0.000000000000000001", as_number=True)
def test_any_quantity_sent_is_refused_with_422_or_stored_exactly(api, text, as_number):
    client, services = api
    event_id = f"q{next(_ids)}"
    number_syntax = re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?", text)
    if as_number and number_syntax:
        body = _raw_usage(text, event_id=json.dumps(event_id))
    else:
        body = json.dumps(event(event_id, text)).encode()
    before = services.app.recorder.max_notification_id()
    answer = client.post("/v1/usage", content=body, headers=JSON)
    if answer.status_code == 422:
        assert [e["field"] for e in answer.json()["errors"]] == ["quantity"]
        assert services.app.recorder.max_notification_id() == before
        return
    assert answer.status_code == 202, answer.text
    row, record = services.app.recorded_usage("acme", event_id)
    assert Decimal(row.quantity) == Decimal(text) == Decimal(record[3])


# The README lists every bound -------------------------------------------------------------------


def test_the_readme_lists_every_bound_with_its_value():
    readme = (ROOT / "README.md").read_text()
    section = " ".join(readme.split("### Input bounds", 1)[1].split("\n## ", 1)[0].split())
    missing = []
    for name in dir(bounds):
        value = getattr(bounds, name)
        if not name.startswith("MAX_") or not isinstance(value, int):
            continue
        shown = {str(value), f"{value:,}", f"{value // 1024} KiB", f"{value // 1024 // 1024} MiB"}
        # the value is stated just before the constant's name, e.g. "at most 200 (`MAX_...`)"
        near = [section[max(0, m.start() - 90) : m.end() + 30] for m in re.finditer(name, section)]
        if not any(
            re.search(rf"(?<![0-9,]){re.escape(s)}(?![0-9]|,[0-9])", text)
            for text in near
            for s in shown
        ):
            missing.append((name, value))
    assert missing == []
