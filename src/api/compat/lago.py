"""Lago's events, as `lago-python-client` sends them (`api_url=http://HOST/compat/lago/`):
`POST /api/v1/events {event}` and `POST /api/v1/events/batch {events}`. `transaction_id` is
the event id, `code` the meter, `external_customer_id` or `external_subscription_id` the
customer (a Lago external id or a customer_id), the quantity the property the meter names
(Lago's billable metric field; `value` by default), `timestamp` Unix seconds or RFC 3339.
Refusals answer Lago's `{status, error, code, error_details}`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import MediaType, Request, Response, Router, post
from litestar.exceptions import HTTPException, ValidationException

from api.compat.common import Refused, Submitted, record
from api.http.auth import current_caller, requires
from api.http.body import decode_body
from api.http.common import services
from billing_domain import bounds
from billing_domain import errors as domain
from billing_domain.throttle import RateLimited
from billing_domain.usage import UsageResult, iso

SYSTEM = "lago"
_FIELD = {
    "event_id": "transaction_id",
    "meter": "code",
    "occurred_at": "timestamp",
    "customer_id": "external_customer_id",
    "quantity": "properties",
}
_TITLE = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def lago_error(
    status: int, code: str | None = None, details: dict[str, Any] | None = None
) -> Response[Any]:
    body: dict[str, Any] = {"status": status, "error": _TITLE.get(status, "Bad Request")}
    if code is not None:
        body["code"] = code
    if details is not None:
        body["error_details"] = details
    return Response(body, status_code=status, media_type=MediaType.JSON)


def _field(field: str | None) -> str:
    if field is None:
        return "base"
    if field.startswith("properties."):
        return field
    return _FIELD.get(field, field)


def _on_billing_error(_: Request[Any, Any, Any], error: domain.BillingError) -> Response[Any]:
    if isinstance(error, domain.NotAuthenticated):
        return lago_error(401)
    if isinstance(error, domain.NotAuthorised):
        return lago_error(403, "forbidden", {"base": [error.reason]})
    if isinstance(error, RateLimited):
        return lago_error(429, "too_many_requests")
    if isinstance(error, domain.StoreContention):
        return lago_error(503, "service_unavailable")
    return lago_error(422, "validation_errors", {_field(error.field): [error.reason]})


def _on_http_error(_: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    status = error.status_code if error.status_code != 400 else 422
    return lago_error(status, "validation_errors", {"base": [str(error.detail)]})


HANDLERS: dict[Any, Any] = {
    domain.BillingError: _on_billing_error,
    ValidationException: _on_http_error,
    HTTPException: _on_http_error,
}


def _submitted(event: Any) -> Submitted | Refused:
    if not isinstance(event, Mapping):
        return Refused(None, "base", "an event must be an object")
    customer = event.get("external_customer_id") or event.get("external_subscription_id")
    properties = event.get("properties") or {}
    return Submitted(
        event.get("transaction_id"), customer, event.get("code"), event.get("timestamp"), properties
    )


def _event(event: Submitted | Refused, result: UsageResult, now: str) -> dict[str, Any]:
    assert isinstance(event, Submitted)
    timestamp = event.occurred_at
    return {
        "lago_id": None,
        "transaction_id": result.event_id,
        "lago_customer_id": None,
        "lago_subscription_id": None,
        "external_customer_id": event.customer,
        "external_subscription_id": event.customer,
        "code": event.meter,
        "timestamp": str(timestamp) if timestamp is not None else now,
        "precise_total_amount_cents": None,
        "properties": dict(event.properties),
        "created_at": result.received_at or now,
    }


def _details(result: UsageResult) -> dict[str, list[str]]:
    if result.status == "conflict":
        return {"transaction_id": ["value_already_exist"]}
    return {_field(result.field): [result.detail or "invalid"]}


def _refusal(result: UsageResult) -> Response[Any]:
    if result.code == domain.NotAuthorised.code:
        return lago_error(403, "forbidden", {"base": [result.detail or "forbidden"]})
    if result.code == domain.UnknownCustomer.code:
        return lago_error(404, "customer_not_found")
    if result.code == domain.UnknownMeter.code:
        return lago_error(404, "billable_metric_not_found")
    return lago_error(422, "validation_errors", _details(result))


async def _body(request: Request[Any, Any, Any]) -> Any:
    return decode_body(await request.body() or b"null")


@post("/api/v1/events", guards=[requires("admin", "emitter")], include_in_schema=False)
async def create_event(request: Request[Any, Any, Any]) -> Response[Any]:
    """One event `{event: {...}}`; a retry answers the same event."""
    body = await _body(request)
    event = _submitted(body.get("event") if isinstance(body, Mapping) else None)
    (result,) = await record(request, current_caller(request), SYSTEM, [event], "occurred_at")
    if result.status in ("accepted", "duplicate"):
        now = iso(services(request).app.clock())
        return Response({"event": _event(event, result, now)}, status_code=200)
    return _refusal(result)


@post("/api/v1/events/batch", guards=[requires("admin", "emitter")], include_in_schema=False)
async def create_batch(request: Request[Any, Any, Any]) -> Response[Any]:
    """Up to 100 events `{events: [...]}` recorded together; a retried batch is not billed twice.
    Refused events are listed by index in `error_details`; the others are recorded, so the same
    batch can be sent again once corrected."""
    body = await _body(request)
    events = body.get("events") if isinstance(body, Mapping) else None
    if not isinstance(events, list) or not events:
        return lago_error(422, "validation_errors", {"events": ["must be a non-empty list"]})
    if len(events) > bounds.MAX_BATCH_EVENTS:
        return lago_error(
            422, "validation_errors", {"events": [f"at most {bounds.MAX_BATCH_EVENTS} events"]}
        )
    submitted = [_submitted(e) for e in events]
    results = await record(request, current_caller(request), SYSTEM, submitted, "occurred_at")
    failed = {
        str(i): _details(r)
        for i, r in enumerate(results)
        if r.status not in ("accepted", "duplicate")
    }
    if failed:
        return lago_error(422, "validation_errors", failed)
    now = iso(services(request).app.clock())
    return Response(
        {"events": [_event(e, r, now) for e, r in zip(submitted, results, strict=True)]},
        status_code=200,
    )


ROUTER = Router(
    path="/compat/lago",
    route_handlers=[create_event, create_batch],
    exception_handlers=HANDLERS,
)
