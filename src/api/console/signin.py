"""Who is using the console: signing in with a key, the session behind each request, the role
each page needs and the CSRF token every form and htmx POST carries."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from litestar import Request

from api.bootstrap import Services
from api.console.roles import CONSOLE
from api.console.sessions import Session, SessionStore
from billing_domain.errors import NotAuthenticated, NotAuthorised
from billing_domain.identity import Key, hash_secret
from billing_domain.ids import key_uuid

COOKIE = "billing_console"
LOGIN_COOKIE = "billing_console_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


class SignInRequired(Exception):
    """No session, an expired one, or one whose key no longer authenticates."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class CsrfRefused(Exception):
    """A form or htmx POST without this session's CSRF token."""

    reason = "this form has expired or did not come from the console; reload the page and retry"


class SignInRefused(Exception):
    """A key that may not open a console session, with what to tell the person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Console:
    services: Services
    sessions: SessionStore


def console_of(request: Request[Any, Any, Any]) -> Console:
    return request.app.state["console"]  # type: ignore[no-any-return]


def client_of(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "-"


def _key_id_of(token: str) -> str | None:
    parts = token.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "bk" else None


def sign_in(console: Console, token: str, client: str) -> tuple[str, Session]:
    """Open a session for a key through the application's own authentication; failures count
    against the client and key id as the API's do, and are audited without the key."""
    services = console.services
    key_id = _key_id_of(token)
    route = {"request": "POST /login", "client": client}
    services.throttle.check(client, key_id)
    try:
        caller = services.app.authenticate(token)
    except NotAuthenticated as refused:
        services.throttle.failed(client, key_id)
        services.app.record_refusal(None, "request.refused", refused.reason, route)
        raise SignInRefused(
            "That key was not accepted (unknown, revoked or mistyped). Check it and try again."
        ) from None
    if caller.role == "emitter":
        services.app.record_refusal(caller, "request.refused", "emitter key at console", route)
        raise SignInRefused(
            "This is an emitter key: it sends usage and cannot sign in to the console. "
            "Use an admin, operator or finance key."
        )
    if caller.role not in CONSOLE:
        raise SignInRefused(f"A {caller.role} key cannot sign in to the console.")
    secret_hash = hash_secret(token) if caller.key_id == "bootstrap" else None
    return console.sessions.open(caller.key_id, caller.role, caller.emitter, secret_hash)


def still_valid(services: Services, session: Session) -> bool:
    """Whether the key the session was opened with would still be accepted: not revoked, not
    expired, and for the bootstrap admin the same BILLING_ADMIN_KEY."""
    if session.key_id == "bootstrap":
        admin_key = services.settings.admin_key
        if not admin_key or not session.secret_hash:
            return False
        return secrets.compare_digest(hash_secret(admin_key), session.secret_hash)
    try:
        key: Any = services.app.repository.get(key_uuid(session.key_id))
    except AggregateNotFoundError:
        return False
    if not isinstance(key, Key) or key.revoked:
        return False
    expires_at = getattr(key, "expires_at", None)
    return expires_at is None or services.app.clock() < expires_at


def current(request: Request[Any, Any, Any]) -> Session:
    """The signed-in session of this request, checked against its key on every request."""
    console = console_of(request)
    session = console.sessions.get(request.cookies.get(COOKIE))
    if session is None:
        raise SignInRequired()
    if not still_valid(console.services, session):
        console.sessions.close_key(session.key_id)
        raise SignInRequired("Your key is no longer valid (revoked or expired): sign in again.")
    return session


def require(session: Session, roles: frozenset[str], what: str) -> None:
    if session.role not in roles:
        article = "an" if session.role[:1] in "aeiou" else "a"
        raise NotAuthorised(f"{article} {session.role} key may not {what}")


def check_csrf(request: Request[Any, Any, Any], session: Session, form: Any) -> None:
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not isinstance(sent, str) or not secrets.compare_digest(sent, session.csrf):
        raise CsrfRefused()
