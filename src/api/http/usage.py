"""Usage: ingest (one event, a batch), compensations, adjustments, and usage per period."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from pydantic import ValidationError

from api.http import responses as r
from api.http import schemas as s
from api.http.auth import requires
from api.http.common import (
    READ_ONE,
    SECURITY,
    WRITE_ON,
    AsOf,
    Consistency,
    fresh,
    services,
    time_param,
)
from api.http.errors import error_responses, pydantic_items, rejection
from billing_domain import bounds
from billing_domain.application import check_period
from billing_domain.errors import InvalidInput
from billing_domain.identity import Principal
from billing_domain.usage import UsageInput, UsageResult, iso


def _usage_input(data: s.UsageIn) -> UsageInput:
    return UsageInput(
        data.event_id,
        data.customer_id,
        data.meter,
        data.quantity,
        data.occurred_at,
        data.properties,
    )


_REQUIRED = frozenset({"event_id", "customer_id", "meter", "quantity", "occurred_at"})
_ALL = _REQUIRED | {"properties"}


def usage_item(raw: Any) -> UsageInput:
    """One batch item as `UsageIn` validates it, without building the model for the common
    item: a JSON object of exactly its fields, plain identifiers, properties an object. The
    bounds checked are the same functions; anything else (and every refusal) goes through
    `UsageIn`, which raises the ValidationError that names the field. A property test holds
    the two to the same answers."""
    if type(raw) is dict and _REQUIRED <= raw.keys() <= _ALL:
        properties = raw.get("properties", {})
        event_id, customer_id, meter = raw["event_id"], raw["customer_id"], raw["meter"]
        if (
            type(properties) is dict
            and bounds.plain_id(event_id, bounds.MAX_EVENT_ID_LENGTH)
            and bounds.plain_id(customer_id)
            and bounds.plain_id(meter)
        ):
            try:
                quantity = bounds.parse_decimal(raw["quantity"], "quantity")
                occurred_at = bounds.parse_time(raw["occurred_at"], "occurred_at")
            except InvalidInput:
                pass  # UsageIn says why, in its words
            else:
                return UsageInput(
                    event_id, customer_id, meter, quantity, occurred_at, dict(properties)
                )
    return _usage_input(s.UsageIn.model_validate(raw))


def _batch_item(result: UsageResult) -> r.BatchItemOut:
    return r.BatchItemOut(
        event_id=result.event_id,
        status=result.status,  # type: ignore[arg-type]
        period=result.period,
        treatment=result.treatment,  # type: ignore[arg-type]
        received_at=result.received_at,
        detail=result.detail,
        field=result.field,
    )


def _invalid_item(index: int, raw: Any, error: ValidationError) -> r.BatchItemOut:
    first = pydantic_items([dict(e) for e in error.errors(include_url=False)])[0]
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    return r.BatchItemOut(
        event_id=event_id if isinstance(event_id, str) else None,
        status="rejected",
        detail=f"events[{index}].{first['field']}: {first['reason']}",
        field=first["field"],
    )


_CONFLICT = {
    409: ResponseSpec(
        data_container=r.UsageConflictOut,
        description="the same event_id came before with another payload; the first stands",
        generate_examples=False,
    )
}
_SINGLE_REFUSALS = {**error_responses(400, 401, 403, 413, 422, 429, 503), **_CONFLICT}


class UsageController(Controller):
    path = "/v1"
    tags = ["usage"]  # noqa: RUF012
    security = SECURITY

    @post(
        "/usage",
        status_code=202,
        guards=[requires("admin", "emitter")],
        responses=_SINGLE_REFUSALS,
        summary="Record one usage event",
    )
    async def ingest_one(
        self,
        request: Request[Any, Any, Any],
        data: s.UsageIn,
        caller: Principal,
    ) -> Response[r.UsageOut]:
        """202 accepted or duplicate (with the first receipt); 409 conflict (the first stands);
        422 names the field. Concurrent requests share one durable commit."""
        result = await request.app.state.committer.record_async(_usage_input(data), caller)
        request.app.state.metrics.ingested("v1", [result.status])
        if result.status == "rejected":
            raise rejection(result.code, result.detail, result.field)
        received_at = result.received_at or iso(services(request).app.clock())
        headers = {"X-Billing-Position": str(services(request).app.last_position)}
        if result.status == "conflict":
            conflict = r.UsageConflictOut(
                event_id=result.event_id,
                status="conflict",
                period=result.period,
                treatment=result.treatment,
                received_at=received_at,
                detail=result.detail or "conflict",
                errors=[r.ErrorItem(field="event_id", reason=result.detail or "", code="conflict")],
            )
            return Response(conflict, status_code=409, headers=headers)  # type: ignore[arg-type]
        receipt = r.UsageOut(
            event_id=result.event_id,
            status=result.status,
            period=result.period,
            treatment=result.treatment,
            received_at=received_at,
        )
        return Response(receipt, status_code=202, headers=headers, media_type=MediaType.JSON)

    @post(
        "/usage/batch",
        status_code=200,
        sync_to_thread=True,
        guards=[requires("admin", "emitter")],
        responses=error_responses(400, 401, 403, 413, 422, 429, 503),
        summary="Record up to 5,000 usage events atomically",
    )
    def ingest_batch(
        self,
        request: Request[Any, Any, Any],
        data: s.BatchIn,
        caller: Principal,
    ) -> r.BatchOut:
        """Per-event results in input order; the accepted events are committed together. A
        duplicate carries its first receipt's received_at."""
        parsed: list[UsageInput] = []
        slots: list[int | r.BatchItemOut] = []
        for index, raw in enumerate(data.events):
            try:
                item = usage_item(raw)
            except ValidationError as error:
                slots.append(_invalid_item(index, raw, error))
                continue
            slots.append(len(parsed))
            parsed.append(item)
        results = services(request).app.record_usage(parsed, caller) if parsed else []
        items = [_batch_item(results[x]) if isinstance(x, int) else x for x in slots]
        request.app.state.metrics.ingested("v1", [item.status for item in items])
        return r.BatchOut(results=items)

    @post(
        "/customers/{customer_id:str}/usage/{event_id:str}/compensations",
        status_code=201,
        sync_to_thread=True,
        guards=[requires("admin", "emitter")],
        responses=WRITE_ON,
        summary="Reverse all or part of a recorded event",
    )
    def compensate(
        self,
        request: Request[Any, Any, Any],
        customer_id: str,
        event_id: str,
        data: s.CompensationIn,
        caller: Principal,
    ) -> r.CompensationOut:
        """Idempotent by compensation_id; more than was recorded is 422."""
        return r.CompensationOut.of(
            services(request).app.compensate(
                customer_id, event_id, data.compensation_id, data.quantity, data.reason, caller
            )
        )

    @post(
        "/customers/{customer_id:str}/adjustments",
        status_code=201,
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE_ON,
        summary="A manual signed correction",
    )
    def adjust(
        self,
        request: Request[Any, Any, Any],
        customer_id: str,
        data: s.AdjustmentIn,
        caller: Principal,
    ) -> r.AdjustmentOut:
        """Kept with the actor's key and reason; idempotent by adjustment_id."""
        return r.AdjustmentOut.of(
            services(request).app.adjust(
                customer_id,
                data.adjustment_id,
                data.meter,
                data.quantity,
                data.occurred_at,
                data.reason,
                caller,
            )
        )

    @get(
        "/customers/{customer_id:str}/usage",
        sync_to_thread=True,
        guards=[requires("admin", "finance")],
        responses=READ_ONE,
        summary="Usage and running amount per meter for a period",
    )
    def usage(
        self,
        request: Request[Any, Any, Any],
        customer_id: str,
        period: str,
        caller: Principal,
        as_of: Annotated[str | None, AsOf] = None,
        consistency: Annotated[str | None, Consistency] = None,
    ) -> r.UsageReport:
        """Items per meter `{meter, quantity, amount}` with the projection's position and lag."""
        app = services(request).app
        check_period(period)
        moment = time_param(as_of, "as_of")
        app.get_customer(customer_id)
        fresh(request, consistency)
        report = services(request).read_models.usage(customer_id, period, as_of=moment)
        return r.UsageReport.of({"next_cursor": None, **report})
