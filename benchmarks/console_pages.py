"""Console page speed: the server time of every console page at 10,000 customers and
1,000,000 usage events.

On a fresh store (`--store sqlite|postgres`): one plan with two meters, `--customers`
customers subscribed to it, `--events` usage events recorded through the application in calls
of `--batch` events (a hundred customers per call, so `--batch / 100` records per stored event;
a tenth of them in last month, the rest spread over this month's days), last month closed for
a tenth of the customers (issued invoices), then the projections caught up. Every page is then
requested `--requests` times through the real HTTP application in-process (litestar's
TestClient, signed in as the bootstrap admin), rotating over variants (search, sort, paging,
filters, random customers and invoices); every answer must be 200. Printed per page: p50,
p95, p99 and max in ms, and p95 over the same-run baseline: `GET /login` through the same
client (routing, middleware, a rendered template, no store read). A bare `SELECT 1` round trip
through the read models' store is printed beside it. Targets (issue 15): every page p95 under
100 ms, the overview under 200 ms.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from litestar.testing import TestClient

from api.bootstrap import Services, build
from api.http.app import create_app
from benchmarks.common import log, percentile, print_report, scratch_store
from billing_domain.identity import SYSTEM
from billing_domain.settings import Settings
from billing_domain.usage import UsageInput

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
THIS_MONTH = datetime(2026, 11, 1, tzinfo=UTC)
LAST_MONTH = datetime(2026, 10, 1, tzinfo=UTC)
ADMIN_KEY = "bench-console-admin-key"
PLAN = [
    {
        "meter": "api_calls",
        "aggregation": "sum",
        "model": "graduated",
        "tiers": [
            {"up_to": 1000, "unit_amount": "0.001"},
            {"up_to": None, "unit_amount": "0.0005"},
        ],
    },
    {"meter": "storage_gb", "aggregation": "max", "model": "per_unit", "unit_amount": "0.1"},
]


def load(services: Services, customers: int, events: int, batch: int) -> list[str]:
    app = services.app
    app.publish_plan("metered", "USD", PLAN)
    ids = [f"c{n:06d}" for n in range(customers)]
    began = time.perf_counter()
    for customer in ids:
        app.open_customer(customer, f"Customer {customer} Ltd")
        app.subscribe(customer, "metered", "2026-01")
    log(f"  {customers:,} customers in {time.perf_counter() - began:.0f} s")
    began = time.perf_counter()
    per_customer = max(batch // 100, 1)
    draw = random.Random(15)
    n = 0
    c = 0
    while n < events:
        size = min(batch, events - n)
        items = []
        for i in range(size):
            if i % per_customer == 0:
                customer = ids[c % len(ids)]
                c += 1
            n += 1
            meter = "storage_gb" if draw.random() < 0.2 else "api_calls"
            if draw.random() < 0.1:  # a tenth in last month
                when = LAST_MONTH + timedelta(seconds=(n * 7919) % (30 * 86400))
            else:
                when = THIS_MONTH + timedelta(seconds=(n * 7919) % (23 * 86400))
            items.append(UsageInput(f"e{n}", customer, meter, Decimal(n % 7 + 1), when))
        results = app.record_usage_from([(item, SYSTEM) for item in items])
        assert all(r.status == "accepted" for r in results)
        if n % (batch * 100) == 0:
            log(f"  {n:,} events ({n / (time.perf_counter() - began):,.0f}/s)")
    log(f"  {events:,} events in {time.perf_counter() - began:.0f} s")
    began = time.perf_counter()
    closed = ids[: max(len(ids) // 10, 1)]
    for customer in closed:
        app.close_period(customer, "2026-10")
    log(f"  2026-10 closed for {len(closed):,} customers in {time.perf_counter() - began:.0f} s")
    return ids


def sign_in(client: TestClient[Any]) -> None:
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token
    answer = client.post(
        "/login", data={"key": ADMIN_KEY, "csrf_token": token.group(1)}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text[:300]


def pages(client: TestClient[Any], ids: list[str]) -> dict[str, Callable[[int], str]]:
    """Page name -> the URL of its i-th request."""
    listed = client.get("/v1/invoices?limit=1000", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    invoices = [i["invoice_id"] for i in listed.json()["items"]]
    assert invoices, listed.text[:300]
    pick = random.Random(15)
    customers = [pick.choice(ids) for _ in range(1000)]
    chosen = [pick.choice(invoices) for _ in range(1000)]
    pages_of = max(len(ids) // 50, 1)
    overview = [
        "/",
        "/?sort=amount&dir=desc",
        "/?sort=meter:api_calls&dir=desc",
        "/?sort=last_event&dir=desc",
        "/?sort=name",
        "/?q=c0012",
        "/?q=customer+c00777",
        f"/?page={pages_of // 2}",
        f"/?page={pages_of}&sort=currency",
        "/?size=500",
    ]
    invoice_lists = [
        "/invoices",
        "/invoices?status=issued",
        "/invoices?period=2026-10&sort=total&dir=desc",
        "/invoices?status=draft&sort=issued_at",
        f"/invoices?page={max(len(ids) // 100, 1)}",
        "/invoices?sort=total&dir=desc&size=500",
    ]
    audit = ["/audit", "/audit?action=customer.opened", "/audit?actor=system", "/audit?action=x.*"]
    return {
        "overview": lambda i: overview[i % len(overview)],
        "customer": lambda i: f"/customers/{customers[i % len(customers)]}",
        "invoices": lambda i: invoice_lists[i % len(invoice_lists)],
        "invoice": lambda i: f"/invoices/{chosen[i % len(chosen)]}",
        "line drill-down": lambda i: f"/invoices/{chosen[i % len(chosen)]}/lines/0",
        "reconciliation": lambda i: "/reconciliation",
        "audit": lambda i: audit[i % len(audit)],
        "projections": lambda i: "/projections",
        "identities": lambda i: "/identities",
    }


def timed(client: TestClient[Any], urls: Callable[[int], str], requests: int) -> list[float]:
    client.get(urls(0))  # warm
    took = []
    for i in range(requests):
        url = urls(i)
        began = time.perf_counter()
        answer = client.get(url)
        took.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
        assert "</main>" in answer.text or 'id="lineage-' in answer.text, (url, answer.text[:300])
    return took


def row(name: str, took: list[float], baseline_p95: float, target: float) -> dict[str, Any]:
    p95 = percentile(took, 95)
    return {
        "page": name,
        "requests": len(took),
        "p50_ms": percentile(took, 50),
        "p95_ms": p95,
        "p99_ms": percentile(took, 99),
        "max_ms": max(took),
        "p95_over_baseline": p95 / baseline_p95,
        "target_p95_ms": target,
        "met": "yes" if p95 < target else "NO",
    }


def measure(args: argparse.Namespace) -> None:
    with scratch_store(args.store) as url:
        log(f"{args.store}: {args.customers:,} customers, {args.events:,} events")
        services = build(Settings(database_url=url, admin_key=ADMIN_KEY), clock=lambda: NOW)
        try:
            ids = load(services, args.customers, args.events, args.batch)
            began = time.perf_counter()
            services.read_models.catch_up()
            log(f"  projections caught up in {time.perf_counter() - began:.0f} s")
            store = services.read_models.store
            select_1 = []
            for _ in range(args.requests):
                began = time.perf_counter()
                with store.read() as cur:
                    cur.one("SELECT 1 AS one")
                select_1.append((time.perf_counter() - began) * 1000)
            with TestClient(create_app(services, background=False)) as client:
                sign_in(client)
                baseline = timed(client, lambda i: "/login", args.requests)
                base_p95 = percentile(baseline, 95)
                rows = [row("baseline: GET /login", baseline, base_p95, 100.0)]
                for name, urls in pages(client, ids).items():
                    log(f"  {name}: {args.requests} requests")
                    took = timed(client, urls, args.requests)
                    rows.append(row(name, took, base_p95, 200.0 if name == "overview" else 100.0))
                    log(f"    p95 {rows[-1]['p95_ms']:.1f} ms")
        finally:
            services.close()
    print_report(
        "Console pages, server time through the HTTP app in-process",
        {"pages": rows},
        {
            "store": args.store,
            "customers": args.customers,
            "events": args.events,
            "requests_per_page": args.requests,
            "select_1_p50_ms": f"{percentile(select_1, 50):.3f}",
            "select_1_p95_ms": f"{percentile(select_1, 95):.3f}",
        },
        as_json=args.json,
        formats={
            "p50_ms": ",.1f",
            "p95_ms": ",.1f",
            "p99_ms": ",.1f",
            "max_ms": ",.1f",
            "p95_over_baseline": ",.1f",
            "target_p95_ms": ",.0f",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per recorded call")
    parser.add_argument("--requests", type=int, default=200, help="requests per page")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # no log line per request: it would be timed too
    measure(args)


if __name__ == "__main__":
    main()
