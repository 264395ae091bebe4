"""Charge models priced in Decimal, rounded half-up per line to the currency's minor unit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from billing_domain.bounds import (
    MAX_PLAN_CHARGES,
    MAX_PLAN_TIERS,
    MAX_PROPERTY_KEY_LENGTH,
    bounded_int,
    check_id,
    parse_decimal,
)
from billing_domain.errors import InvalidInput
from billing_domain.numbers import ZERO, exact

MINOR_UNITS: dict[str, int] = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CHF": 2,
    "CAD": 2,
    "AUD": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "PLN": 2,
    "INR": 2,
    "BRL": 2,
    "MXN": 2,
    "SGD": 2,
    "NZD": 2,
    "CNY": 2,
    "JPY": 0,
    "KRW": 0,
    "ISK": 0,
    "KWD": 3,
    "BHD": 3,
    "OMR": 3,
}
AGGREGATIONS = ("sum", "count", "max", "unique_count", "latest")
MODELS = ("per_unit", "graduated", "volume", "package")
CHARGE_FIELDS = {"meter", "aggregation", "model", "field", "included_quantity"}
MODEL_FIELDS = {
    "per_unit": {"unit_amount"},
    "graduated": {"tiers"},
    "volume": {"tiers"},
    "package": {"package_size", "package_amount"},
}
TIER_FIELDS = {"up_to", "unit_amount", "flat_amount"}


def check_currency(currency: str) -> str:
    if currency not in MINOR_UNITS:
        raise InvalidInput(f"unsupported currency {currency!r}", field="currency")
    return currency


def round_money(amount: Decimal, currency: str) -> Decimal:
    exponent = Decimal(1).scaleb(-MINOR_UNITS[currency])
    with exact():
        return amount.quantize(exponent, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Tier:
    up_to: int | None
    unit_amount: Decimal
    flat_amount: Decimal = ZERO


@dataclass(frozen=True)
class Charge:
    meter: str
    aggregation: str
    model: str
    unit_amount: Decimal = ZERO
    tiers: tuple[Tier, ...] = ()
    package_size: int = 0
    package_amount: Decimal = ZERO
    included_quantity: Decimal = ZERO
    field: str | None = None

    def price(self, quantity: Decimal) -> Decimal:
        """Unrounded amount for the period's aggregate quantity of this charge's meter."""
        billable = max(quantity - self.included_quantity, ZERO)
        with exact():
            if self.model == "per_unit":
                return billable * self.unit_amount
            if self.model == "package":
                packages = (billable / self.package_size).to_integral_value(ROUND_CEILING)
                return packages * self.package_amount
            if billable == 0:
                return ZERO
            if self.model == "graduated":
                return _graduated(self.tiers, billable)
            return _volume(self.tiers, billable)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "meter": self.meter,
            "aggregation": self.aggregation,
            "model": self.model,
            "included_quantity": str(self.included_quantity),
        }
        if self.field is not None:
            data["field"] = self.field
        if self.model == "per_unit":
            data["unit_amount"] = str(self.unit_amount)
        elif self.model == "package":
            data["package_size"] = self.package_size
            data["package_amount"] = str(self.package_amount)
        else:
            data["tiers"] = [
                {
                    "up_to": t.up_to,
                    "unit_amount": str(t.unit_amount),
                    "flat_amount": str(t.flat_amount),
                }
                for t in self.tiers
            ]
        return data


def _graduated(tiers: Sequence[Tier], billable: Decimal) -> Decimal:
    total = ZERO
    lower = ZERO
    for tier in tiers:
        upper = Decimal(tier.up_to) if tier.up_to is not None else None
        units = billable - lower if upper is None else min(billable, upper) - lower
        if units > 0:
            total += units * tier.unit_amount + tier.flat_amount
        if upper is None or billable <= upper:
            break
        lower = upper
    return total


def _volume(tiers: Sequence[Tier], billable: Decimal) -> Decimal:
    for tier in tiers:
        if tier.up_to is None or billable <= tier.up_to:
            return billable * tier.unit_amount + tier.flat_amount
    raise AssertionError("validated tiers always end open")  # pragma: no cover


def _decimal(
    value: Any, field: str, *, allow_negative: bool = False, strict: bool = False
) -> Decimal:
    if strict:
        return parse_decimal(value, field, signed=allow_negative)
    if isinstance(value, float):
        raise InvalidInput("must be a decimal string or integer, not a float", field=field)
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidInput("not a decimal number", field=field) from None
    if not number.is_finite():
        raise InvalidInput("must be finite", field=field)
    if number < 0 and not allow_negative:
        raise InvalidInput("must not be negative", field=field)
    return number


def _known_fields(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for name in data:
        if name not in allowed:
            shown = name if isinstance(name, str) and len(name) <= 64 else "?"
            raise InvalidInput("unknown field", field=f"{where}.{shown}")


def charge_from_dict(data: Mapping[str, Any], index: int = 0, *, strict: bool = False) -> Charge:
    """Validate one charge of a plan; errors name the field as charges[i].name. `strict` is
    for a plan being published: every field known and every number within the documented
    bounds; stored plans are read as they were published."""
    where = f"charges[{index}]"
    meter = data.get("meter")
    if not isinstance(meter, str) or not meter.strip():
        raise InvalidInput("a charge needs a meter name", field=f"{where}.meter")
    if strict:
        check_id(meter, f"{where}.meter")
    aggregation = data.get("aggregation", "sum")
    if aggregation not in AGGREGATIONS:
        raise InvalidInput(
            f"must be one of {', '.join(AGGREGATIONS)}", field=f"{where}.aggregation"
        )
    field_name = data.get("field")
    if aggregation == "unique_count" and not field_name:
        raise InvalidInput(
            "unique_count needs the property name in 'field'", field=f"{where}.field"
        )
    model = data.get("model")
    if model not in MODELS:
        raise InvalidInput(f"must be one of {', '.join(MODELS)}", field=f"{where}.model")
    if strict:
        _known_fields(data, CHARGE_FIELDS | MODEL_FIELDS[model], where)
        if field_name is not None:
            check_id(field_name, f"{where}.field", MAX_PROPERTY_KEY_LENGTH)
    included = _decimal(
        data.get("included_quantity") or 0, f"{where}.included_quantity", strict=strict
    )
    common: dict[str, Any] = {
        "meter": meter,
        "aggregation": aggregation,
        "model": model,
        "included_quantity": included,
        "field": field_name,
    }
    if model == "per_unit":
        if data.get("unit_amount") is None:
            raise InvalidInput("per_unit needs unit_amount", field=f"{where}.unit_amount")
        return Charge(
            **common,
            unit_amount=_decimal(data["unit_amount"], f"{where}.unit_amount", strict=strict),
        )
    if model == "package":
        size = data.get("package_size")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise InvalidInput("must be a positive integer", field=f"{where}.package_size")
        if strict:
            bounded_int(size, f"{where}.package_size", minimum=1)
        if data.get("package_amount") is None:
            raise InvalidInput("package needs package_amount", field=f"{where}.package_amount")
        return Charge(
            **common,
            package_size=size,
            package_amount=_decimal(
                data["package_amount"], f"{where}.package_amount", strict=strict
            ),
        )
    return Charge(**common, tiers=_tiers(data.get("tiers"), where, strict=strict))


def _tiers(raw: Any, where: str, *, strict: bool = False) -> tuple[Tier, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("needs at least one tier", field=f"{where}.tiers")
    if strict and len(raw) > MAX_PLAN_TIERS:
        raise InvalidInput(f"must hold at most {MAX_PLAN_TIERS} tiers", field=f"{where}.tiers")
    tiers: list[Tier] = []
    previous = 0
    for i, item in enumerate(raw):
        at = f"{where}.tiers[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidInput("a tier is an object", field=at)
        if strict:
            _known_fields(item, TIER_FIELDS, at)
        up_to = item.get("up_to")
        last = i == len(raw) - 1
        if up_to is None and not last:
            raise InvalidInput("only the last tier may be open-ended", field=f"{at}.up_to")
        if up_to is not None:
            if not isinstance(up_to, int) or isinstance(up_to, bool) or up_to <= previous:
                raise InvalidInput(
                    "must be an integer above the previous tier's", field=f"{at}.up_to"
                )
            if strict:
                bounded_int(up_to, f"{at}.up_to", minimum=1)
            previous = up_to
        if item.get("unit_amount") is None:
            raise InvalidInput("a tier needs unit_amount", field=f"{at}.unit_amount")
        tiers.append(
            Tier(
                up_to,
                _decimal(item["unit_amount"], f"{at}.unit_amount", strict=strict),
                _decimal(item.get("flat_amount") or 0, f"{at}.flat_amount", strict=strict),
            )
        )
    if tiers[-1].up_to is not None:
        raise InvalidInput(
            "the last tier must be open-ended (up_to: null)",
            field=f"{where}.tiers[{len(tiers) - 1}].up_to",
        )
    return tuple(tiers)


def parse_charges(raw: Any, *, strict: bool = False) -> tuple[Charge, ...]:
    """A plan's charges; `strict` for a plan being published (see charge_from_dict)."""
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("a plan needs at least one charge", field="charges")
    if strict and len(raw) > MAX_PLAN_CHARGES:
        raise InvalidInput(f"must hold at most {MAX_PLAN_CHARGES} charges", field="charges")
    charges = tuple(
        charge_from_dict(item if isinstance(item, Mapping) else {}, i, strict=strict)
        for i, item in enumerate(raw)
    )
    meters = [c.meter for c in charges]
    for i, meter in enumerate(meters):
        if meters.index(meter) != i:
            raise InvalidInput(f"meter {meter!r} is charged twice", field=f"charges[{i}].meter")
    return charges
