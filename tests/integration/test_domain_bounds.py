"""The bounds hold in the domain too, for callers that do not come through HTTP: a correction
of an absurd size, a grant naming an id no one could use, a key for an emitter that was never
registered are refused naming the field, and nothing is written."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing_domain import errors
from tests.scenario import at, customer, line, usage


@pytest.mark.parametrize("quantity", ["1e400", "1e-999999999", "1e999999999", "NaN", "Infinity"])
def test_an_unbounded_compensation_is_refused_before_anything_is_written(app, quantity):
    customer(app)
    app.record_usage([usage("e1", 10, at(5))])
    before = app.recorder.max_notification_id()
    with pytest.raises(errors.InvalidInput) as refused:
        app.compensate("acme", "e1", "c1", Decimal(quantity), "downstream failed")
    assert refused.value.field == "quantity"
    assert app.recorder.max_notification_id() == before
    assert line(app.invoice("acme", "2026-10"))["quantity"] == "10"


@pytest.mark.parametrize("quantity", ["1e400", "-1e400", "1e-999999999", "NaN"])
def test_an_unbounded_adjustment_is_refused_before_anything_is_written(app, quantity):
    customer(app)
    before = app.recorder.max_notification_id()
    with pytest.raises(errors.InvalidInput) as refused:
        app.adjust("acme", "a1", "api_calls", Decimal(quantity), at(5), "manual")
    assert refused.value.field == "quantity"
    assert app.recorder.max_notification_id() == before


def test_a_bounded_adjustment_in_exponent_form_is_billed_exactly(app):
    customer(app)
    app.adjust("acme", "a1", "api_calls", Decimal("1.5E+2"), at(5), "manual")
    assert line(app.invoice("acme", "2026-10"))["quantity"] == "150"


@pytest.mark.parametrize(
    ("customer_id", "meters", "field"),
    [
        ("a/b", ["*"], "customer_id"),
        ("..", ["*"], "customer_id"),
        ("acme", ["api_calls", "bad\u0000meter"], "meters[1]"),
        ("acme", ["x\u202e"], "meters[0]"),
        ("acme", [f"m{i}" for i in range(101)], "meters"),
        ("acme", [], "meters"),
    ],
)
def test_a_grant_naming_an_unusable_id_is_refused(app, customer_id, meters, field):
    customer(app)
    app.register_emitter("svc", "Service")
    before = app.recorder.max_notification_id()
    with pytest.raises(errors.InvalidInput) as refused:
        app.grant("svc", customer_id, meters)
    assert refused.value.field == field
    assert app.recorder.max_notification_id() == before


def test_a_key_for_an_unregistered_emitter_is_bad_input_naming_the_field(app):
    before = app.recorder.max_notification_id()
    with pytest.raises(errors.InvalidInput) as refused:
        app.create_key("emitter", "svc key", "nobody")
    assert (refused.value.field, refused.value.code) == ("emitter_id", "unknown_emitter")
    assert app.recorder.max_notification_id() == before
