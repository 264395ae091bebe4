"""Stripe's meter events, as the `stripe` package sends them: v1 `billing.MeterEvent.create`
(form-encoded) and the v2 meter event session and stream (JSON). `identifier` is the event id,
`event_name` the meter, `payload.stripe_customer_id` the customer (a Stripe external id or a
customer_id), the quantity the payload property the meter names (`value` by default).
Refusals answer Stripe's `{"error": {type, code, message, param}}`."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import anyio
from litestar import MediaType, Request, Response, Router, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers.base import BaseRouteHandler

from api.compat.common import Refused, Submitted, record
from api.http.auth import current_caller, requires
from api.http.body import decode_body
from api.http.common import services
from billing_domain import errors as domain
from billing_domain.identity import Principal
from billing_domain.throttle import RateLimited
from billing_domain.usage import UsageResult, iso

SYSTEM = "stripe"
CUSTOMER_KEY = "stripe_customer_id"
MAX_STREAM_EVENTS = 100
_PARAM = {
    "event_id": "identifier",
    "meter": "event_name",
    "occurred_at": "timestamp",
    "customer_id": f"payload[{CUSTOMER_KEY}]",
    "quantity": "payload[value]",
    "properties": "payload",
}


def _param(field: str | None, prefix: str = "") -> str | None:
    if field is None:
        return None
    if field.startswith("properties."):
        return f"{prefix}payload[{field.split('.', 1)[1]}]"
    return prefix + _PARAM.get(field, field)


def stripe_error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    kind: str = "invalid_request_error",
) -> Response[Any]:
    body = {"error": {"type": kind, "code": code, "message": message, "param": param}}
    return Response(body, status_code=status, media_type=MediaType.JSON)


def _on_billing_error(_: Request[Any, Any, Any], error: domain.BillingError) -> Response[Any]:
    if isinstance(error, domain.NotAuthenticated):
        return stripe_error(401, f"Invalid API Key provided: {error.reason}")
    if isinstance(error, domain.NotAuthorised):
        return stripe_error(403, error.reason, code="permission_denied")
    if isinstance(error, RateLimited):
        return stripe_error(429, error.reason, code="rate_limit", kind="rate_limit_error")
    if isinstance(error, domain.StoreContention):
        return stripe_error(503, error.reason, kind="api_error")
    return stripe_error(400, error.reason, code="parameter_invalid", param=_param(error.field))


def _on_http_error(_: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    status = error.status_code if isinstance(error, HTTPException) else 400
    kind = "api_error" if status >= 500 else "invalid_request_error"
    return stripe_error(status, str(error.detail), kind=kind)


HANDLERS: dict[Any, Any] = {
    domain.BillingError: _on_billing_error,
    ValidationException: _on_http_error,
    HTTPException: _on_http_error,
}


def _form(body: bytes) -> dict[str, Any]:
    """Stripe's form encoding: `payload[key]=value` nests one level."""
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise domain.InvalidInput("the body must be UTF-8 form data", field="body") from None
    form: dict[str, Any] = {}
    for key, value in pairs:
        name, _, rest = key.partition("[")
        if rest:
            inner = form.setdefault(name, {})
            if not isinstance(inner, dict):
                raise domain.InvalidInput("is given twice", field=name)
            inner[rest.rstrip("]")] = value
        elif name in form:
            raise domain.InvalidInput("is given twice", field=name)
        else:
            form[name] = value
    return form


def _submitted(event: Mapping[str, Any]) -> Submitted | Refused:
    payload = event.get("payload")
    if not isinstance(payload, Mapping):
        return Refused(None, "properties", "payload is required")
    if "event_name" not in event:
        return Refused(None, "meter", "event_name is required", "parameter_missing")
    identifier = event.get("identifier") or f"stripe_{uuid.uuid4().hex}"
    properties = {k: v for k, v in payload.items() if k != CUSTOMER_KEY}
    return Submitted(
        identifier,
        payload.get(CUSTOMER_KEY),
        event.get("event_name"),
        event.get("timestamp"),
        properties,
    )


def _meter_event(event: Submitted | Refused, result: UsageResult, now: datetime) -> dict[str, Any]:
    assert isinstance(event, Submitted)
    timestamp = event.occurred_at
    return {
        "object": "billing.meter_event",
        "created": int(now.timestamp()),
        "event_name": event.meter,
        "identifier": result.event_id,
        "livemode": False,
        "payload": {CUSTOMER_KEY: event.customer, **dict(event.properties)},
        "timestamp": int(timestamp) if str(timestamp).isdigit() else int(now.timestamp()),
    }


