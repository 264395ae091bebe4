"""Invoices: lines from a period's meter totals, a plan's charges and carried-forward late
usage; the plan in force for a period; and the one public shape of an invoice."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from billing_domain.ids import invoice_id
from billing_domain.numbers import ZERO
from billing_domain.pricing import Charge, round_money
from billing_domain.usage import aggregate_quantity, decimal_text, new_totals

CARRIED_LINE = "carried_forward"  # an invoice line's kind, the Treatment that caused it
USAGE_LINE = "usage"

Plan = tuple[str, int] | None


def plan_in_force(subscriptions: Iterable[Mapping[str, Any]], period: str) -> Plan:
    """The plan version in force for a period: the latest subscription starting by then."""
    chosen: Mapping[str, Any] | None = None
    for subscription in subscriptions:
        if subscription["effective_from"] <= period:
            chosen = subscription
    return None if chosen is None else (chosen["plan_id"], int(chosen["plan_version"]))


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
                "kind": USAGE_LINE,
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
            "kind": CARRIED_LINE,
            "usage_period": entry["from_period"],
        }
        for entry in sorted(carried, key=lambda e: (e["from_period"], e["meter"]))
    ]


def invoice_lines(
    period: str,
    billed: Mapping[str, Mapping[str, Any]],
    charges: Sequence[Charge],
    carried: Iterable[Mapping[str, Any]],
    currency: str,
) -> list[dict[str, Any]]:
    """A period's lines: one per charge of its plan, then one per carried-forward entry."""
    return usage_lines(period, billed, charges, currency) + carried_lines(carried, currency)


def total_of(lines: Iterable[Mapping[str, Any]]) -> str:
    return str(sum((Decimal(line["amount"]) for line in lines), ZERO))


# The public invoice ------------------------------------------------------------------------


def issued_view(
    customer_id: str, period: str, issued: Mapping[str, Any], *, status: str, issued_at: str
) -> dict[str, Any]:
    """An issued (or superseded) revision as recorded by `Closed`/`Restated`: the aggregate's
    `revisions` entries and the stored events hold the same fields."""
    return {
        "invoice_id": invoice_id(customer_id, period),
        "customer_id": customer_id,
        "period": period,
        "revision": int(issued["revision"]),
        "status": status,
        "currency": issued["currency"],
        "lines": issued["lines"],
        "total": str(issued["total"]),
        "lineage_digest": issued["lineage_digest"],
        "plan_id": issued["plan_id"],
        "plan_version": None if issued["plan_version"] is None else int(issued["plan_version"]),
        "issued_at": issued_at,
    }


def draft_view(
    customer_id: str,
    period: str,
    currency: str,
    lines: list[dict[str, Any]],
    lineage_digest: str,
    plan: Plan,
) -> dict[str, Any]:
    """The draft of an open period: revision 1, priced now under the plan in force."""
    return {
        "invoice_id": invoice_id(customer_id, period),
        "customer_id": customer_id,
        "period": period,
        "revision": 1,
        "status": "draft",
        "currency": currency,
        "lines": lines,
        "total": total_of(lines),
        "lineage_digest": lineage_digest,
        "plan_id": plan[0] if plan else None,
        "plan_version": plan[1] if plan else None,
        "issued_at": None,
    }
