"""Billing scenarios a finance person recognises, on SQLite and on PostgreSQL."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from billing_domain import errors
from billing_domain.identity import AuditFact
from tests.scenario import at, customer, line, usage


def test_a_retried_batch_is_billed_once(app):
    customer(app)
    batch = [usage(f"evt-{i}", 100, at(5)) for i in range(12)]
    first = app.record_usage(batch)
    retry = app.record_usage(batch)
    assert [r.status for r in first] == ["accepted"] * 12
    assert [r.status for r in retry] == ["duplicate"] * 12
    assert {r.period for r in retry} == {"2026-10"}
    invoice = app.invoice("acme", "2026-10")
    assert line(invoice)["quantity"] == "1200"
    # 1000 x 0.01 + 200 x 0.005 + 2 flat
    assert line(invoice)["amount"] == "13.00"
    assert invoice["total"] == "13.00"


def test_the_same_quantity_written_differently_is_the_same_payload(app):
    customer(app)
    app.record_usage([usage("evt-1", "2.50", at(5))])
    assert app.record_usage([usage("evt-1", "2.5", at(5))])[0].status == "duplicate"


def test_a_same_id_conflict_keeps_the_first_and_is_kept_for_audit(app):
    customer(app)
    assert app.record_usage([usage("evt-1", 10, at(5))])[0].status == "accepted"
    result = app.record_usage([usage("evt-1", 999, at(5))])[0]
    assert result.status == "conflict"
    assert line(app.invoice("acme", "2026-10"))["quantity"] == "10"
    facts = [
        app.mapper.to_domain_event(n)
        for n in app.recorder.select_notifications(start=1, limit=1000)
    ]
    conflicts = [
        f for f in facts if isinstance(f, AuditFact.Recorded) and f.action == "usage.conflict"
    ]
    assert len(conflicts) == 1
    assert conflicts[0].detail["event_id"] == "evt-1"


def test_duplicates_inside_one_batch_are_recognised(app):
    customer(app)
    results = app.record_usage([usage("a", 1, at(5)), usage("a", 1, at(5)), usage("a", 2, at(5))])
    assert [r.status for r in results] == ["accepted", "duplicate", "conflict"]
    assert line(app.invoice("acme", "2026-10"))["quantity"] == "1"


def test_a_batch_is_committed_whole_or_not_at_all(app, monkeypatch):
    customer(app)
    before = app.recorder.max_notification_id()
    import adapters.postgres as postgres_store
    import adapters.sqlite as sqlite_store

    real_rows = sqlite_store.ordered_keys

    def keys_the_store_refuses(keys):
        rows = real_rows(keys)
        return rows + rows[-1:]  # the last key twice: the database refuses the whole write

    for store in (postgres_store, sqlite_store):
        monkeypatch.setattr(store, "ordered_keys", keys_the_store_refuses)
    with pytest.raises(errors.StoreContention):
        app.record_usage([usage("a", 1, at(5)), usage("b", 1, at(6, month=9))])
    monkeypatch.undo()
    assert app.recorder.max_notification_id() == before
    assert app.recorder.select_keys("usage", [("acme", "a"), ("acme", "b")]) == {}
    results = app.record_usage([usage("a", 1, at(5)), usage("b", 1, at(6, month=9))])
    assert [r.status for r in results] == ["accepted", "accepted"]
    assert line(app.invoice("acme", "2026-09"))["quantity"] == "1"


def test_a_merge_splits_usage_at_effective_at(app):
    customer(app, "oldco")
    customer(app, "newco")
    app.merge_customer("oldco", "newco", at(15))
    results = app.record_usage(
        [
            usage("before", 100, at(14, hour=23), "oldco"),
            usage("after", 40, at(15), "oldco"),
            usage("own", 5, at(16), "newco"),
        ]
    )
    assert all(r.status == "accepted" for r in results)
    assert line(app.invoice("oldco", "2026-10"))["quantity"] == "100"
    assert line(app.invoice("newco", "2026-10"))["quantity"] == "45"
    # The record billed to newco still names the customer that submitted it.
    _, record = app.recorded_usage("oldco", "after")
    assert record[1] == "oldco"
    assert app.billing_period("newco", "2026-10").customer_id == "newco"


def test_late_usage_is_carried_forward_at_its_marginal_price(app):
    customer(app)
    app.record_usage([usage("on-time", 990, at(20))])
    issued = app.close_period("acme", "2026-10")
    assert issued["status"] == "issued" and issued["total"] == "9.90"
    result = app.record_usage([usage("late", 30, at(30))])[0]
    assert (result.status, result.period, result.treatment) == (
        "accepted",
        "2026-10",
        "carried_forward",
    )
    # The closed invoice is not edited.
    assert app.invoice("acme", "2026-10")["total"] == "9.90"
    assert app.invoice("acme", "2026-10")["revision"] == 1
    november = app.invoice("acme", "2026-11")
    carried = line(november, "carried_forward", usage_period="2026-10")
    # 1020 priced (10.00 + 0.10 + 2.00) minus 990 priced (9.90)
    assert carried == {
        "meter": "api_calls",
        "quantity": "30",
        "amount": "2.20",
        "kind": "carried_forward",
        "usage_period": "2026-10",
    }
    assert november["total"] == "2.20"


def test_late_usage_restates_the_closed_period_with_a_new_revision(app):
    customer(app, policy="restate")
    app.record_usage([usage("on-time", 990, at(20))])
    app.close_period("acme", "2026-10")
    result = app.record_usage([usage("late", 30, at(30))])[0]
    assert result.treatment == "restated"
    restated = app.invoice("acme", "2026-10")
    assert restated["revision"] == 2 and restated["status"] == "issued"
    assert line(restated)["quantity"] == "1020" and restated["total"] == "12.10"
    first = app.invoice("acme", "2026-10", revision=1)
    assert first["status"] == "superseded" and first["total"] == "9.90"
    assert first["lineage_digest"] != restated["lineage_digest"]


def test_a_compensation_reverses_part_of_an_event(app):
    customer(app)
    app.record_usage([usage("job-1", 500, at(5)), usage("job-2", 100, at(6))])
    done = app.compensate("acme", "job-1", "comp-1", D(120), "downstream step failed")
    assert done["status"] == "accepted" and done["treatment"] == "on_time"
    assert line(app.invoice("acme", "2026-10"))["quantity"] == "480"
    again = app.compensate("acme", "job-1", "comp-1", D(120), "downstream step failed")
    assert again["status"] == "duplicate"
    assert line(app.invoice("acme", "2026-10"))["quantity"] == "480"
    with pytest.raises(errors.CompensationExceedsUsage):
        app.compensate("acme", "job-1", "comp-2", D(381), "too much")
    with pytest.raises(errors.IdempotencyConflict):
        app.compensate("acme", "job-1", "comp-1", D(5), "another payload")
    full = app.compensate("acme", "job-2", "comp-3", None, "whole job failed")
    assert full["quantity"] == "100"
    assert line(app.invoice("acme", "2026-10"))["quantity"] == "380"


def test_a_compensation_of_a_closed_period_is_carried_forward_as_a_credit(app):
    customer(app)
    app.record_usage([usage("job-1", 1100, at(5))])
    app.close_period("acme", "2026-10")  # 10.00 + 0.50 + 2.00
    app.compensate("acme", "job-1", "comp-1", D(200), "refund")
    carried = line(app.invoice("acme", "2026-11"), "carried_forward", usage_period="2026-10")
    # 900 priced (9.00) minus 1100 priced (12.50)
    assert carried["quantity"] == "-200" and carried["amount"] == "-3.50"


def test_a_manual_adjustment_is_a_signed_correction_with_a_reason(app):
    customer(app)
    app.record_usage([usage("a", 100, at(5))])
    result = app.adjust("acme", "adj-1", "api_calls", D(-40), at(7), "goodwill credit")
    assert result["status"] == "accepted"
    assert line(app.invoice("acme", "2026-10"))["quantity"] == "60"
    assert (
        app.adjust("acme", "adj-1", "api_calls", D(-40), at(7), "goodwill credit")["status"]
        == "duplicate"
    )


def test_a_plan_migration_leaves_earlier_periods_untouched(app):
    customer(app)
    app.record_usage([usage("sep", 2000, at(10, month=9)), usage("oct", 2000, at(10))])
    app.close_period("acme", "2026-09")
    app.publish_plan(
        "pro",
        "USD",
        [{"meter": "api_calls", "aggregation": "sum", "model": "per_unit", "unit_amount": "0.002"}],
    )
    app.subscribe("acme", "pro", "2026-10")
    september = app.invoice("acme", "2026-09")
    assert september["plan_id"] == "std" and september["total"] == "17.00"
    october = app.invoice("acme", "2026-10")
    assert october["plan_id"] == "pro" and october["total"] == "4.00"
    with pytest.raises(errors.InvalidInput) as refused:
        app.subscribe("acme", "pro", "2026-09")
    assert refused.value.field == "effective_from"


def test_max_and_count_meters_aggregate_net_of_compensations(app):
    customer(
        app,
        charges=[
            {"meter": "storage_gb", "aggregation": "max", "model": "per_unit", "unit_amount": "1"},
            {"meter": "logins", "aggregation": "count", "model": "per_unit", "unit_amount": "0.5"},
            {
                "meter": "users",
                "aggregation": "unique_count",
                "field": "user",
                "model": "per_unit",
                "unit_amount": "2",
            },
        ],
        plan="mixed",
    )
    app.record_usage(
        [
            usage("s1", 30, at(3), meter="storage_gb"),
            usage("s2", 70, at(4), meter="storage_gb"),
            usage("l1", 1, at(3), meter="logins"),
            usage("l2", 1, at(3), meter="logins"),
            usage("u1", 1, at(3), meter="users", user="ann"),
            usage("u2", 1, at(4), meter="users", user="ann"),
            usage("u3", 1, at(5), meter="users", user="bob"),
        ]
    )
    invoice = app.invoice("acme", "2026-10")
    assert line(invoice, meter="storage_gb")["quantity"] == "70"
    assert line(invoice, meter="logins")["quantity"] == "2"
    assert line(invoice, meter="users")["quantity"] == "2"
    app.compensate("acme", "s2", "c1", D(50), "over-reported")
    app.compensate("acme", "l2", "c2", None, "test login")
    app.compensate("acme", "u3", "c3", None, "bob is staff")
    invoice = app.invoice("acme", "2026-10")
    assert line(invoice, meter="storage_gb")["quantity"] == "30"
    assert line(invoice, meter="logins")["quantity"] == "1"
    assert line(invoice, meter="users")["quantity"] == "1"
    assert invoice["total"] == "32.50"


@pytest.mark.parametrize(
    ("item", "error", "field"),
    [
        (usage("x", 1, at(5), customer_id="nobody"), "unknown_customer", "customer_id"),
        (usage("x", 1, at(5), meter="bogus"), "unknown_meter", "meter"),
        (usage("x", -1, at(5)), "negative_quantity", "quantity"),
        (usage("x", 1, at(24, month=11, hour=13)), "occurred_in_future", "occurred_at"),
        (usage("x", 1, at(1, month=10, year=2025)), "occurred_before_horizon", "occurred_at"),
    ],
)
def test_refused_usage_names_the_field_and_reason(app, item, error, field):
    customer(app)
    before = app.recorder.max_notification_id()
    result = app.record_usage([item])[0]
    assert (result.status, result.code, result.field) == ("rejected", error, field)
    assert result.detail
    assert app.recorder.max_notification_id() == before


def test_usage_within_the_clock_skew_bound_is_accepted(app, clock):
    customer(app)
    result = app.record_usage([usage("soon", 1, clock.now.replace(minute=4))])[0]
    assert result.status == "accepted" and result.period == "2026-11"


def test_closing_twice_is_a_no_op_and_future_periods_cannot_close(app):
    customer(app)
    app.record_usage([usage("a", 10, at(5))])
    first = app.close_period("acme", "2026-10")
    before = app.recorder.max_notification_id()
    assert app.close_period("acme", "2026-10") == first
    assert app.recorder.max_notification_id() == before
    with pytest.raises(errors.PeriodNotEnded):
        app.close_period("acme", "2026-11")


def test_an_emitter_ingests_only_within_its_grants(app, clock):
    customer(app)
    customer(app, "globex")
    app.register_emitter("checkout-service", "Checkout service")
    _, key = app.create_key("emitter", "checkout prod key", "checkout-service")
    app.grant("checkout-service", "acme", ["api_calls"])
    principal = app.authenticate(key)
    results = app.record_usage(
        [
            usage("ok", 1, at(5)),
            usage("other", 1, at(5), customer_id="globex"),
            usage("meter", 1, at(5), meter="storage_gb"),
        ],
        principal,
    )
    assert [r.status for r in results] == ["accepted", "rejected", "rejected"]
    assert {r.code for r in results[1:]} == {"not_authorised"}
    refusals = [
        app.mapper.to_domain_event(n)
        for n in app.recorder.select_notifications(start=1, limit=1000)
    ]
    refused = [f for f in refusals if isinstance(f, AuditFact.Recorded)]
    assert len(refused) == 2
    assert {f.emitter for f in refused} == {"checkout-service"}
    assert key not in str([f.__dict__ for f in refused])


def test_a_revoked_key_authenticates_nothing(app):
    key_id, key = app.create_key("finance", "finance team laptop")
    assert app.authenticate(key).role == "finance"
    app.revoke_key(key_id)
    with pytest.raises(errors.NotAuthenticated):
        app.authenticate(key)
    with pytest.raises(errors.NotAuthenticated):
        app.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B"))


def test_a_grant_is_bounded_by_its_window_and_can_be_withdrawn(app, clock):
    customer(app)
    app.register_emitter("batch-job", "Nightly batch job")
    _, key = app.create_key("emitter", "batch key", "batch-job")
    grant = app.grant(
        "batch-job", "*", ["*"], valid_from=at(1, month=11), valid_until=at(25, month=11)
    )
    assert app.record_usage([usage("in", 1, at(5))], app.authenticate(key))[0].status == "accepted"
    clock.advance(days=2)  # past valid_until
    assert (
        app.record_usage([usage("late", 1, at(5))], app.authenticate(key))[0].status == "rejected"
    )
    clock.advance(days=-2)
    app.revoke_grant("batch-job", grant["grant_id"])
    refused = app.record_usage([usage("gone", 1, at(5))], app.authenticate(key))[0]
    assert (refused.status, refused.code) == ("rejected", "not_authorised")


def test_keys_are_checked_against_their_emitter(app):
    with pytest.raises(errors.InvalidInput) as refused:
        app.create_key("emitter", "no emitter")
    assert refused.value.field == "emitter_id"
    with pytest.raises(errors.EmitterNotRegistered) as refused:
        app.create_key("emitter", "ghost", "ghost-service")
    assert refused.value.field == "emitter_id"
    with pytest.raises(errors.InvalidInput) as refused:
        app.create_key("superuser", "x")
    assert refused.value.field == "role"
    app.register_emitter("svc", "Service")
    with pytest.raises(errors.EmitterExists):
        app.register_emitter("svc", "Service again")
