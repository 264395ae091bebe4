"""What a closed period's invoice says: priced by every model to the cent, digested as a
Merkle tree anyone can recompute, and the same after a snapshot or an old stored event."""

from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import Repository
from eventsourcing.persistence import StoredEvent

from billing_domain import merkle
from billing_domain.application import BillingApplication
from billing_domain.ids import customer_uuid, period_uuid
from billing_domain.period import BillingPeriod
from billing_domain.verification import adjustment_hash, compensation_hash, usage_hash
from tests.conftest import Clock
from tests.unit.stories import at, billed, customer, usage

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

TIERED: list[dict[str, Any]] = [
    {
        "meter": "api_calls",
        "aggregation": "sum",
        "model": "graduated",
        "tiers": [
            {"up_to": 1000, "unit_amount": "0.01"},
            {"up_to": 10000, "unit_amount": "0.008", "flat_amount": "5"},
            {"up_to": None, "unit_amount": "0.005", "flat_amount": "20"},
        ],
    },
    {
        "meter": "seats",
        "aggregation": "max",
        "model": "volume",
        "tiers": [
            {"up_to": 10, "unit_amount": "12"},
            {"up_to": None, "unit_amount": "9", "flat_amount": "50"},
        ],
    },
    {
        "meter": "sms",
        "aggregation": "count",
        "model": "package",
        "package_size": 100,
        "package_amount": "4.50",
        "included_quantity": "50",
    },
]


def test_a_closed_period_is_priced_by_graduated_volume_and_package_charges(
    app: BillingApplication,
) -> None:
    customer(app, plan="tiered", charges=TIERED)
    app.record_usage(
        [
            usage("calls-1", 700, at(2)),
            usage("calls-2", "800.5", at(9)),
            *(usage(f"seats-{n}", n, at(n), meter="seats") for n in (8, 12, 11)),
            *(usage(f"sms-{i}", 1, at(20), meter="sms") for i in range(151)),
        ]
    )
    invoice = app.close_period("acme", "2026-10")
    # 1,000 x 0.01 + 500.5 x 0.008 + 5 flat = 19.004, rounded half-up to the cent.
    assert billed(invoice, "api_calls") == ("1500.5", "19.00")
    # The peak of 12 seats passes the first tier: all 12 at 9, plus 50 flat.
    assert billed(invoice, "seats") == ("12", "158.00")
    # 151 messages, 50 included: 101 billable start 2 packages of 100.
    assert billed(invoice, "sms") == ("151", "9.00")
    assert (invoice["status"], invoice["revision"], invoice["total"]) == ("issued", 1, "186.00")
    assert sum(D(x["amount"]) for x in invoice["lines"]) == D(invoice["total"])
    assert app.close_period("acme", "2026-10") == invoice  # closing twice changes nothing


def _items(app: BillingApplication, period_id: UUID) -> list[int]:
    """Each billed item's hash, in log order, up to the first revision: recomputed from the
    stored facts with the item hashes alone, not the aggregate's running tree."""
    items: list[int] = []
    e: Any
    for e in app.events.get(period_id):
        kind = type(e).__name__
        if kind == "Closed":
            return items
        if kind == "UsageRecorded" and e.treatment != "carried_forward":
            items += [usage_hash(r, e.received_at, e.emitter, e.key_id) for r in e.records]
        elif kind == "UsageCompensated":
            items.append(
                compensation_hash(
                    e.compensation_id,
                    e.event_id,
                    e.submitted_customer_id,
                    e.meter,
                    e.quantity,
                    e.reason,
                    e.received_at,
                    e.actor,
                )
            )
        elif kind == "UsageAdjusted":
            items.append(
                adjustment_hash(
                    e.adjustment_id,
                    e.meter,
                    e.quantity,
                    e.occurred_at,
                    e.reason,
                    e.received_at,
                    e.actor,
                )
            )
        elif kind == "LateUsageCarriedForward":
            items += [int(source[2], 16) for source in e.sources]
    raise AssertionError("the period is not closed")


