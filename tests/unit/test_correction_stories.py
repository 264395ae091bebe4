"""Corrections are new events: compensations, adjustments, late usage and merges, told by
what each invoice says afterwards."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from billing_domain.application import BillingApplication
from billing_domain.errors import CompensationExceedsUsage, IdempotencyConflict
from billing_domain.ids import period_uuid
from tests.unit.stories import at, billed, customer, line, usage


def test_a_compensation_reverses_part_of_an_event(app: BillingApplication) -> None:
    customer(app)
    app.record_usage([usage("job-1", 1100, at(5))])
    result = app.compensate("acme", "job-1", "refund-1", D(200), "double-counted retry")
    assert (result["status"], result["quantity"], result["treatment"]) == (
        "accepted",
        "200",
        "on_time",
    )
    assert billed(app.invoice("acme", "2026-10")) == ("900", "9.00")


def test_a_retried_compensation_reverses_once_and_no_more_than_was_used(
    app: BillingApplication,
) -> None:
    customer(app)
    app.record_usage([usage("job-1", 1100, at(5))])
    app.compensate("acme", "job-1", "refund-1", D(200), "double-counted retry")
    again = app.compensate("acme", "job-1", "refund-1", D(200), "double-counted retry")
    assert again["status"] == "duplicate"
    with pytest.raises(IdempotencyConflict):
        app.compensate("acme", "job-1", "refund-1", D(300), "another reason")
    with pytest.raises(CompensationExceedsUsage):
        app.compensate("acme", "job-1", "refund-2", D(901), "too much")
    app.compensate("acme", "job-1", "refund-3", None, "the rest")
    assert billed(app.invoice("acme", "2026-10")) == ("0", "0.00")


def test_an_adjustment_adds_its_signed_quantity_to_the_meter(app: BillingApplication) -> None:
    customer(app)
    app.record_usage([usage("job-1", 990, at(5))])
    app.adjust("acme", "adj-1", "api_calls", D(30), at(20), "missed batch")
    assert billed(app.invoice("acme", "2026-10")) == ("1020", "12.10")
    app.adjust("acme", "adj-2", "api_calls", D(-70), at(21), "test traffic")
    assert billed(app.invoice("acme", "2026-10")) == ("950", "9.50")
    assert app.adjust("acme", "adj-2", "api_calls", D(-70), at(21), "test traffic")["status"] == (
        "duplicate"
    )
    assert billed(app.invoice("acme", "2026-10")) == ("950", "9.50")


def test_late_usage_is_carried_forward_to_the_next_invoice_at_what_it_adds(
    app: BillingApplication,
) -> None:
    customer(app, policy="carry_forward")
    app.record_usage([usage("job-1", 990, at(5))])
    assert app.close_period("acme", "2026-10")["total"] == "9.90"
    late = app.record_usage([usage("late-1", 30, at(28))])[0]
    assert (late.period, late.treatment) == ("2026-10", "carried_forward")
    october = app.invoice("acme", "2026-10")
    assert (october["revision"], october["total"]) == (1, "9.90")
    carried = line(app.invoice("acme", "2026-11"), "carried_forward")
    # 1,020 calls cost 12.10 and 990 cost 9.90: the late 30 add 2.20.
    assert (carried["usage_period"], carried["quantity"], carried["amount"]) == (
        "2026-10",
        "30",
        "2.20",
    )


def test_late_usage_restates_the_period_as_revision_2_with_the_delta(
    app: BillingApplication,
) -> None:
    customer(app, policy="restate")
    app.record_usage([usage("job-1", 990, at(5))])
    app.close_period("acme", "2026-10")
    assert app.record_usage([usage("late-1", 30, at(28))])[0].treatment == "restated"
    restated = app.invoice("acme", "2026-10")
    first = app.invoice("acme", "2026-10", revision=1)
    assert (restated["revision"], restated["status"], restated["total"]) == (2, "issued", "12.10")
    assert (first["status"], first["total"]) == ("superseded", "9.90")
    assert D(restated["total"]) - D(first["total"]) == D("2.20")
    assert [x["kind"] for x in app.invoice("acme", "2026-11")["lines"]] == ["usage"]


def test_a_merge_bills_usage_from_its_effective_instant_to_the_survivor(
    app: BillingApplication,
) -> None:
    customer(app, "acme")
    customer(app, "globex")
    app.merge_customer("acme", "globex", at(15))
    results = app.record_usage([usage("before", 100, at(14)), usage("after", 300, at(16))])
    assert [r.status for r in results] == ["accepted", "accepted"]
    assert billed(app.invoice("acme", "2026-10")) == ("100", "1.00")
    assert billed(app.invoice("globex", "2026-10")) == ("300", "3.00")
    row, record = app.recorded_usage("acme", "after")
    assert row.originator_id == period_uuid("globex", "2026-10")
    assert record[1] == "acme"  # the record keeps who submitted it
