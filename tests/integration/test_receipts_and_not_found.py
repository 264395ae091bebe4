"""A retried event answers with its first receipt; an unknown resource in a path is 404."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api_support import ADMIN, event, http, setup_acme


@pytest.fixture
def api(settings: Any, clock: Any) -> Iterator[Any]:
    with http(settings, clock) as pair:
        yield pair


def test_a_retried_event_answers_with_its_first_receipt(api: Any, clock: Any) -> None:
    client, _ = api
    setup_acme(client)
    first = client.post("/v1/usage", json=event("r-1", 5), headers=ADMIN).json()
    client.post("/v1/customers/acme/periods/2026-10/close", headers=ADMIN)
    clock.advance(hours=3)
    retry = client.post("/v1/usage", json=event("r-1", 5), headers=ADMIN)
    assert retry.status_code == 202
    assert retry.json() == {**first, "status": "duplicate"}
    assert retry.json()["treatment"] == "on_time"  # as first received, though now closed


def test_a_late_event_retried_keeps_its_carried_forward_receipt(api: Any, clock: Any) -> None:
    client, _ = api
    setup_acme(client)
    client.post("/v1/customers/acme/periods/2026-10/close", headers=ADMIN)
    late = client.post("/v1/usage", json=event("late-1", 2), headers=ADMIN).json()
    assert late["treatment"] == "carried_forward"
    clock.advance(minutes=30)
    again = client.post("/v1/usage", json=event("late-1", 2), headers=ADMIN).json()
    assert again == {**late, "status": "duplicate"}


def test_a_retried_batch_answers_with_the_first_receipts_in_one_read(api: Any, clock: Any) -> None:
    client, services = api
    setup_acme(client)
    events = [event(f"b-{i}", 1, f"2026-{10 + i % 2}-0{1 + i % 9}T10:00:00Z") for i in range(40)]
    first = client.post("/v1/usage/batch", json={"events": events}, headers=ADMIN).json()
    client.post("/v1/customers/acme/periods/2026-10/close", headers=ADMIN)
    clock.advance(hours=1)
    reads: list[Any] = []
    loads: list[Any] = []
    events_at, get = services.app.key_store.events_at, services.app.events.get

    def counted(places: Any) -> Any:
        reads.append(list(places))
        return events_at(places)

    def counted_get(*args: Any, **kwargs: Any) -> Any:
        if "lte" in kwargs:  # a read of given versions, not an aggregate's load
            loads.append(args[0])
        return get(*args, **kwargs)

    services.app.key_store.events_at = counted
    services.app.events.get = counted_get
    again = client.post("/v1/usage/batch", json={"events": events}, headers=ADMIN).json()
    assert [r["status"] for r in again["results"]] == ["duplicate"] * 40
    assert [{**r, "status": None} for r in again["results"]] == [
        {**r, "status": None} for r in first["results"]
    ]
    # The first copies are in two stored events (one per period): both read in one read.
    assert [len(places) for places in reads] == [2] and loads == []


NOBODY_PATHS = [
    ("get", "/v1/customers/nobody", None),
    ("patch", "/v1/customers/nobody", {"name": "No One"}),
    (
        "put",
        "/v1/customers/nobody/subscription",
        {"plan_id": "std", "effective_from": "2026-01-01T00:00:00Z"},
    ),
    (
        "post",
        "/v1/customers/nobody/merge",
        {"into": "acme", "effective_at": "2026-10-01T00:00:00Z"},
    ),
    ("post", "/v1/customers/nobody/periods/2026-10/close", None),
    ("get", "/v1/customers/nobody/usage?period=2026-10", None),
    (
        "post",
        "/v1/customers/nobody/adjustments",
        {
            "adjustment_id": "adj-1",
            "meter": "api_calls",
            "quantity": "1",
            "occurred_at": "2026-10-05T10:00:00Z",
            "reason": "manual",
        },
    ),
    (
        "post",
        "/v1/customers/nobody/usage/req-1/compensations",
        {"compensation_id": "c-1", "reason": "refund"},
    ),
    ("get", "/v1/plans/nobody", None),
    ("get", "/v1/invoices/nobody", None),
    ("get", "/v1/invoices/nobody/revisions", None),
    ("get", "/v1/invoices/nobody/lineage?line=0", None),
    ("delete", "/v1/keys/nobody", None),
    (
        "post",
        "/v1/emitters/nobody/grants",
        {"customer_id": "acme", "meters": ["api_calls"]},
    ),
    ("delete", "/v1/emitters/nobody/grants/g-1", None),
]


@pytest.mark.parametrize(
    ("method", "path", "body"), NOBODY_PATHS, ids=[f"{p[0]} {p[1]}" for p in NOBODY_PATHS]
)
def test_an_unknown_resource_in_a_path_is_not_found(
    api: Any, method: str, path: str, body: Any
) -> None:
    client, _ = api
    setup_acme(client)
    kwargs = {"headers": ADMIN} | ({"json": body} if body is not None else {})
    answer = client.request(method.upper(), path, **kwargs)
    assert answer.status_code == 404, answer.text


def test_an_unknown_customer_or_plan_in_a_body_is_bad_input_naming_the_field(api: Any) -> None:
    client, _ = api
    setup_acme(client)
    plan = client.put(
        "/v1/customers/acme/subscription",
        json={"plan_id": "nobody", "effective_from": "2026-12-01T00:00:00Z"},
        headers=ADMIN,
    )
    assert (plan.status_code, plan.json()["errors"][0]["field"]) == (422, "plan_id")
    into = client.post(
        "/v1/customers/acme/merge",
        json={"into": "nobody", "effective_at": "2026-10-01T00:00:00Z"},
        headers=ADMIN,
    )
    assert (into.status_code, into.json()["errors"][0]["field"]) == (422, "into")
    used = client.post("/v1/usage", json=event("u-1", customer_id="nobody"), headers=ADMIN)
    assert (used.status_code, used.json()["errors"][0]["field"]) == (422, "customer_id")