def _refusal(result: UsageResult, prefix: str = "") -> Response[Any]:
    if result.status == "conflict":
        return stripe_error(
            400,
            f"An event with identifier {result.event_id!r} was recorded with another payload",
            code="idempotency_key_in_use",
            param=f"{prefix}identifier",
            kind="idempotency_error",
        )
    if result.code == domain.NotAuthorised.code:
        return stripe_error(403, result.detail or "forbidden", code="permission_denied")
    code = (
        "resource_missing"
        if result.code in ("unknown_customer", "unknown_meter")
        else ("parameter_missing" if result.code == "parameter_missing" else "parameter_invalid")
    )
    param = _param(result.field, prefix)
    return stripe_error(
        400, f"{param}: {result.detail}" if param else result.detail or "", code=code, param=param
    )


@post("/v1/billing/meter_events", guards=[requires("admin", "emitter")], include_in_schema=False)
async def create_meter_event(request: Request[Any, Any, Any]) -> Response[Any]:
    """Stripe v1: one meter event, form-encoded; a retry answers the same event."""
    caller = current_caller(request)
    form = _form(await request.body())
    event = _submitted(form)
    now = services(request).app.clock()
    (result,) = await record(request, caller, SYSTEM, [event], "occurred_at")
    if result.status in ("accepted", "duplicate"):
        return Response(
            _meter_event(event, result, now), status_code=200, media_type=MediaType.JSON
        )
    return _refusal(result)


@post(
    "/v2/billing/meter_event_session",
    guards=[requires("admin", "emitter")],
    include_in_schema=False,
)
async def create_session(request: Request[Any, Any, Any]) -> Response[Any]:
    """Stripe v2: a token for the meter event stream, valid for 15 minutes."""
    caller = current_caller(request)
    app = services(request).app
    token, expires_at = await anyio.to_thread.run_sync(app.open_stream_session, caller)
    now = app.clock()
    body = {
        "id": f"mes_{uuid.uuid4().hex}",
        "object": "v2.billing.meter_event_session",
        "authentication_token": token,
        "created": iso(now),
        "expires_at": iso(expires_at),
        "livemode": False,
    }
    return Response(body, status_code=200, media_type=MediaType.JSON)


async def stream_session(
    connection: ASGIConnection[Any, Any, Any, Any], __: BaseRouteHandler
) -> None:
    """The guard of the stream: a session token from create_session, not a key."""
    app = connection.app.state.services.app
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    route = {
        "request": f"POST {connection.url.path}",
        "client": connection.client.host if connection.client else "-",
    }
    try:
        if scheme.lower() != "bearer" or not token.strip():
            raise domain.NotAuthenticated("send Authorization: Bearer <session token>")
        caller = await anyio.to_thread.run_sync(app.authenticate_stream, token.strip())
    except domain.NotAuthenticated as refused:
        reason = refused.reason
        await anyio.to_thread.run_sync(
            lambda: app.record_refusal(None, "request.refused", reason, route)
        )
        raise
    if caller.role not in ("admin", "emitter"):
        raise domain.NotAuthorised(f"role {caller.role!r} may not send meter events")
    connection.state.caller = caller


@post("/v2/billing/meter_event_stream", guards=[stream_session], include_in_schema=False)
async def stream_meter_events(request: Request[Any, Any, Any]) -> Response[Any]:
    """Stripe v2: up to 100 events in one request, recorded together; a retry is a duplicate."""
    caller: Principal = current_caller(request)
    body = decode_body(await request.body() or b"null")
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list) or not events:
        return stripe_error(
            400, "events must be a non-empty list", code="parameter_missing", param="events"
        )
    if len(events) > MAX_STREAM_EVENTS:
        return stripe_error(
            400,
            f"at most {MAX_STREAM_EVENTS} events per request",
            code="parameter_invalid",
            param="events",
        )
    submitted = [
        _submitted(e)
        if isinstance(e, Mapping)
        else Refused(None, "body", "an event must be an object")
        for e in events
    ]
    results = await record(request, caller, SYSTEM, submitted, "occurred_at")
    for index, result in enumerate(results):
        if result.status not in ("accepted", "duplicate"):
            # The others are recorded: sending the same request again only adds what failed.
            return _refusal(result, prefix=f"events[{index}].")
    return Response({}, status_code=200, media_type=MediaType.JSON)


ROUTER = Router(
    path="/compat/stripe",
    route_handlers=[create_meter_event, create_session, stream_meter_events],
    exception_handlers=HANDLERS,
)
