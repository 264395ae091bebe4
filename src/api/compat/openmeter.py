"""OpenMeter's ingest, as the `openmeter` package sends it: CloudEvents on `POST /api/v1/events`
(`application/cloudevents+json`, `application/cloudevents-batch+json`, plain JSON, or binary
mode with `ce-*` headers as the `cloudevents` package writes them); 204 when recorded. `id` is
the event id, `subject` the customer (an OpenMeter external id or a customer_id), `type` the
meter, `time` when it occurred, the quantity `data[<meter field>]` (`value` by default).
Refusals answer RFC 7807 problems (`application/problem+json`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import Request, Response, Router, post
from litestar.exceptions import HTTPException, ValidationException

from api.compat.common import Refused, Submitted, record
from api.http.auth import current_caller, requires
from api.http.body import decode_body
from billing_domain import bounds
from billing_domain import errors as domain
from billing_domain.throttle import RateLimited
from billing_domain.usage import UsageResult

SYSTEM = "openmeter"
PROBLEM = "application/problem+json"
_FIELD = {
    "event_id": "id",
    "meter": "type",
    "occurred_at": "time",
    "customer_id": "subject",
    "quantity": "data",
}
_TITLE = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def problem(status: int, detail: str, field: str | None = None) -> Response[Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLE.get(status, "Bad Request"),
        "status": status,
        "detail": detail,
    }
    if field is not None:
        body["extensions"] = {"field": field}
    return Response(body, status_code=status, media_type=PROBLEM)


def _field(field: str | None, prefix: str = "") -> str | None:
    if field is None:
        return None
    if field.startswith("properties."):
        return f"{prefix}data.{field.split('.', 1)[1]}"
    return prefix + _FIELD.get(field, field)


def _on_billing_error(_: Request[Any, Any, Any], error: domain.BillingError) -> Response[Any]:
    if isinstance(error, domain.NotAuthenticated):
        return problem(401, error.reason)
    if isinstance(error, domain.NotAuthorised):
        return problem(403, error.reason)
    if isinstance(error, RateLimited):
        return problem(429, error.reason)
    if isinstance(error, domain.StoreContention):
        return problem(503, error.reason)
    field = _field(error.field)
    return problem(400, f"{field}: {error.reason}" if field else error.reason, field)


def _on_http_error(_: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    return problem(error.status_code, str(error.detail))


HANDLERS: dict[Any, Any] = {
    domain.BillingError: _on_billing_error,
    ValidationException: _on_http_error,
    HTTPException: _on_http_error,
}


def _submitted(event: Any) -> Submitted | Refused:
    if not isinstance(event, Mapping):
        return Refused(None, "body", "a CloudEvent must be an object")
    data = event.get("data")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        return Refused(
            event.get("id") if isinstance(event.get("id"), str) else None,
            "quantity",
            "data must be a JSON object",
        )
    return Submitted(
        event.get("id"), event.get("subject"), event.get("type"), event.get("time"), data
    )


def _binary(request: Request[Any, Any, Any], body: Any) -> dict[str, Any]:
    """A CloudEvent in binary mode: attributes in `ce-*` headers, the body its data."""
    attributes = {
        name[3:]: value for name, value in request.headers.items() if name.lower().startswith("ce-")
    }
    return {**attributes, "data": body}


def _refusal(result: UsageResult, prefix: str = "") -> Response[Any]:
    if result.status == "conflict":
        return problem(
            409,
            f"event {result.event_id!r} was recorded with another payload; the first stands",
            f"{prefix}id",
        )
    if result.code == domain.NotAuthorised.code:
        return problem(403, result.detail or "forbidden")
    field = _field(result.field, prefix)
    detail = f"{field}: {result.detail}" if field else result.detail or "invalid"
    return problem(400, detail, field)


@post("/api/v1/events", guards=[requires("admin", "emitter")], include_in_schema=False)
async def ingest_events(request: Request[Any, Any, Any]) -> Response[Any]:
    """One CloudEvent or a batch; 204 once every event is recorded (a retry is a duplicate)."""
    body = decode_body(await request.body() or b"null")
    batch = isinstance(body, list)
    if "ce-id" in request.headers:
        events: list[Any] = [_binary(request, body)]
        batch = False
    else:
        events = body if batch else [body]
    if not events:
        return problem(400, "a batch must hold at least one event", "body")
    if len(events) > bounds.MAX_BATCH_EVENTS:
        return problem(400, f"at most {bounds.MAX_BATCH_EVENTS} events per batch", "body")
    submitted = [_submitted(e) for e in events]
    results = await record(request, current_caller(request), SYSTEM, submitted, "occurred_at")
    for index, result in enumerate(results):
        if result.status not in ("accepted", "duplicate"):
            # The others are recorded: sending the same batch again only adds what failed.
            return _refusal(result, f"[{index}]." if batch else "")
    return Response(None, status_code=204)


ROUTER = Router(
    path="/compat/openmeter",
    route_handlers=[ingest_events],
    exception_handlers=HANDLERS,
)
