"""Usage ingest as a finance person tells it: what a customer is invoiced after retries,
conflicting retries and callers without authority."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_domain.application import BillingApplication
from billing_domain.errors import NotAuthenticated
from billing_domain.pricing import parse_charges, round_money
from tests.unit.conftest import NOW, memory_app
from tests.unit.stories import STANDARD, at, audit_facts, billed, customer, usage


def test_a_retried_event_is_not_billed_twice(app: BillingApplication) -> None:
    customer(app)
    first = app.record_usage([usage("job-1", 1100, at(5)), usage("job-1", 1100, at(5))])
    retried = app.record_usage([usage("job-1", "1100.00", at(5))])
    assert [r.status for r in first + retried] == ["accepted", "duplicate", "duplicate"]
    assert retried[0].received_at == first[0].received_at
    assert billed(app.invoice("acme", "2026-10")) == ("1100", "12.50")


def test_the_same_id_with_another_payload_is_a_conflict_and_the_first_stands(
    app: BillingApplication,
) -> None:
    customer(app)
    app.record_usage([usage("job-1", 1100, at(5))])
    conflict = app.record_usage([usage("job-1", 5000, at(5))])[0]
    assert (conflict.status, conflict.period) == ("conflict", "2026-10")
    assert billed(app.invoice("acme", "2026-10")) == ("1100", "12.50")
    [fact] = audit_facts(app, "usage.conflict")
    assert (fact.detail["customer_id"], fact.detail["event_id"]) == ("acme", "job-1")
    assert fact.detail["payload_hash"] != fact.detail["recorded_payload_hash"]


def test_a_conflict_inside_one_batch_keeps_the_first_copy(app: BillingApplication) -> None:
    customer(app)
    results = app.record_usage([usage("job-1", 100, at(5)), usage("job-1", 900, at(5))])
    assert [r.status for r in results] == ["accepted", "conflict"]
    assert billed(app.invoice("acme", "2026-10")) == ("100", "1.00")
    assert len(audit_facts(app, "usage.conflict")) == 1


def test_an_emitter_without_a_grant_is_refused_and_bills_nothing(app: BillingApplication) -> None:
    customer(app)
    app.register_emitter("meter-svc", "Metering service")
    _, token = app.create_key("emitter", "metering key", "meter-svc")
    refused = app.record_usage([usage("job-1", 1100, at(5))], app.authenticate(token))[0]
    assert (refused.status, refused.code) == ("rejected", "not_authorised")
    assert billed(app.invoice("acme", "2026-10")) == ("0", "0.00")
    assert len(audit_facts(app, "usage.ingest")) == 1
    app.grant("meter-svc", "acme", ["api_calls"])
    accepted = app.record_usage([usage("job-1", 1100, at(5))], app.authenticate(token))[0]
    assert accepted.status == "accepted"
    assert billed(app.invoice("acme", "2026-10")) == ("1100", "12.50")


def test_a_grant_for_one_meter_does_not_cover_another(app: BillingApplication) -> None:
    customer(app, charges=[*STANDARD, {"meter": "gb", "model": "per_unit", "unit_amount": "1"}])
    app.register_emitter("meter-svc", "Metering service")
    _, token = app.create_key("emitter", "metering key", "meter-svc")
    app.grant("meter-svc", "acme", ["api_calls"])
    principal = app.authenticate(token)
    results = app.record_usage(
        [usage("a", 10, at(5)), usage("b", 10, at(5), meter="gb")], principal
    )
    assert [r.status for r in results] == ["accepted", "rejected"]
    assert billed(app.invoice("acme", "2026-10"), "gb") == ("0", "0.00")


def test_a_key_is_refused_after_revocation(app: BillingApplication) -> None:
    customer(app)
    app.register_emitter("meter-svc", "Metering service")
    key_id, token = app.create_key("emitter", "metering key", "meter-svc")
    assert app.authenticate(token).key_id == key_id
    app.revoke_key(key_id)
    with pytest.raises(NotAuthenticated, match="revoked"):
        app.authenticate(token)


def test_a_revoked_grant_stops_ingest_at_once(app: BillingApplication) -> None:
    customer(app)
    app.register_emitter("meter-svc", "Metering service")
    _, token = app.create_key("emitter", "metering key", "meter-svc")
    grant_id = app.grant("meter-svc", "acme", ["*"])["grant_id"]
    app.revoke_grant("meter-svc", grant_id)
    refused = app.record_usage([usage("job-1", 10, at(5))], app.authenticate(token))[0]
    assert refused.code == "not_authorised"


CHARGE = parse_charges(STANDARD)[0]
_apps = itertools.count()
events = st.lists(
    st.tuples(st.integers(min_value=1, max_value=400), st.integers(min_value=1, max_value=28)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(events=events, data=st.data())
def test_any_mix_of_retries_and_reordering_bills_the_deduplicated_set(
    events: list[tuple[int, int]], data: st.DataObject
) -> None:
    app = memory_app(lambda: NOW)
    try:
        customer(app)
        originals = [usage(f"e{i}", q, at(day)) for i, (q, day) in enumerate(events)]
        retries = data.draw(st.lists(st.sampled_from(originals), max_size=15), label="retries")
        deliveries = data.draw(st.permutations(originals + retries), label="order")
        cuts = sorted(data.draw(st.lists(st.integers(0, len(deliveries)), max_size=4)))
        statuses = []
        for start, stop in zip([0, *cuts], [*cuts, len(deliveries)], strict=True):
            if stop > start:
                statuses += [r.status for r in app.record_usage(deliveries[start:stop])]
        assert statuses.count("accepted") == len(originals)
        assert statuses.count("duplicate") == len(retries)
        expected = sum((e.quantity for e in originals), Decimal(0))
        invoice = app.close_period("acme", "2026-10")
        assert billed(invoice) == (str(expected), str(round_money(CHARGE.price(expected), "USD")))
    finally:
        app.close()
