"""Corrections landing in closed periods follow the customer's policy; snapshots change nothing."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from billing_domain import errors
from billing_domain.application import BillingApplication
from tests.scenario import at, customer, line, usage


def test_a_compensation_of_a_closed_period_restates_under_the_restate_policy(app):
    customer(app, policy="restate")
    app.record_usage([usage("job-1", 1100, at(5))])
    assert app.close_period("acme", "2026-10")["total"] == "12.50"
    result = app.compensate("acme", "job-1", "comp-1", D(200), "refund")
    assert result["treatment"] == "restated"
    restated = app.invoice("acme", "2026-10")
    assert (restated["revision"], restated["total"]) == (2, "9.00")
    assert app.invoice("acme", "2026-11")["total"] == "0.00"


def test_an_adjustment_dated_in_a_closed_period_is_carried_forward(app):
    customer(app)
    app.record_usage([usage("a", 990, at(5))])
    app.close_period("acme", "2026-10")
    result = app.adjust("acme", "adj-1", "api_calls", D(30), at(20), "missed batch")
    assert (result["treatment"], result["period"]) == ("carried_forward", "2026-10")
    carried = line(app.invoice("acme", "2026-11"), "carried_forward", usage_period="2026-10")
    assert (carried["quantity"], carried["amount"]) == ("30", "2.20")
    assert app.invoice("acme", "2026-10")["total"] == "9.90"


def test_policy_change_applies_to_the_next_late_event(app):
    customer(app)
    app.record_usage([usage("a", 100, at(5))])
    app.close_period("acme", "2026-10")
    assert app.record_usage([usage("late-1", 10, at(6))])[0].treatment == "carried_forward"
    app.update_customer("acme", late_usage_policy="restate")
    assert app.record_usage([usage("late-2", 10, at(7))])[0].treatment == "restated"
    restated = app.invoice("acme", "2026-10")
    # The carried-forward event is billed in November, so the restatement leaves it out.
    assert (restated["revision"], line(restated)["quantity"]) == (2, "110")
    assert line(app.invoice("acme", "2026-11"), "carried_forward")["quantity"] == "10"


def test_merged_customers_cannot_be_merged_again_or_be_merge_targets(app):
    for name in ("a", "b", "c"):
        customer(app, name)
    app.merge_customer("a", "b", at(10))
    with pytest.raises(errors.CustomerMerged):
        app.merge_customer("a", "c", at(11))
    with pytest.raises(errors.CustomerMerged) as refused:
        app.merge_customer("c", "a", at(11))
    assert refused.value.field == "into"
    with pytest.raises(errors.UnknownCustomer):
        app.merge_customer("c", "nobody", at(11))


def test_a_period_loaded_from_its_snapshot_invoices_the_same(app, settings, clock):
    customer(
        app,
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
        plan="snap",
    )
    for b in range(205):  # a snapshot is taken every 200 period events
        app.record_usage(
            [
                usage(f"e{b}", "1.5", at(3)),
                usage(f"u{b}", 1, at(3), meter="users", u=f"user-{b % 7}"),
            ]
        )
    expected = app.invoice("acme", "2026-10")
    fresh = BillingApplication(settings, clock=clock)
    try:
        period_id = fresh.billing_period("acme", "2026-10").id
        assert list(fresh.snapshots.get(period_id))
        assert fresh.invoice("acme", "2026-10") == expected
        assert [x["quantity"] for x in expected["lines"]] == ["307.5", "7"]
        assert expected["total"] == "7.31"
    finally:
        fresh.close()
