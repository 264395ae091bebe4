"""What every client dialect shares: resolving the customer a dialect names, reading the
quantity from the property its meter names, and recording through the same ingest as
/v1/usage (grants, dedup index, lineage, audit). A dialect only translates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import anyio
from litestar import Request

from api.http.common import services
from billing_domain import bounds
from billing_domain.errors import BillingError, InvalidInput, MeterNotFound
from billing_domain.identity import Principal
from billing_domain.usage import UsageInput, UsageResult

# A meter without a `field` reads its quantity from this property, as Stripe's payload does.
DEFAULT_VALUE_PROPERTY = "value"
COUNTED = ("count", "unique_count")


@dataclass(frozen=True)
class Submitted:
    """One event as a dialect read it, before the customer is resolved."""

    event_id: Any
    customer: Any
    meter: Any
    occurred_at: Any
    properties: Mapping[str, Any] = field(default_factory=dict)
    quantity: Any = None  # a dialect that carries the quantity apart from its properties


@dataclass(frozen=True)
class Refused:
    """A dialect-level refusal (the shape the dialect could not read), audited like ingest's."""

    event_id: str | None
    field: str
    reason: str
    code: str = "invalid_input"


def unix_time(value: Any, field_name: str) -> datetime:
    """Seconds since the epoch, as an integer, decimal or numeric text (microseconds at most)."""
    if isinstance(value, str):
        if len(value) > bounds.MAX_NUMBER_TEXT:
            raise InvalidInput(
                f"must be at most {bounds.MAX_NUMBER_TEXT} characters", field=field_name
            )
        try:
            value = Decimal(value)
        except InvalidOperation:
            raise InvalidInput("must be a Unix time in seconds", field=field_name) from None
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise InvalidInput("must be a Unix time in seconds", field=field_name)
    seconds = bounds.parse_decimal(value, field_name)
    if seconds >= 253402300800:  # year 10000
        raise InvalidInput("is beyond the year 9999", field=field_name)
    whole = int(seconds)
    micros = int((seconds - whole) * 1_000_000)
    return datetime.fromtimestamp(whole, UTC).replace(microsecond=micros)


def event_time(value: Any, field_name: str, now: datetime) -> datetime:
    """A dialect's time: absent is now, a number is Unix seconds, text is RFC 3339 or digits."""
    if value is None:
        return now
    if isinstance(value, str) and not value.replace(".", "", 1).isdigit():
        return bounds.parse_time(value, field_name)
    return unix_time(value, field_name)


class Meters:
    """The application's meter lookup, asked once per meter per request."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._known: dict[str, Any] = {}

    def get(self, meter: str) -> Any:
        if meter not in self._known:
            try:
                self._known[meter] = self._app.meter(meter)
            except MeterNotFound:
                self._known[meter] = None
        return self._known[meter]


def _quantity(meters: Meters, event: Submitted) -> Decimal:
    if event.quantity is not None:
        return bounds.parse_decimal(event.quantity, "quantity")
    meter = meters.get(event.meter)
    if meter is None:
        # Ingest refuses the meter itself (after the grant check), audited as for /v1/usage.
        return Decimal(0)
    name = meter.field or DEFAULT_VALUE_PROPERTY
    value = event.properties.get(name)
    if meter.aggregation in COUNTED and (value is None or meter.aggregation == "unique_count"):
        return Decimal(1)
    if value is None:
        raise InvalidInput(
            f"meter {meter.meter!r} reads its quantity from property {name!r}, which is missing",
            field=f"properties.{name}",
        )
    return bounds.parse_decimal(value, f"properties.{name}")


def to_usage(
    app: Any, meters: Meters, system: str, event: Submitted, now: datetime, time_field: str
) -> UsageInput | Refused:
    """The usage event a dialect's event stands for, or why it cannot be read."""
    event_id = event.event_id if isinstance(event.event_id, str) else None
    try:
        bounds.check_id(event.event_id, "event_id", bounds.MAX_EVENT_ID_LENGTH)
        bounds.check_id(event.customer, "customer_id")
        bounds.check_id(event.meter, "meter")
        if not isinstance(event.properties, Mapping):
            raise InvalidInput("must be an object", field="properties")
        occurred_at = event_time(event.occurred_at, time_field, now)
        quantity = _quantity(meters, event)
    except BillingError as error:
        return Refused(event_id, error.field or "body", error.reason, error.code)
    customer_id = app.resolve_customer(system, event.customer)
    return UsageInput(
        event.event_id, customer_id, event.meter, quantity, occurred_at, dict(event.properties)
    )


def _audit(app: Any, caller: Principal, system: str, refused: Refused, event: Any) -> None:
    app.record_refusal(
        caller,
        "usage.ingest",
        refused.reason,
        {
            "customer_id": getattr(event, "customer", None)
            if isinstance(getattr(event, "customer", None), str)
            else None,
            "meter": getattr(event, "meter", None)
            if isinstance(getattr(event, "meter", None), str)
            else None,
            "event_id": refused.event_id,
            "field": refused.field,
            "code": refused.code,
            "dialect": system,
        },
    )


def _prepare(
    app: Any, caller: Principal, system: str, events: Sequence[Submitted | Refused], time_field: str
) -> tuple[list[UsageResult | None], list[tuple[int, UsageInput]]]:
    """Each event as usage, or its refusal (audited); this reads the store, so off the loop."""
    now = app.clock()
    meters = Meters(app)
    results: list[UsageResult | None] = [None] * len(events)
    parsed: list[tuple[int, UsageInput]] = []
    for index, event in enumerate(events):
        item = (
            event
            if isinstance(event, Refused)
            else to_usage(app, meters, system, event, now, time_field)
        )
        if isinstance(item, Refused):
            _audit(app, caller, system, item, event)
            results[index] = UsageResult(
                item.event_id or "",
                "rejected",
                detail=item.reason,
                field=item.field,
                code=item.code,
            )
        else:
            parsed.append((index, item))
    return results, parsed


async def record(
    request: Request[Any, Any, Any],
    caller: Principal,
    system: str,
    events: Sequence[Submitted | Refused],
    time_field: str,
) -> list[UsageResult]:
    """Record a dialect's events through ingest: one event shares the group commit with
    /v1/usage, several are committed together. Results in input order."""
    app = services(request).app
    results, parsed = await anyio.to_thread.run_sync(
        lambda: _prepare(app, caller, system, events, time_field)
    )
    if len(parsed) == 1 and len(events) == 1:
        results[parsed[0][0]] = await request.app.state.committer.record_async(parsed[0][1], caller)
    elif parsed:
        recorded = await anyio.to_thread.run_sync(
            lambda: app.record_usage([p for _, p in parsed], caller)
        )
        for (index, _), result in zip(parsed, recorded, strict=True):
            results[index] = result
    answered = [r for r in results if r is not None]
    request.app.state.metrics.ingested(system, [r.status for r in answered])
    return answered
