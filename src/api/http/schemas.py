"""Request and response bodies. Quantities and money are decimal strings; JSON numbers are
read exactly (as decimals, never floats) for quantities."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Strict = ConfigDict(extra="forbid", str_strip_whitespace=False)


def _decimal(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a decimal string or number")
    if isinstance(value, int | Decimal):
        return Decimal(value)
    if isinstance(value, str):
        return value  # pydantic parses the text exactly
    raise ValueError("must be a decimal string or number")


class UsageIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "event_id": "req-7f3a",
                    "customer_id": "acme",
                    "meter": "api_calls",
                    "quantity": "1",
                    "occurred_at": "2026-11-05T10:00:00Z",
                    "properties": {},
                }
            ]
        },
    )

    event_id: str = Field(min_length=1, max_length=256)
    customer_id: str = Field(min_length=1, max_length=200)
    meter: str = Field(min_length=1, max_length=200)
    quantity: Decimal = Field(description="decimal string (or JSON number), not negative")
    occurred_at: datetime = Field(description="RFC 3339 with an offset")
    properties: dict[str, Any] = Field(default_factory=dict)

    _quantity = field_validator("quantity", mode="before")(_decimal)

    @field_validator("occurred_at")
    @classmethod
    def _with_offset(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-11-05T10:00:00Z")
        return value


class UsageOut(BaseModel):
    event_id: str
    status: Literal["accepted", "duplicate", "conflict"]
    period: str | None
    treatment: str | None
    received_at: str


class BatchIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {
                            "event_id": "req-1",
                            "customer_id": "acme",
                            "meter": "api_calls",
                            "quantity": "3",
                            "occurred_at": "2026-11-05T10:00:00Z",
                        }
                    ]
                }
            ]
        },
    )

    events: list[dict[str, Any]] = Field(
        min_length=1, max_length=5000, description="up to 5,000 usage events (as POST /v1/usage)"
    )


class BatchItemOut(BaseModel):
    event_id: str | None
    status: Literal["accepted", "duplicate", "conflict", "rejected"]
    period: str | None = None
    treatment: str | None = None
    detail: str | None = None
    field: str | None = None


class BatchOut(BaseModel):
    results: list[BatchItemOut]


class CompensationIn(BaseModel):
    model_config = Strict
    compensation_id: str = Field(min_length=1, max_length=200)
    quantity: Decimal | None = Field(default=None, description="defaults to all that is left")
    reason: str = Field(min_length=1, max_length=1000)

    _quantity = field_validator("quantity", mode="before")(
        lambda v: None if v is None else _decimal(v)
    )


class AdjustmentIn(BaseModel):
    model_config = Strict
    adjustment_id: str = Field(min_length=1, max_length=200)
    meter: str = Field(min_length=1, max_length=200)
    quantity: Decimal = Field(description="signed decimal")
    occurred_at: datetime
    reason: str = Field(min_length=1, max_length=1000)

    _quantity = field_validator("quantity", mode="before")(_decimal)


class CustomerIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "acme",
                    "name": "Acme Ltd",
                    "currency": "USD",
                    "late_usage_policy": "carry_forward",
                }
            ]
        },
    )
    customer_id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    currency: str = "USD"
    late_usage_policy: Literal["carry_forward", "restate"] = "carry_forward"


class CustomerPatch(BaseModel):
    model_config = Strict
    name: str | None = Field(default=None, min_length=1, max_length=200)
    late_usage_policy: Literal["carry_forward", "restate"] | None = None


class PlanIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "plan_id": "standard",
                    "currency": "USD",
                    "charges": [
                        {
                            "meter": "api_calls",
                            "aggregation": "sum",
                            "model": "graduated",
                            "tiers": [
                                {"up_to": 10000, "unit_amount": "0.002"},
                                {"up_to": None, "unit_amount": "0.001", "flat_amount": "5"},
                            ],
                        },
                        {
                            "meter": "sms",
                            "aggregation": "count",
                            "model": "package",
                            "package_size": 100,
                            "package_amount": "4.50",
                            "included_quantity": "50",
                        },
                    ],
                }
            ]
        },
    )
    plan_id: str = Field(min_length=1, max_length=200)
    currency: str = "USD"
    charges: list[dict[str, Any]] = Field(
        min_length=1,
        description=(
            "each {meter, aggregation: sum|count|max|unique_count (field), model: per_unit "
            "(unit_amount) | graduated | volume (tiers: [{up_to, unit_amount, flat_amount?}]) | "
            "package (package_size, package_amount), included_quantity?}"
        ),
    )


class SubscriptionIn(BaseModel):
    model_config = Strict
    plan_id: str = Field(min_length=1)
    effective_from: str = Field(description="a period start: YYYY-MM or 2026-11-01T00:00:00Z")
    plan_version: int | None = Field(default=None, ge=1)


class MergeIn(BaseModel):
    model_config = Strict
    into: str = Field(min_length=1)
    effective_at: datetime


class KeyIn(BaseModel):
    model_config = Strict
    role: Literal["admin", "operator", "finance", "emitter"]
    name: str = Field(min_length=1, max_length=200)
    emitter_id: str | None = None


class EmitterIn(BaseModel):
    model_config = Strict
    emitter_id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)


class GrantIn(BaseModel):
    model_config = Strict
    customer_id: str = Field(min_length=1, description='a customer id, or "*"')
    meters: list[str] = Field(min_length=1, description='meter names, or ["*"]')
    valid_from: datetime | None = None
    valid_until: datetime | None = None
