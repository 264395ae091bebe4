"""Any mix of retries, reordering, duplicates and late arrival bills the deduplicated set."""

from __future__ import annotations

import itertools
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_domain.pricing import parse_charges, round_money
from tests.scenario import API_CALLS_PLAN, at, customer, usage

CHARGE = parse_charges(API_CALLS_PLAN)[0]
_customers = itertools.count()

events = st.lists(
    st.tuples(st.integers(min_value=1, max_value=400), st.integers(min_value=1, max_value=28)),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=events, data=st.data())
def test_any_interleaving_of_retries_bills_the_deduplicated_set(app, events, data):
    customer_id = customer(app, f"prop-{next(_customers)}")
    originals = [
        usage(f"e{i}", quantity, at(day), customer_id) for i, (quantity, day) in enumerate(events)
    ]
    retries = data.draw(st.lists(st.sampled_from(originals), max_size=15), label="retries")
    deliveries = data.draw(st.permutations(originals + retries), label="order")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(deliveries)), max_size=4), label="cuts"))
    batches = [deliveries[a:b] for a, b in zip([0, *cuts], [*cuts, len(deliveries)], strict=True)]
    statuses = []
    for batch in batches:
        if batch:
            statuses += [r.status for r in app.record_usage(batch)]
    assert statuses.count("accepted") == len(originals)
    assert statuses.count("duplicate") == len(retries)
    expected_quantity = sum((e.quantity for e in originals), Decimal(0))
    invoice = app.invoice(customer_id, "2026-10")
    assert invoice["lines"][0]["quantity"] == str(expected_quantity)
    assert invoice["lines"][0]["amount"] == str(round_money(CHARGE.price(expected_quantity), "USD"))


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    on_time=st.lists(st.integers(1, 600), min_size=1, max_size=8),
    late=st.lists(st.integers(1, 600), min_size=1, max_size=8),
)
def test_carried_forward_lines_add_up_to_what_the_late_usage_adds_to_the_period(app, on_time, late):
    customer_id = customer(app, f"late-{next(_customers)}")
    app.record_usage([usage(f"o{i}", q, at(3), customer_id) for i, q in enumerate(on_time)])
    app.close_period(customer_id, "2026-10")
    for i, q in enumerate(late):  # each late event arrives on its own
        assert (
            app.record_usage([usage(f"l{i}", q, at(9), customer_id)])[0].treatment
            == "carried_forward"
        )
    base, extra = Decimal(sum(on_time)), Decimal(sum(late))
    expected = round_money(CHARGE.price(base + extra), "USD") - round_money(
        CHARGE.price(base), "USD"
    )
    carried = [
        x for x in app.invoice(customer_id, "2026-11")["lines"] if x["kind"] == "carried_forward"
    ]
    assert len(carried) == 1
    assert carried[0]["quantity"] == str(extra)
    assert Decimal(carried[0]["amount"]) == expected
