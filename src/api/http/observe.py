"""Every request timed, counted and logged once; `GET /metrics` for Prometheus.

`observe(app)` wraps the application's outermost handler, so requests the router refuses
(404, 405) are seen too. The request line names the route template, method, status, latency,
request id (the caller's `X-Request-ID` when it is a short token, else a new one, answered
in the same header) and, when authenticated, the key id and role: never the key, never a
header."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from litestar import Litestar, MediaType, Request, Response, get

from api.http.auth import requires
from api.http.common import SECURITY
from api.http.errors import error_responses
from api.logs import REQUEST_LOGGER
from api.metrics import CONTENT_TYPE, UNMATCHED_ROUTE, Metrics

log = logging.getLogger(REQUEST_LOGGER)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _route(scope: dict[str, Any]) -> str:
    template = scope.get("path_template")
    return str(template) if isinstance(template, str) and template else UNMATCHED_ROUTE


def _request_id(scope: dict[str, Any]) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if REQUEST_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def observe(app: Litestar, metrics: Metrics) -> None:
    """Time, count and log every HTTP request `app` answers."""
    inner = app.asgi_handler

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await inner(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            route = _route(scope)
            method = scope.get("method", "-")
            metrics.request(route, method, status, seconds)
            caller = (scope.get("state") or {}).get("caller")
            line: dict[str, Any] = {
                "event": "request",
                "method": method,
                "route": route,
                "path": scope.get("path", ""),
                "status": status,
                "latency_ms": round(seconds * 1000, 3),
                "request_id": request_id,
            }
            key_id = getattr(caller, "key_id", None)
            if key_id is not None:
                line["key_id"] = key_id
                line["role"] = getattr(caller, "role", None)
            log.info("%s %s %s", method, route, status, extra=line)

    app.asgi_handler = handler


@get(
    "/metrics",
    tags=["operations"],
    sync_to_thread=True,
    guards=[requires("admin", "operator")],
    security=SECURITY,
    media_type=MediaType.TEXT,
    summary="Figures for Prometheus (text format)",
    responses=error_responses(401, 403, 429, 503),
)
def metrics_text(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Ingest counts by status and dialect, request latency by route, group-commit sizes,
    projection positions and lags, quarantined counts, the last reconciliation's findings."""
    figures: Metrics = request.app.state.metrics
    return Response(figures.scrape(), media_type=CONTENT_TYPE)
