"""Builders the unit stories share: plans a finance person can price by hand, customers,
usage, and what an invoice says."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billing_domain.application import BillingApplication
from billing_domain.errors import UnknownPlan
from billing_domain.identity import AuditFact
from billing_domain.usage import UsageInput

# 1,000 calls at 0.01, then 0.005 each plus a flat 2: 1,100 calls cost 12.50.
STANDARD = [
    {
        "meter": "api_calls",
        "aggregation": "sum",
        "model": "graduated",
        "tiers": [
            {"up_to": 1000, "unit_amount": "0.01"},
            {"up_to": None, "unit_amount": "0.005", "flat_amount": "2"},
        ],
    },
]


def at(day: int, month: int = 10, hour: int = 12) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def customer(
    app: BillingApplication,
    customer_id: str = "acme",
    *,
    policy: str = "carry_forward",
    plan: str = "standard",
    charges: list[dict[str, Any]] | None = None,
    currency: str = "USD",
) -> str:
    app.open_customer(customer_id, customer_id.title(), currency, policy)
    try:
        app.get_plan(plan)
    except UnknownPlan:
        app.publish_plan(plan, currency, charges or STANDARD)
    app.subscribe(customer_id, plan, "2026-01")
    return customer_id


def usage(
    event_id: str,
    quantity: str | int,
    when: datetime,
    customer_id: str = "acme",
    meter: str = "api_calls",
    **properties: Any,
) -> UsageInput:
    return UsageInput(event_id, customer_id, meter, Decimal(str(quantity)), when, properties)


def line(invoice: dict[str, Any], kind: str = "usage", meter: str = "api_calls") -> dict[str, Any]:
    for item in invoice["lines"]:
        if item["kind"] == kind and item["meter"] == meter:
            return dict(item)
    raise AssertionError(f"no {kind} line for {meter} in {invoice['lines']}")


def billed(invoice: dict[str, Any], meter: str = "api_calls") -> tuple[str, str]:
    """The quantity and amount of a meter's usage line."""
    found = line(invoice, meter=meter)
    return found["quantity"], found["amount"]


def audit_facts(app: BillingApplication, action: str) -> list[Any]:
    topic = f"{AuditFact.Recorded.__module__}:{AuditFact.Recorded.__qualname__}"
    return [
        fact
        for fact in map(
            app.mapper.to_domain_event, app.recorder.select_notifications(1, 10_000, topics=[topic])
        )
        if getattr(fact, "action", None) == action
    ]
