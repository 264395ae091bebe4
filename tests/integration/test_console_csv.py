"""The invoices CSV: every row matching the page's filters, in the page's order (not only the
page shown), read in chunks; amounts as the invoices show them. Through the real HTTP
application in-process, on both stores, with a chunk smaller than the page to cross chunks."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal
from typing import Any

import pytest

from api.console import pages
from tests.api_support import ADMIN, event, http, setup_acme

# quantities per customer: equal totals (ties broken by customer, period, revision) and a 0
QUANTITIES = {"c1": "10", "c2": "250.5", "c3": "10", "c4": "0", "c5": "3333", "c6": "250.5"}


def _sign_in(client: Any) -> None:
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token
    answer = client.post(
        "/login",
        data={"key": "test-admin-key", "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert answer.status_code == 303


def _page_ids(client: Any, query: str) -> list[str]:
    """The invoice ids the invoices page shows, page after page, for `query`."""
    shown: list[str] = []
    for number in range(1, 100):
        html = client.get(f"/invoices?{query}&size=2&page={number}").text
        ids = re.findall(r'<td><a href="/invoices/(inv_[0-9a-f]+)\?revision=\d+">', html)
        if not ids:
            return shown
        shown += ids
    raise AssertionError("too many pages")


def _csv(client: Any, query: str) -> list[dict[str, str]]:
    answer = client.get(f"/invoices.csv?{query}")
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(answer.text)))


@pytest.fixture
def client(settings: Any, clock: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(pages, "CSV_CHUNK", 2)
    with http(settings, clock) as (client, _):
        setup_acme(client)
        for customer, quantity in QUANTITIES.items():
            made = client.post(
                "/v1/customers", json={"customer_id": customer, "name": customer}, headers=ADMIN
            )
            assert made.status_code == 201
            subscribed = client.put(
                f"/v1/customers/{customer}/subscription",
                headers=ADMIN,
                json={"plan_id": "std", "effective_from": "2026-01-01T00:00:00Z"},
            )
            assert subscribed.status_code == 200
            for period_day, event_id in (("2026-10-05", "o"), ("2026-11-05", "n")):
                sent = client.post(
                    "/v1/usage",
                    headers=ADMIN,
                    json=event(
                        f"{customer}-{event_id}",
                        quantity,
                        occurred_at=f"{period_day}T10:00:00Z",
                        customer_id=customer,
                    ),
                )
                assert sent.status_code < 300, sent.text
        for customer in ("c2", "c5", "c6"):  # issued October invoices; the others stay drafts
            closed = client.post(f"/v1/customers/{customer}/periods/2026-10/close", headers=ADMIN)
            assert closed.status_code == 200, closed.text
        _sign_in(client)
        yield client


@pytest.mark.parametrize(
    "query",
    [
        "sort=total&dir=desc",
        "sort=issued_at&dir=asc",
        "sort=customer&dir=desc&period=2026-10",
        "sort=total&dir=asc&status=draft",
        "sort=period&dir=asc&customer_id=c2",
    ],
)
def test_the_csv_has_every_matching_row_in_the_page_order(client, query):
    rows = _csv(client, query)
    shown = _page_ids(client, query)
    assert len(shown) > 2 or "customer_id" in query  # more rows than one page of 2
    assert [r["invoice_id"] for r in rows] == shown
    assert list(rows[0]) == list(pages.CSV_COLUMNS)
    # each row's amount is the invoice's own, to the cent, and the totals agree
    api: dict[str, Any] = {}
    for row in rows:
        invoice = client.get(
            f"/v1/invoices/{row['invoice_id']}?revision={row['revision']}", headers=ADMIN
        ).json()
        assert row["total"] == invoice["total"] and row["status"] == invoice["status"]
        api[row["invoice_id"]] = invoice
    total = sum((Decimal(r["total"]) for r in rows), Decimal(0))
    assert total == sum((Decimal(i["total"]) for i in api.values()), Decimal(0))
    # filters applied
    if "period=2026-10" in query:
        assert {r["period"] for r in rows} == {"2026-10"} and len(rows) == 6
    if "status=draft" in query:
        assert {r["status"] for r in rows} == {"draft"} and len(rows) == 9
    if "customer_id=c2" in query:
        assert {r["customer_id"] for r in rows} == {"c2"}


def test_the_csv_has_all_rows_and_the_sum_of_the_api_listing(client):
    """Every invoice's latest revision: 12 invoices (6 customers with usage, 2 periods)."""
    rows = _csv(client, "")
    listed = client.get("/v1/invoices?limit=100", headers=ADMIN).json()["items"]
    latest = {i["invoice_id"]: i for i in listed}
    assert len(rows) == len({r["invoice_id"] for r in rows}) == len(latest) == 12
    assert sum((Decimal(r["total"]) for r in rows), Decimal(0)) == sum(
        (Decimal(i["total"]) for i in latest.values()), Decimal(0)
    )
    refused = client.get("/invoices.csv?status=paid")
    assert refused.status_code == 422 and "status" in refused.text
