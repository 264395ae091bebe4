"""The one place where refusals become HTTP statuses and bodies.

Every error body has `detail` (a sentence naming the field) and `errors`
(`[{field, reason, code}]`)."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from adapters.persistence import store_unavailable
from api.http.responses import ErrorOut
from billing_domain import errors as domain
from billing_domain.throttle import RateLimited

log = logging.getLogger("billing.http")

# Seconds a client should wait before retrying a request the store could not take.
RETRY_AFTER_SECONDS = 1

STATUS_OF: tuple[tuple[type[domain.BillingError], int], ...] = (
    (domain.NotAuthenticated, 401),
    (domain.NotAuthorised, 403),
    (domain.NotFound, 404),
    (RateLimited, 429),
    (domain.Conflict, 409),
    (domain.InvalidInput, 422),
    (domain.StoreContention, 503),
)


MEANING_OF: dict[int, str] = {
    400: "a malformed request, e.g. a body that is not JSON",
    401: "a missing, unknown, expired or revoked key (WWW-Authenticate: Bearer)",
    403: "the key's role or grants do not allow this call",
    404: "an unknown resource named in the path",
    409: "conflicts with what is recorded; the first stands",
    413: "the body is larger than the limit",
    422: "invalid input; `errors` names each field",
    429: "too many failed authentications from this client or key id; see Retry-After",
    503: "the store is unavailable or busy; nothing was recorded, retry after Retry-After",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The OpenAPI answers of a handler's refusals, each the `{detail, errors}` body; any
    request can be malformed (400)."""
    return {
        status: ResponseSpec(
            data_container=ErrorOut, description=MEANING_OF[status], generate_examples=False
        )
        for status in sorted({400, *statuses})
    }


def status_of(error: domain.BillingError) -> int:
    for cls, status in STATUS_OF:
        if isinstance(error, cls):
            return status
    return 400


def error_body(items: list[dict[str, Any]]) -> dict[str, Any]:
    detail = "; ".join(
        f"{i['field']}: {i['reason']}" if i.get("field") else i["reason"] for i in items
    )
    return {"detail": detail, "errors": items}


def respond(
    status: int, items: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(
        error_body(items), status_code=status, media_type=MediaType.JSON, headers=headers
    )


def on_billing_error(_: Request[Any, Any, Any], error: domain.BillingError) -> Response[Any]:
    status = status_of(error)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if isinstance(error, RateLimited):
        headers = {"Retry-After": str(error.retry_after)}
    return respond(
        status, [{"field": error.field, "reason": error.reason, "code": error.code}], headers
    )


def rejection(code: str | None, detail: str | None, field: str | None) -> domain.BillingError:
    """The refusal of one event the domain answered `rejected` (it answers a batch per event,
    so a single event's refusal comes back as a result): 403 without a grant, else 422."""
    kind = domain.NotAuthorised if code == domain.NotAuthorised.code else domain.InvalidInput
    error = kind(detail or "rejected", field=field)
    error.code = code or error.code
    return error


def pydantic_items(errors: list[dict[str, Any]], prefix: str = "") -> list[dict[str, Any]]:
    items = []
    for e in errors:
        location = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",))
        code = (
            "unknown_field"
            if e.get("type") == "extra_forbidden"
            else ("missing" if e.get("type") == "missing" else "invalid")
        )
        reason = "unknown field" if code == "unknown_field" else e.get("msg", "invalid")
        items.append({"field": f"{prefix}{location}" or None, "reason": reason, "code": code})
    return items


def on_validation_error(
    request: Request[Any, Any, Any], error: ValidationException
) -> Response[Any]:
    _count_refused_event(request)
    extra = error.extra if isinstance(error.extra, list) else []
    items = []
    for e in extra:
        if isinstance(e, dict):
            key = e.get("key") or ""
            reason = str(e.get("message") or "invalid")
            items.append(
                {
                    "field": key or None,
                    "reason": reason,
                    "code": "unknown_field" if "extra" in reason.lower() else "invalid",
                }
            )
    if not items:
        items = [{"field": None, "reason": error.detail or "invalid request", "code": "invalid"}]
    return respond(422, items)


def _count_refused_event(request: Request[Any, Any, Any]) -> None:
    """A single usage event refused by its schema is a rejected ingest for /metrics too."""
    if request.scope.get("path_template") == "/v1/usage" and request.method == "POST":
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.ingested("v1", ["rejected"])


def on_http_error(_: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    return respond(
        error.status_code,
        [{"field": None, "reason": error.detail, "code": f"http_{error.status_code}"}],
        dict(error.headers or {}),
    )


def on_unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    if store_unavailable(error):
        # Nothing was acknowledged: the same request is safe to send again.
        log.warning(
            "store unavailable on %s %s: %s", request.method, request.url.path, _first_line(error)
        )
        return respond(
            503,
            [
                {
                    "field": None,
                    "reason": "the store is unavailable; retry shortly",
                    "code": "store_unavailable",
                }
            ],
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    # The path, never the headers: they carry keys.
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return respond(500, [{"field": None, "reason": "internal error", "code": "internal"}])


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


HANDLERS: dict[Any, Any] = {
    domain.BillingError: on_billing_error,
    ValidationException: on_validation_error,
    HTTPException: on_http_error,
    Exception: on_unexpected,
}
