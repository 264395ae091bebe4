"""Finance reads projections: every figure equals the aggregates' replay, on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from api.bootstrap import Services, build
from billing_domain.identity import Principal
from billing_domain.ids import invoice_id
from billing_domain.settings import Settings
from projections.errors import InvalidCursor
from tests.conftest import Clock
from tests.scenario import at, customer, usage

Figures = dict[str, Any]


@pytest.fixture
def services(settings: Settings, clock: Clock) -> Iterator[Services]:
    built = build(settings, clock=clock)
    yield built
    built.close()


def same_invoice(read: Figures | None, replay: Figures) -> None:
    assert read is not None
    for field in (
        "invoice_id",
        "customer_id",
        "period",
        "revision",
        "status",
        "currency",
        "lines",
        "total",
        "lineage_digest",
    ):
        assert read[field] == replay[field], field


def a_month_of_business(services: Services, clock: Clock) -> None:
    """Two customers, usage in October (closed, then late usage) and November (open)."""
    app = services.app
    customer(app, "acme")
    customer(app, "globex", policy="restate")
    app.record_usage(
        [
            usage("e1", 700, at(3)),
            usage("e2", 500, at(4)),
            usage("s1", 12, at(5), meter="storage_gb"),
            usage("g1", 40, at(6), customer_id="globex"),
        ]
    )
    app.record_usage(
        [
            usage("e3", 30, at(20, 11)),
            usage("e4", 2, at(21, 11)),
            usage("s2", 3, at(21, 11), meter="storage_gb"),
        ]
    )
    app.compensate("acme", "e2", "c1", Decimal(100), "downstream step failed")
    app.adjust("acme", "a1", "api_calls", Decimal(-5), at(10), "goodwill")
    app.close_period("acme", "2026-10")
    app.close_period("globex", "2026-10")
    clock.advance(hours=1)
    app.record_usage(
        [usage("late1", 9, at(30)), usage("late2", 11, at(29, hour=3), customer_id="globex")]
    )
    app.compensate("acme", "e4", "c2", None, "duplicate sent by the product")


def test_each_read_model_equals_the_aggregate_replay(services: Services, clock: Clock) -> None:
    a_month_of_business(services, clock)
    models = services.read_models
    position = models.catch_up()
    assert position == services.app.recorder.max_notification_id()
    for customer_id, period in (("acme", "2026-10"), ("acme", "2026-11"), ("globex", "2026-10")):
        replay = services.app.invoice(customer_id, period)
        same_invoice(models.invoice(invoice_id(customer_id, period)), replay)
    usage_now = models.usage("acme", "2026-11")
    assert usage_now["lag"] == 0
    draft = services.app.invoice("acme", "2026-11")
    by_meter = {item["meter"]: item for item in usage_now["items"]}
    for line in draft["lines"]:
        if line["kind"] == "usage":
            assert by_meter[line["meter"]]["quantity"] == line["quantity"]
            assert by_meter[line["meter"]]["amount"] == line["amount"]


def test_invoices_list_revisions_and_statuses(services: Services, clock: Clock) -> None:
    a_month_of_business(services, clock)
    models = services.read_models
    models.catch_up()
    listed = models.invoices(customer_id="globex")["items"]
    assert [(i["period"], i["revision"], i["status"]) for i in listed] == [
        ("2026-10", 1, "superseded"),
        ("2026-10", 2, "issued"),
    ]
    assert [(i["period"], i["status"]) for i in models.invoices(customer_id="acme")["items"]] == [
        ("2026-10", "issued"),
        ("2026-11", "draft"),
    ]
    revisions = models.revisions(invoice_id("globex", "2026-10"))
    replay = [services.app.invoice("globex", "2026-10", revision=n) for n in (1, 2)]
    assert [r["total"] for r in revisions] == [replay[0]["total"], replay[1]["total"]]
    assert revisions[1]["delta"] == str(Decimal(replay[1]["total"]) - Decimal(replay[0]["total"]))
    page = models.invoices(limit=2)
    rest = models.invoices(limit=10, cursor=page["next_cursor"])
    assert len(page["items"]) + len(rest["items"]) == len(models.invoices()["items"]) == 4
    assert rest["next_cursor"] is None
    assert models.invoice("inv_unknown") is None
    for forged in ("not-base64!", page["next_cursor"][:-4], "WzEsMl0="):
        with pytest.raises(InvalidCursor):
            models.invoices(cursor=forged)


def test_lineage_names_every_source_record(services: Services, clock: Clock) -> None:
    a_month_of_business(services, clock)
    models = services.read_models
    models.catch_up()
    october = invoice_id("acme", "2026-10")
    first = models.lineage(october, 0, limit=2)
    rest = models.lineage(october, 0, cursor=first["next_cursor"], limit=10)
    records = first["items"] + rest["items"]
    assert [(r["kind"], r["id"], r["quantity"]) for r in records] == [
        ("usage", "e1", "700"),
        ("usage", "e2", "500"),
        ("compensation", "c1", "-100"),
        ("adjustment", "a1", "-5"),
    ]
    line = services.app.invoice("acme", "2026-10")["lines"][0]
    assert sum(Decimal(r["quantity"]) for r in records) == Decimal(line["quantity"])
    assert records[0]["emitter"] == "system" and records[0]["received_at"]
    november = services.app.invoice("acme", "2026-11")
    carried = next(i for i, ln in enumerate(november["lines"]) if ln["kind"] == "carried_forward")
    late = models.lineage(invoice_id("acme", "2026-11"), carried)["items"]
    assert [(r["kind"], r["id"], r["quantity"]) for r in late] == [("usage", "late1", "9")]
    assert models.lineage(october, 99) is None


def test_audit_log_names_who_did_what(services: Services, clock: Clock) -> None:
    a_month_of_business(services, clock)
    key_id, _ = services.app.create_key("finance", "finance laptop")
    services.app.revoke_key(key_id)
    models = services.read_models
    models.catch_up()
    actions = [e["action"] for e in models.audit(limit=1000)["items"]]
    for expected in (
        "customer.opened",
        "plan.published",
        "subscription.changed",
        "usage.compensated",
        "usage.adjusted",
        "period.closed",
        "period.restated",
        "key.created",
        "key.revoked",
    ):
        assert expected in actions
    page = models.audit(limit=3)
    assert len(page["items"]) == 3 and page["next_cursor"]
    assert models.audit(actor="system/-")["items"]
    closes = [e for e in models.audit(limit=1000)["items"] if e["action"] == "period.closed"]
    assert {e["subject"] for e in closes} == {"period:acme/2026-10", "period:globex/2026-10"}
    # Facts without a business time (keys, customers) carry the wall-clock recording time,
    # which the scenario's hand-moved clock does not govern; compare the dated ones.
    late = models.audit(since=clock.now)["items"]
    assert [e["action"] for e in late if (e["subject"] or "").startswith("period:")] == [
        "period.restated",
        "usage.compensated",
    ]


def test_refusals_and_conflicts_are_in_the_audit_log(services: Services, clock: Clock) -> None:
    app = services.app
    customer(app, "acme")
    app.register_emitter("meter-svc", "Meter service")
    app.create_key("emitter", "meter key", "meter-svc")
    principal = Principal(emitter="meter-svc", key_id="k1", role="emitter")
    app.record_usage([usage("e1", 1, at(3))], principal=principal)
    app.record_usage([usage("e2", 1, at(3))])
    app.record_usage([usage("e2", 2, at(3))])
    services.read_models.catch_up()
    entries = services.read_models.audit(since=clock.now - timedelta(minutes=1))["items"]
    refused = [e for e in entries if e["action"] == "usage.ingest"]
    assert refused and refused[0]["actor"] == "meter-svc/k1"
    assert refused[0]["detail"]["event_id"] == "e1"
    assert [e["detail"]["event_id"] for e in entries if e["action"] == "usage.conflict"] == ["e2"]


SEATS_PLAN = [
    {
        "meter": "active_users",
        "aggregation": "unique_count",
        "field": "user",
        "model": "per_unit",
        "unit_amount": "3",
    },
    {
        "meter": "peak_gb",
        "aggregation": "max",
        "model": "volume",
        "tiers": [{"up_to": 10, "unit_amount": "1"}, {"up_to": None, "unit_amount": "0.5"}],
    },
    {
        "meter": "jobs",
        "aggregation": "count",
        "model": "package",
        "package_size": 2,
        "package_amount": "5",
    },
]


def test_unique_max_and_count_meters_after_compensations(services: Services) -> None:
    app, models = services.app, services.read_models
    customer(app, "acme", plan="seats", charges=SEATS_PLAN)
    app.record_usage(
        [
            usage("u1", 1, at(2), meter="active_users", user="ann"),
            usage("u2", 1, at(3), meter="active_users", user="bob"),
            usage("u3", 1, at(4), meter="active_users", user="ann"),
            usage("p1", 14, at(2), meter="peak_gb"),
            usage("p2", 9, at(3), meter="peak_gb"),
            usage("j1", 1, at(2), meter="jobs"),
            usage("j2", 1, at(2), meter="jobs"),
            usage("j3", 1, at(2), meter="jobs"),
        ]
    )
    app.compensate("acme", "u2", "c-bob", None, "test user")
    app.compensate("acme", "p1", "c-peak", Decimal(6), "double-counted volume")
    app.compensate("acme", "j3", "c-job", None, "job never ran")
    models.catch_up()
    replay = app.invoice("acme", "2026-10")
    same_invoice(models.invoice(invoice_id("acme", "2026-10")), replay)
    assert [
        (i["meter"], i["quantity"], i["amount"]) for i in models.usage("acme", "2026-10")["items"]
    ] == [("active_users", "1", "3.00"), ("peak_gb", "9", "9.00"), ("jobs", "2", "5.00")]
