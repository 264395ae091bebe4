"""Signing in and out of the console."""

from __future__ import annotations

import secrets
from typing import Any

import anyio
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.response import Redirect, Template

from api.console import roles
from api.console.signin import (
    COOKIE,
    CSRF_FIELD,
    LOGIN_COOKIE,
    SignInRefused,
    check_csrf,
    client_of,
    console_of,
    current,
    sign_in,
)
from api.console.view import HEADERS
from billing_domain.throttle import RateLimited

LOGIN_SECONDS = 15 * 60


def _cookie(request: Request[Any, Any, Any], name: str, value: str, max_age: int) -> Cookie:
    return Cookie(
        key=name,
        value=value,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=max_age,
    )


def _next(target: str | None) -> str:
    """Where to go after signing in: a console path on this site only."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_page(
    request: Request[Any, Any, Any], message: str | None, status_code: int = 200
) -> Template:
    token = secrets.token_urlsafe(32)
    return Template(
        template_name="login.html",
        context={
            "message": message,
            "csrf_field": CSRF_FIELD,
            "login_token": token,
            "next": _next(request.query_params.get("next")),
            "page": None,
        },
        headers=HEADERS,
        status_code=status_code,
        cookies=[_cookie(request, LOGIN_COOKIE, token, LOGIN_SECONDS)],
    )


@get("/login", name="console:login")
async def login_form(request: Request[Any, Any, Any]) -> Template:
    """The sign-in form: one field, `key`."""
    reason = request.query_params.get("reason")
    messages = {
        "expired": "Your session has ended. Sign in again.",
        "revoked": "Your key is no longer valid (revoked or expired). Sign in with a valid key.",
        "signed_out": "You are signed out.",
    }
    return _login_page(request, messages.get(reason or ""))


@post("/login", name="console:sign_in", status_code=303)
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    """Check the key with the application, open a session, set its cookie."""
    form = await request.form()
    expected = request.cookies.get(LOGIN_COOKIE) or ""
    sent = form.get(CSRF_FIELD) or ""
    if not expected or not isinstance(sent, str) or not secrets.compare_digest(sent, expected):
        return _login_page(
            request, "The sign-in form had expired. Enter your key again.", status_code=403
        )
    key = form.get("key")
    if not isinstance(key, str) or not key.strip():
        return _login_page(request, "Enter your key.", status_code=422)
    console = console_of(request)
    try:
        session_id, opened = await anyio.to_thread.run_sync(
            sign_in, console, key.strip(), client_of(request)
        )
    except SignInRefused as refused:
        return _login_page(request, refused.reason, status_code=401)
    except RateLimited as limited:
        return _login_page(
            request,
            f"Too many failed sign-ins from here. Wait {limited.retry_after} s and try again.",
            status_code=429,
        )
    del key
    role = opened.role
    target = _next(str(form.get("next") or ""))
    if target == "/" and not roles.may(role, "console:overview"):
        target = roles.home(role)
    response: Redirect = Redirect(target, status_code=303)
    response.set_cookie(_cookie(request, COOKIE, session_id, int(console.sessions.lifetime)))
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@get("/logout", name="console:logout_form")
async def logout_form(request: Request[Any, Any, Any]) -> Response[Any]:
    """A page with the sign-out button (signing out is a POST, with the CSRF token)."""
    session = console_of(request).sessions.get(request.cookies.get(COOKIE))
    if session is None:
        return Redirect("/login?reason=signed_out", status_code=303)
    return Template(
        template_name="logout.html",
        context={"csrf_field": CSRF_FIELD, "csrf": session.csrf, "page": None},
        headers=HEADERS,
    )


@post("/logout", name="console:logout", status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    """End this session and clear its cookie."""
    session = current(request)
    check_csrf(request, session, await request.form())
    console_of(request).sessions.close(request.cookies.get(COOKIE))
    response: Redirect = Redirect("/login?reason=signed_out", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