def test_the_lineage_digest_of_a_closed_period_equals_its_recomputation(
    app: BillingApplication, clock: Clock
) -> None:
    customer(app)
    app.record_usage([usage(f"job-{i}", 10 * i, at(i)) for i in range(1, 8)])
    app.record_usage([usage("job-8", 5, at(8))])
    app.compensate("acme", "job-3", "refund-1", D(12), "partial refund")
    app.adjust("acme", "adj-1", "api_calls", D(-4), at(9), "test traffic")
    october = app.close_period("acme", "2026-10")
    items = _items(app, period_uuid("acme", "2026-10"))
    assert len(items) == 10
    assert october["lineage_digest"] == merkle.tree_root(items)
    # Late usage carried into November is part of November's digest.
    app.record_usage([usage("late-1", 30, at(28))])
    clock.advance(days=7)
    november = app.close_period("acme", "2026-11")
    carried = _items(app, period_uuid("acme", "2026-11"))
    assert len(carried) == 1
    assert november["lineage_digest"] == merkle.tree_root(carried)
    # And any one item proves its place against the digest on the invoice.
    path = merkle.audit_path(items, 2)
    leaf = merkle.leaf_hash(items[2]).hex()
    assert merkle.verify_inclusion(leaf, 2, len(items), path, october["lineage_digest"])
    assert not merkle.verify_inclusion(leaf, 3, len(items), path, october["lineage_digest"])


def _period_state(period: BillingPeriod) -> dict[str, Any]:
    return {
        "version": period.version,
        "billed": period.billed,
        "known": period.known,
        "compensated": period.compensated,
        "lineage_digest": period.lineage_digest,
        "items": period.items,
    }


def test_a_period_restored_from_its_snapshot_invoices_the_same(app: BillingApplication) -> None:
    customer(
        app,
        plan="seats",
        charges=[
            {
                "meter": "api_calls",
                "aggregation": "sum",
                "model": "per_unit",
                "unit_amount": "0.001",
            },
            {
                "meter": "users",
                "aggregation": "unique_count",
                "field": "u",
                "model": "per_unit",
                "unit_amount": "1",
            },
        ],
    )
    for n in range(6):
        app.record_usage(
            [
                usage(f"e{n}", "1.5", at(3)),
                usage(f"u{n}", 1, at(3), meter="users", u=f"user-{n % 4}"),
            ]
        )
    period_id = period_uuid("acme", "2026-10")
    app.compensate("acme", "u1", "refund-1", None, "duplicate user")
    app.take_snapshot(period_id)
    app.record_usage([usage("e-after", "2.5", at(4))])
    assert app.snapshots is not None
    [snapshot] = app.snapshots.get(period_id)
    uncached = Repository(event_store=app.events, snapshot_store=app.snapshots)
    restored: Any = uncached.get(period_id)
    assert snapshot.originator_version < restored.version
    original = app.billing_period("acme", "2026-10")
    assert original is not None
    assert _period_state(restored) == _period_state(original)
    charges, currency = app.period_charges("acme", "2026-10")
    lines = restored.lines([c.to_dict() for c in charges], currency)
    assert lines == app.invoice("acme", "2026-10")["lines"]
    assert [x["amount"] for x in lines] == ["0.01", "4.00"]


def test_an_account_opened_before_late_usage_policies_carries_late_usage_forward(
    app: BillingApplication,
) -> None:
    stored = json.loads((FIXTURES / "customer_opened_v1.json").read_text())
    assert customer_uuid("legacy-co") == UUID(stored["originator_id"])
    app.recorder.insert_events(
        [
            StoredEvent(
                originator_id=UUID(stored["originator_id"]),
                originator_version=stored["originator_version"],
                topic=stored["topic"],
                state=stored["state"].encode(),
            )
        ]
    )
    legacy = app.get_customer("legacy-co")
    assert (legacy.name, legacy.currency, legacy.late_usage_policy) == (
        "Legacy Co",
        "EUR",
        "carry_forward",
    )
    app.publish_plan(
        "euro", "EUR", [{"meter": "api_calls", "model": "per_unit", "unit_amount": "0.1"}]
    )
    app.subscribe("legacy-co", "euro", "2026-01")
    app.record_usage([usage("job-1", 10, at(5), "legacy-co")])
    app.close_period("legacy-co", "2026-10")
    late = app.record_usage([usage("late-1", 5, at(6), "legacy-co")])[0]
    assert late.treatment == "carried_forward"
    assert app.invoice("legacy-co", "2026-11")["total"] == "0.50"
