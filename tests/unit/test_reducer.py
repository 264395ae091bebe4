"""The period reducer on its own: no database, no aggregate, the figures a customer is billed."""

from __future__ import annotations

import json
from decimal import Decimal

from billing_domain.invoicing import invoice_lines, plan_in_force, total_of
from billing_domain.merkle import root, tree_root
from billing_domain.pricing import parse_charges
from billing_domain.reducer import (
    LatePolicy,
    Treatment,
    add_carried,
    adjustment_delta,
    carried_entries,
    compensation_delta,
    fold,
    grow,
    is_billed,
    late_sources,
    snapshot,
    usage_deltas,
)
from billing_domain.usage import aggregate_quantity

PLAN = [
    {"meter": "api_calls", "aggregation": "sum", "model": "per_unit", "unit_amount": "0.01"},
    {
        "meter": "seats",
        "aggregation": "unique_count",
        "field": "user",
        "model": "per_unit",
        "unit_amount": "5",
    },
    {"meter": "storage", "aggregation": "max", "model": "per_unit", "unit_amount": "2"},
]
METERS = {"api_calls": ["sum", None], "seats": ["unique_count", "user"], "storage": ["max", None]}


def record(event_id: str, meter: str, quantity: str, **properties: str) -> list[object]:
    return [event_id, "acme", meter, quantity, "2026-10-02T00:00:00Z", properties]


def folded(*records: list[object]) -> dict[str, dict[str, object]]:
    meters: dict[str, dict[str, object]] = {}
    fold(meters, usage_deltas(records, METERS, meters))
    return meters


def test_usage_is_summed_counted_and_tracked_per_meter() -> None:
    meters = folded(
        record("e1", "api_calls", "100"),
        record("e2", "api_calls", "0.5"),
        record("e3", "seats", "1", user="ann"),
        record("e4", "seats", "1", user="ann"),
        record("e5", "seats", "1", user="bob"),
        record("e6", "storage", "7"),
        record("e7", "storage", "3"),
    )
    assert aggregate_quantity(meters["api_calls"]) == Decimal("100.5")
    assert aggregate_quantity(meters["seats"]) == 2
    assert aggregate_quantity(meters["storage"]) == 7


def test_a_record_compensated_to_zero_stops_counting_and_its_value_leaves_the_max() -> None:
    meters = folded(record("e1", "storage", "7"), record("e2", "storage", "3"))
    change = compensation_delta(meters["storage"], Decimal(7), Decimal(7), {})
    fold(meters, {"storage": change})
    assert aggregate_quantity(meters["storage"]) == 3
    assert meters["storage"]["count"] == 1


def test_a_partial_compensation_moves_the_value_in_the_multiset() -> None:
    meters = folded(record("e1", "storage", "7"), record("e2", "storage", "3"))
    fold(meters, {"storage": compensation_delta(meters["storage"], Decimal(5), Decimal(7), {})})
    assert aggregate_quantity(meters["storage"]) == 3  # 7 became 2; 3 is now the largest
    assert meters["storage"]["values"] == {"2": 1, "3": 1}


def test_an_adjustment_adds_its_signed_quantity_to_the_aggregate() -> None:
    meters = folded(record("e1", "api_calls", "10"))
    fold(meters, {"api_calls": adjustment_delta("sum", None, Decimal("-2.5"))})
    assert aggregate_quantity(meters["api_calls"]) == Decimal("7.5")


def test_lines_and_total_price_the_plan_and_the_carried_entries() -> None:
    meters = folded(record("e1", "api_calls", "1000"), record("e2", "seats", "1", user="ann"))
    carried: dict[str, dict[str, object]] = {}
    add_carried(carried, "2026-09", "api_calls", Decimal(10), Decimal("0.10"))
    add_carried(carried, "2026-09", "api_calls", Decimal(5), Decimal("0.05"))
    lines = invoice_lines("2026-10", meters, parse_charges(PLAN), carried.values(), "USD")
    assert [(line["meter"], line["amount"], line["kind"]) for line in lines] == [
        ("api_calls", "10.00", "usage"),
        ("seats", "5.00", "usage"),
        ("storage", "0.00", "usage"),
        ("api_calls", "0.15", "carried_forward"),
    ]
    assert total_of(lines) == "15.15"


def test_late_usage_carried_forward_is_priced_at_what_it_adds_to_the_closed_period() -> None:
    known = folded(record("e1", "api_calls", "999"))
    issued = {"charges": PLAN, "currency": "USD"}
    late = [record("late-1", "api_calls", "1.5")]
    before = snapshot(known, {"api_calls"})
    fold(known, usage_deltas(late, METERS, known))
    sources = late_sources(late, "2026-11-02T00:00:00Z", "svc", "k1")
    (entry,) = carried_entries("2026-10", issued, before, known, sources)
    # 9.99 before, 10.005 -> 10.01 after: each side rounded as the invoice line was
    assert entry["quantity"] == Decimal("1.5") and entry["amount"] == Decimal("0.02")
    assert entry["sources"][0][:2] == ["usage", "late-1"]


def test_the_lineage_range_grows_to_the_merkle_root_of_its_items() -> None:
    items = [int.from_bytes(bytes([i]) * 32, "big") for i in range(1, 12)]
    peaks: list[str] = []
    count, _ = grow(peaks, 0, 0, items[:5])
    count, _ = grow(peaks, count, 0, items[5:])
    assert count == 11 and root(peaks) == tree_root(items)


def test_policies_map_to_treatments_in_one_place_and_keep_their_stored_text() -> None:
    assert Treatment("carried_forward") is Treatment.CARRIED_FORWARD
    assert json.dumps({"treatment": Treatment.RESTATED}) == '{"treatment": "restated"}'
    assert LatePolicy("carry_forward") is LatePolicy.CARRY_FORWARD
    assert not is_billed(Treatment.CARRIED_FORWARD) and is_billed("on_time")


def test_the_plan_in_force_is_the_latest_subscription_starting_by_the_period() -> None:
    subscriptions = [
        {"plan_id": "basic", "plan_version": 1, "effective_from": "2026-01"},
        {"plan_id": "pro", "plan_version": 2, "effective_from": "2026-11"},
    ]
    assert plan_in_force(subscriptions, "2025-12") is None
    assert plan_in_force(subscriptions, "2026-10") == ("basic", 1)
    assert plan_in_force(subscriptions, "2026-11") == ("pro", 2)
