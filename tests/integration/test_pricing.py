"""Pricing a finance person can check by hand: every model, included units, rounding."""

from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_domain.errors import InvalidInput
from billing_domain.pricing import charge_from_dict, parse_charges, round_money

GRADUATED = charge_from_dict(
    {
        "meter": "api_calls",
        "aggregation": "sum",
        "model": "graduated",
        "tiers": [
            {"up_to": 1000, "unit_amount": "0.01"},
            {"up_to": 10000, "unit_amount": "0.008", "flat_amount": "5"},
            {"up_to": None, "unit_amount": "0.005", "flat_amount": "20"},
        ],
    }
)
VOLUME = charge_from_dict(
    {
        "meter": "seats",
        "aggregation": "max",
        "model": "volume",
        "tiers": [
            {"up_to": 10, "unit_amount": "12"},
            {"up_to": None, "unit_amount": "9", "flat_amount": "50"},
        ],
    }
)
PACKAGE = charge_from_dict(
    {
        "meter": "sms",
        "aggregation": "count",
        "model": "package",
        "package_size": 100,
        "package_amount": "4.50",
        "included_quantity": "50",
    }
)


def test_graduated_prices_each_unit_in_its_tier_and_adds_flat_amounts_once():
    assert GRADUATED.price(D(0)) == D(0)
    assert GRADUATED.price(D(1000)) == D("10.00")
    # 1000 x 0.01 + 1 x 0.008 + 5 flat
    assert GRADUATED.price(D(1001)) == D("15.008")
    # 10 + (9000 x 0.008 + 5) + (2500 x 0.005 + 20)
    assert GRADUATED.price(D(12500)) == D("10") + D("77") + D("32.5")


def test_volume_prices_all_units_at_the_tier_the_total_reaches():
    assert VOLUME.price(D(10)) == D(120)
    assert VOLUME.price(D(11)) == D(11 * 9 + 50)


def test_package_charges_every_started_package_after_included_units():
    assert PACKAGE.price(D(50)) == D(0)
    assert PACKAGE.price(D(51)) == D("4.50")
    assert PACKAGE.price(D(150)) == D("4.50")
    assert PACKAGE.price(D(151)) == D("9.00")


def test_per_unit_with_included_quantity():
    charge = charge_from_dict(
        {"meter": "gb", "model": "per_unit", "unit_amount": "0.125", "included_quantity": "10"}
    )
    assert charge.price(D("12.5")) == D("0.3125")
    assert charge.price(D(3)) == D(0)


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (D("0.125"), "USD", D("0.13")),
        (D("0.124999"), "EUR", D("0.12")),
        (D("2.5"), "JPY", D("3")),
        (D("1.0005"), "KWD", D("1.001")),
        (D("-0.125"), "GBP", D("-0.13")),
    ],
)
def test_rounding_is_half_up_to_the_currency_minor_unit(amount, currency, expected):
    assert round_money(amount, currency) == expected
    assert str(round_money(amount, currency)) == str(expected)


@pytest.mark.parametrize(
    ("charges", "field"),
    [
        ([], "charges"),
        ([{"meter": "a", "model": "per_unit"}], "charges[0].unit_amount"),
        ([{"meter": "a", "model": "magic", "unit_amount": "1"}], "charges[0].model"),
        (
            [{"meter": "a", "aggregation": "median", "model": "per_unit", "unit_amount": "1"}],
            "charges[0].aggregation",
        ),
        ([{"meter": "a", "model": "per_unit", "unit_amount": "-1"}], "charges[0].unit_amount"),
        ([{"meter": "a", "model": "per_unit", "unit_amount": 0.1}], "charges[0].unit_amount"),
        (
            [{"meter": "a", "model": "graduated", "tiers": [{"up_to": 10, "unit_amount": "1"}]}],
            "charges[0].tiers[0].up_to",
        ),
        (
            [
                {
                    "meter": "a",
                    "model": "graduated",
                    "tiers": [
                        {"up_to": 10, "unit_amount": "1"},
                        {"up_to": 5, "unit_amount": "1"},
                        {"up_to": None, "unit_amount": "1"},
                    ],
                }
            ],
            "charges[0].tiers[1].up_to",
        ),
        (
            [{"meter": "a", "model": "package", "package_size": 0, "package_amount": "1"}],
            "charges[0].package_size",
        ),
        (
            [
                {
                    "meter": "a",
                    "aggregation": "unique_count",
                    "model": "per_unit",
                    "unit_amount": "1",
                }
            ],
            "charges[0].field",
        ),
        (
            [
                {"meter": "a", "model": "per_unit", "unit_amount": "1"},
                {"meter": "a", "model": "per_unit", "unit_amount": "2"},
            ],
            "charges[1].meter",
        ),
    ],
)
def test_invalid_charges_are_refused_naming_the_field(charges, field):
    with pytest.raises(InvalidInput) as refused:
        parse_charges(charges)
    assert refused.value.field == field


quantities = st.decimals(
    min_value=0, max_value=10**7, places=3, allow_nan=False, allow_infinity=False
)


@given(quantities, quantities)
def test_graduated_and_package_pricing_never_falls_as_quantity_grows(a, b):
    low, high = min(a, b), max(a, b)
    for charge in (GRADUATED, PACKAGE):
        assert charge.price(low) <= charge.price(high)
        assert round_money(charge.price(low), "USD") <= round_money(charge.price(high), "USD")
