"""The console overview's table: names (the latest, after a rename), search by id or name,
sort by name, amount and customer, paging; through the HTTP application on both stores."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.api_support import ADMIN, event, http, setup_acme

# customer -> (name, quantity this period)
CUSTOMERS = {"b1": ("Zeta Labs", "5"), "b2": ("alpha works", "700"), "b3": ("Mid Co", "40")}


@pytest.fixture
def client(settings: Any, clock: Any) -> Any:
    with http(settings, clock) as (client, _):
        setup_acme(client)
        for customer, (name, quantity) in CUSTOMERS.items():
            opened = client.post(
                "/v1/customers", json={"customer_id": customer, "name": "old"}, headers=ADMIN
            )
            assert opened.status_code == 201
            renamed = client.patch(f"/v1/customers/{customer}", json={"name": name}, headers=ADMIN)
            assert renamed.status_code == 200, renamed.text
            subscribed = client.put(
                f"/v1/customers/{customer}/subscription",
                headers=ADMIN,
                json={"plan_id": "std", "effective_from": "2026-01-01T00:00:00Z"},
            )
            assert subscribed.status_code == 200
            sent = client.post(
                "/v1/usage",
                headers=ADMIN,
                json=event(f"{customer}-1", quantity, "2026-11-05T10:00:00Z", customer_id=customer),
            )
            assert sent.status_code < 300, sent.text
        form = client.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token
        signed = client.post(
            "/login",
            data={"key": "test-admin-key", "csrf_token": token.group(1)},
            follow_redirects=False,
        )
        assert signed.status_code == 303
        yield client


def _rows(client: Any, query: str) -> list[tuple[str, str]]:
    html = client.get(f"/?{query}").text
    body = html.split('<table class="data" id="overview">', 1)[-1]
    return re.findall(
        r'<tr>\s*<td><a href="/customers/[^"]+">([^<]+)</a></td>\s*<td>([^<]*)</td>', body
    )


def test_names_search_and_sorts(client):
    rows = _rows(client, "sort=customer")
    assert rows == [("acme", "Acme"), ("b1", "Zeta Labs"), ("b2", "alpha works"), ("b3", "Mid Co")]
    assert [c for c, _ in _rows(client, "sort=customer&dir=desc")] == ["b3", "b2", "b1", "acme"]
    # by name, any case; the latest name counts (each was renamed from "old")
    assert [n for _, n in _rows(client, "sort=name")] == [
        "Acme",
        "alpha works",
        "Mid Co",
        "Zeta Labs",
    ]
    # amounts: 700 calls > 40 > 5; acme has no usage (no draft), so last
    assert [c for c, _ in _rows(client, "sort=amount&dir=desc")] == ["b2", "b3", "b1", "acme"]
    # the same received time (a fixed clock): ties by customer; no event (acme) last
    assert [c for c, _ in _rows(client, "sort=last_event&dir=desc")] == ["b3", "b2", "b1", "acme"]
    assert [c for c, _ in _rows(client, "sort=last_event&q=b")] == ["b1", "b2", "b3"]
    assert _rows(client, "q=ALPHA") == [("b2", "alpha works")]
    assert _rows(client, "q=b3") == [("b3", "Mid Co")]
    assert _rows(client, "q=old") == []  # a former name is not searched
    assert _rows(client, "sort=customer&size=2&page=2") == [("b2", "alpha works"), ("b3", "Mid Co")]
