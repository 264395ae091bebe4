"""Invoice lines from a period's meter totals, a plan's charges and carried-forward late usage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from billing_domain.pricing import Charge, round_money
from billing_domain.usage import aggregate_quantity, decimal_text, new_totals

ZERO = Decimal(0)


def charge_amount(charge: Charge, totals: Mapping[str, Any] | None, currency: str) -> Decimal:
    quantity = aggregate_quantity(dict(totals) if totals else _empty(charge))
    return round_money(charge.price(quantity), currency)


def _empty(charge: Charge) -> dict[str, Any]:
    return new_totals(charge.aggregation, charge.field)


def usage_lines(
    period: str, meters: Mapping[str, Mapping[str, Any]], charges: Sequence[Charge], currency: str
) -> list[dict[str, Any]]:
    lines = []
    for charge in charges:
        totals = meters.get(charge.meter)
        quantity = aggregate_quantity(dict(totals) if totals else _empty(charge))
        lines.append(
            {
                "meter": charge.meter,
                "quantity": decimal_text(quantity),
                "amount": str(round_money(charge.price(quantity), currency)),
                "kind": "usage",
                "usage_period": period,
            }
        )
    return lines


def carried_lines(carried: Iterable[Mapping[str, Any]], currency: str) -> list[dict[str, Any]]:
    return [
        {
            "meter": entry["meter"],
            "quantity": decimal_text(Decimal(entry["quantity"])),
            "amount": str(round_money(Decimal(entry["amount"]), currency)),
            "kind": "carried_forward",
            "usage_period": entry["from_period"],
        }
        for entry in sorted(carried, key=lambda e: (e["from_period"], e["meter"]))
    ]


def total_of(lines: Iterable[Mapping[str, Any]]) -> str:
    return str(sum((Decimal(line["amount"]) for line in lines), ZERO))
