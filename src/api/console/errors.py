"""Console errors as pages a person can read (never a traceback); a lost session goes to the
sign-in form, and for htmx requests the whole page is sent there."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.response import Redirect, Template

from adapters.persistence import store_unavailable
from api.console import roles
from api.console.signin import COOKIE, CsrfRefused, SignInRequired, console_of
from api.console.view import HEADERS, GoTo, is_htmx
from api.http.errors import status_of
from billing_domain.errors import BillingError
from billing_domain.throttle import RateLimited
from projections.errors import InvalidCursor, NotQuarantined, UnknownProjection

log = logging.getLogger("billing.console")

TITLES = {
    400: "That request could not be read",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    422: "Please check the input",
    429: "Too many attempts",
    500: "Something went wrong",
    503: "The store is unavailable",
}


def error_page(
    request: Request[Any, Any, Any], status: int, message: str, field: str | None = None
) -> Response[Any]:
    if is_htmx(request):
        # a fragment where the swapped content would go: the page stays usable
        text = f"{field}: {message}" if field else message
        return Response(
            f'<div class="error" role="alert"><strong>{TITLES.get(status, "Error")}.</strong> '
            f"{_escape(text)}</div>",
            status_code=status,
            media_type="text/html",
            headers={**HEADERS, "HX-Reswap": "innerHTML"},
        )
    return Template(
        template_name="error.html",
        context={
            "status": status,
            "title": TITLES.get(status, "Error"),
            "message": message,
            "field": field,
            "page": None,
            "home": _home(request),
        },
        status_code=status,
        headers=HEADERS,
    )


def _home(request: Request[Any, Any, Any]) -> str | None:
    """The first page the signed-in role may open (None when not signed in)."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    try:
        session = console_of(request).sessions.get(cookie)
    except Exception:  # the store is down: the error page still answers
        return "/"
    return None if session is None else roles.home(session.role)


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def on_sign_in_required(request: Request[Any, Any, Any], error: SignInRequired) -> Response[Any]:
    reason = "revoked" if error.reason else "expired"
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = f"/login?reason={reason}&next={quote(back, safe='')}"
    if request.method != "GET":
        target = f"/login?reason={reason}"
    if is_htmx(request):
        return Response(b"", status_code=401, headers={"HX-Redirect": target})
    response: Redirect = Redirect(target, status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def on_go_to(_: Request[Any, Any, Any], moved: GoTo) -> Response[Any]:
    return Redirect(moved.url, status_code=303)


def on_csrf(request: Request[Any, Any, Any], error: CsrfRefused) -> Response[Any]:
    return error_page(request, 403, error.reason)


def on_billing_error(request: Request[Any, Any, Any], error: BillingError) -> Response[Any]:
    status = status_of(error)
    if isinstance(error, RateLimited):
        status = 429
    return error_page(request, status, error.reason, error.field)


def on_projection_error(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    status = 400 if isinstance(error, InvalidCursor) else 404
    return error_page(request, status, str(error))


def on_http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    return error_page(request, error.status_code, str(error.detail))


def on_unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    if store_unavailable(error):
        log.warning("store unavailable on %s %s", request.method, request.url.path)
        return error_page(
            request, 503, "The store did not answer. Nothing was changed; try again shortly."
        )
    log.exception("unexpected error on console %s %s", request.method, request.url.path)
    return error_page(
        request, 500, "The console could not show this. The error is in the service's log."
    )


HANDLERS: dict[Any, Any] = {
    SignInRequired: on_sign_in_required,
    GoTo: on_go_to,
    CsrfRefused: on_csrf,
    BillingError: on_billing_error,
    InvalidCursor: on_projection_error,
    UnknownProjection: on_projection_error,
    NotQuarantined: on_projection_error,
    ValidationException: on_http_error,
    HTTPException: on_http_error,
    Exception: on_unexpected,
}
