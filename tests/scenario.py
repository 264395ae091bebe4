"""Small builders the scenarios share: a plan, a subscribed customer, usage events."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billing_domain.application import BillingApplication
from billing_domain.errors import UnknownPlan
from billing_domain.usage import UsageInput

API_CALLS_PLAN: list[dict[str, Any]] = [
    {
        "meter": "api_calls",
        "aggregation": "sum",
        "model": "graduated",
        "tiers": [
            {"up_to": 1000, "unit_amount": "0.01"},
            {"up_to": None, "unit_amount": "0.005", "flat_amount": "2"},
        ],
    },
    {"meter": "storage_gb", "aggregation": "max", "model": "per_unit", "unit_amount": "0.25"},
]


def at(day: int, month: int = 10, hour: int = 12, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def customer(
    app: BillingApplication,
    customer_id: str = "acme",
    *,
    policy: str = "carry_forward",
    plan: str = "std",
    charges: list[dict[str, Any]] | None = None,
    since: str = "2026-01",
) -> str:
    app.open_customer(customer_id, customer_id.title(), "USD", policy)
    try:
        app.get_plan(plan)
    except UnknownPlan:
        app.publish_plan(plan, "USD", charges or API_CALLS_PLAN)
    app.subscribe(customer_id, plan, since)
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


def line(
    invoice: dict[str, Any],
    kind: str = "usage",
    meter: str = "api_calls",
    usage_period: str | None = None,
) -> dict[str, Any]:
    for item in invoice["lines"]:
        if (
            item["kind"] == kind
            and item["meter"] == meter
            and (usage_period is None or item["usage_period"] == usage_period)
        ):
            return item
    raise AssertionError(f"no {kind} line for {meter} in {invoice['lines']}")
