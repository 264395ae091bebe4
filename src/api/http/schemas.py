"""Request and response bodies. Quantities and money are decimal strings; JSON numbers are
read exactly (as decimals, never floats) for quantities."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from billing_domain import bounds as b
from billing_domain.errors import InvalidInput

Strict = ConfigDict(extra="forbid", str_strip_whitespace=False)


def _held(check: Callable[..., Any], **options: Any) -> Callable[[Any, ValidationInfo], Any]:
    """A pydantic validator holding one of the documented bounds (billing_domain.bounds)."""

    def validate(value: Any, info: ValidationInfo) -> Any:
        try:
            return check(value, info.field_name or "value", **options)
        except InvalidInput as error:
            inner = error.field if error.field and error.field != info.field_name else None
            raise ValueError(f"{inner}: {error.reason}" if inner else error.reason) from None

    return validate


def _optional(check: Callable[..., Any], **options: Any) -> Callable[[Any, ValidationInfo], Any]:
    held = _held(check, **options)
    return lambda value, info: None if value is None else held(value, info)


def _at_most(limit: int) -> Callable[[Any], Any]:
    def validate(value: Any) -> Any:
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(f"must hold at most {limit:,} items")
        return value

    return validate


def _grant_meters(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, list):
        for i, meter in enumerate(value):
            try:
                b.check_id_or_wildcard(meter, "meters")
            except InvalidInput as error:
                raise ValueError(f"[{i}] {error.reason}") from None
    return value


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

    event_id: str = Field(min_length=1, max_length=b.MAX_EVENT_ID_LENGTH)
    customer_id: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)
    meter: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)
    quantity: Decimal = Field(description="decimal string (or JSON number), not negative")
    occurred_at: datetime = Field(description="RFC 3339 with an offset, at most microseconds")
    properties: dict[str, Any] = Field(default_factory=dict)

    _event_id = field_validator("event_id")(_held(b.check_id, max_length=b.MAX_EVENT_ID_LENGTH))
    _ids = field_validator("customer_id", "meter")(_held(b.check_id))
    _quantity = field_validator("quantity", mode="before")(_held(b.parse_decimal))
    _occurred_at = field_validator("occurred_at", mode="before")(_held(b.parse_time))


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
        min_length=1,
        max_length=b.MAX_BATCH_EVENTS,
        description="up to 5,000 usage events (as POST /v1/usage)",
    )

    _events = field_validator("events", mode="before")(_at_most(b.MAX_BATCH_EVENTS))


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
    compensation_id: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)
    quantity: Decimal | None = Field(default=None, description="defaults to all that is left")
    reason: str = Field(min_length=1, max_length=b.MAX_REASON_LENGTH)

    _id = field_validator("compensation_id")(_held(b.check_id))
    _quantity = field_validator("quantity", mode="before")(_optional(b.parse_decimal))
    _reason = field_validator("reason")(_held(b.check_text, max_length=b.MAX_REASON_LENGTH))


class AdjustmentIn(BaseModel):
    model_config = Strict
    adjustment_id: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)
    meter: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)
    quantity: Decimal = Field(description="signed decimal")
    occurred_at: datetime
    reason: str = Field(min_length=1, max_length=b.MAX_REASON_LENGTH)

    _ids = field_validator("adjustment_id", "meter")(_held(b.check_id))
    _quantity = field_validator("quantity", mode="before")(_held(b.parse_decimal, signed=True))
    _occurred_at = field_validator("occurred_at", mode="before")(_held(b.parse_time))
    _reason = field_validator("reason")(_held(b.check_text, max_length=b.MAX_REASON_LENGTH))


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
    customer_id: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)
    name: str = Field(min_length=1, max_length=b.MAX_NAME_LENGTH)
    currency: str = "USD"
    late_usage_policy: Literal["carry_forward", "restate"] = "carry_forward"

    _customer_id = field_validator("customer_id")(_held(b.check_id))
    _name = field_validator("name")(_held(b.check_text))


class ExternalIdIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    system: Literal["stripe", "lago", "openmeter"]
    id: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)

    _id = field_validator("id")(_held(b.check_id))


class CustomerPatch(BaseModel):
    model_config = Strict
    name: str | None = Field(default=None, min_length=1, max_length=b.MAX_NAME_LENGTH)
    late_usage_policy: Literal["carry_forward", "restate"] | None = None

    _name = field_validator("name")(_optional(b.check_text))


_DECIMAL = {"type": "string", "description": "decimal string (a JSON number is accepted too)"}
# A charge as the OpenAPI document states it, so a generated client has a typed charge; the
# body is validated by the domain (billing_domain.pricing), which names the refused field.
CHARGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "ChargeIn",
    "additionalProperties": False,
    "required": ["meter", "model"],
    "properties": {
        "meter": {"type": "string", "maxLength": b.MAX_ID_LENGTH},
        "aggregation": {
            "type": "string",
            "enum": ["sum", "count", "max", "unique_count", "latest"],
            "description": "the meter's, when left out",
        },
        "field": {"type": "string", "description": "the property unique_count counts"},
        "model": {"type": "string", "enum": ["per_unit", "graduated", "volume", "package"]},
        "unit_amount": {**_DECIMAL, "description": "per_unit: the price of one unit"},
        "tiers": {
            "type": "array",
            "maxItems": b.MAX_PLAN_TIERS,
            "description": "graduated and volume",
            "items": {
                "type": "object",
                "title": "TierIn",
                "additionalProperties": False,
                "required": ["unit_amount"],
                "properties": {
                    "up_to": {
                        "anyOf": [{"type": "integer"}, {"type": "null"}],
                        "description": "the tier's last unit; null for the last tier",
                    },
                    "unit_amount": _DECIMAL,
                    "flat_amount": _DECIMAL,
                },
            },
        },
        "package_size": {"type": "integer", "minimum": 1},
        "package_amount": _DECIMAL,
        "included_quantity": {**_DECIMAL, "description": "free units before pricing"},
    },
}


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
    plan_id: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)
    currency: str = "USD"
    charges: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=b.MAX_PLAN_CHARGES,
        description=(
            "each {meter, aggregation: sum|count|max|unique_count (field), model: per_unit "
            "(unit_amount) | graduated | volume (tiers: [{up_to, unit_amount, flat_amount?}]) | "
            "package (package_size, package_amount), included_quantity?}"
        ),
        json_schema_extra={"items": CHARGE_SCHEMA},
    )

    _plan_id = field_validator("plan_id")(_held(b.check_id))
    _charges = field_validator("charges", mode="before")(_at_most(b.MAX_PLAN_CHARGES))


class SubscriptionIn(BaseModel):
    model_config = Strict
    plan_id: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)
    effective_from: str = Field(
        max_length=b.MAX_TIME_TEXT, description="a period start: YYYY-MM or 2026-11-01T00:00:00Z"
    )
    plan_version: int | None = Field(default=None, ge=1, lt=2**31)

    _plan_id = field_validator("plan_id")(_held(b.check_id))


class MergeIn(BaseModel):
    model_config = Strict
    into: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)
    effective_at: datetime

    _into = field_validator("into")(_held(b.check_id))
    _effective_at = field_validator("effective_at", mode="before")(_held(b.parse_time))


class KeyIn(BaseModel):
    model_config = Strict
    role: Literal["admin", "operator", "finance", "emitter"]
    name: str = Field(min_length=1, max_length=b.MAX_NAME_LENGTH)
    emitter_id: str | None = Field(default=None, max_length=b.MAX_ID_LENGTH)
    expires_at: datetime | None = Field(
        default=None, description="RFC 3339; past it the key is refused (401 expired key)"
    )

    _name = field_validator("name")(_held(b.check_text))
    _emitter_id = field_validator("emitter_id")(_optional(b.check_id))
    _expires_at = field_validator("expires_at", mode="before")(_optional(b.parse_time))


class EmitterIn(BaseModel):
    model_config = Strict
    emitter_id: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)
    name: str = Field(min_length=1, max_length=b.MAX_NAME_LENGTH)
    owner: str | None = Field(
        default=None, max_length=b.MAX_NAME_LENGTH, description="who answers for the emitter"
    )

    _emitter_id = field_validator("emitter_id")(_held(b.check_id))
    _name = field_validator("name")(_held(b.check_text))
    _owner = field_validator("owner")(_optional(b.check_text))


class GrantIn(BaseModel):
    model_config = Strict
    customer_id: str = Field(
        min_length=1, max_length=b.MAX_ID_LENGTH, description='a customer id, or "*"'
    )
    meters: list[str] = Field(
        min_length=1, max_length=b.MAX_GRANT_METERS, description='meter names, or ["*"]'
    )
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    _customer_id = field_validator("customer_id")(_held(b.check_id_or_wildcard))
    _meters_count = field_validator("meters", mode="before")(_at_most(b.MAX_GRANT_METERS))
    _meters = field_validator("meters")(_grant_meters)
    _valid = field_validator("valid_from", "valid_until", mode="before")(_optional(b.parse_time))
