"""Bearer keys and the guards that check a route's roles. Refusals are audited, keys never.

`requires(*roles)` is the one guard factory: a route names the roles allowed to call it. The
guard authenticates the caller, throttles clients and key ids that fail too often, audits
every refusal, and leaves the caller for the handler's `caller` dependency."""

from __future__ import annotations

import re
import secrets
from typing import Any

import anyio
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from billing_domain.errors import NotAuthenticated, NotAuthorised
from billing_domain.identity import Principal, hash_secret
from billing_domain.throttle import FailureThrottle, RateLimited

Connection = ASGIConnection[Any, Any, Any, Any]
ROLES = frozenset({"admin", "operator", "finance", "emitter"})
BOOTSTRAP_ADMIN = Principal(emitter="bootstrap-admin", key_id="bootstrap", role="admin")


def requires(*roles: str) -> Guard:
    """A guard admitting only callers whose key has one of `roles`."""
    allowed = frozenset(roles)
    if not allowed <= ROLES:
        raise ValueError(f"unknown roles: {sorted(allowed - ROLES)}")

    async def guard(connection: Connection, _: BaseRouteHandler) -> None:
        caller = _bootstrap_admin(connection, allowed)
        if caller is None:
            caller = await anyio.to_thread.run_sync(authorise, connection, allowed)
        connection.state.caller = caller

    guard.roles = allowed  # type: ignore[attr-defined]
    return guard


def current_caller(request: Connection) -> Principal:
    """The caller its route's guard admitted (the `caller` dependency)."""
    return request.state.caller  # type: ignore[no-any-return]


def _key_id_of(token: str) -> str | None:
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[0] == "bk" and re.fullmatch(r"[0-9a-f]{16}", parts[1]):
        return parts[1]
    return None


def _client_of(connection: Connection) -> str:
    return connection.client.host if connection.client else "-"


def _bearer(connection: Connection) -> str | None:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _throttle(services: Any) -> FailureThrottle:
    return services.throttle  # type: ignore[no-any-return]


def _bootstrap_admin(connection: Connection, allowed: frozenset[str]) -> Principal | None:
    """The bootstrap key, checked without a thread hop (no store access needed)."""
    services = connection.app.state.services
    admin_key = services.settings.admin_key
    token = _bearer(connection)
    if (
        admin_key
        and token is not None
        and "admin" in allowed
        and _throttle(services).clear(_client_of(connection), _key_id_of(token))
        and secrets.compare_digest(hash_secret(token), hash_secret(admin_key))
    ):
        return BOOTSTRAP_ADMIN
    return None


def authorise(connection: Connection, allowed: frozenset[str]) -> Principal:
    """The caller, if its key is valid and its role allowed; otherwise a refusal, audited.

    A client that failed too often of late is refused (429) before its key is looked at. A
    key id that failed too often is still checked, so whoever holds the real key is not locked
    out by someone guessing at its id; a wrong key for it is then 429, not 401. Only failures
    count, so good keys are never slowed."""
    services = connection.app.state.services
    method = connection.scope.get("method", "-")
    client = _client_of(connection)
    route = {"request": f"{method} {connection.url.path}", "client": client}
    token = _bearer(connection)
    key_id = _key_id_of(token) if token else None
    anonymous = Principal(emitter="unknown", key_id=key_id or "-", role="none")
    try:
        _throttle(services).check(client, None)
    except RateLimited as limited:
        services.app.record_refusal(anonymous, "request.rate_limited", limited.reason, route)
        raise
    if token is None:
        _throttle(services).failed(client, None)
        services.app.record_refusal(None, "request.refused", "missing bearer key", route)
        raise NotAuthenticated("send Authorization: Bearer <key>", field="authorization")
    try:
        caller: Principal = services.app.authenticate(token)
    except NotAuthenticated as refused:
        try:
            _throttle(services).check(None, key_id)
        except RateLimited as limited:
            _throttle(services).failed(client, key_id)
            services.app.record_refusal(anonymous, "request.rate_limited", limited.reason, route)
            raise
        _throttle(services).failed(client, key_id)
        services.app.record_refusal(anonymous, "request.refused", refused.reason, route)
        raise NotAuthenticated(refused.reason, field="authorization") from None
    if caller.role not in allowed:
        template = connection.scope.get("path_template") or connection.url.path
        reason = f"role {caller.role!r} may not {method} {template}"
        services.app.record_refusal(caller, "request.refused", reason, route)
        raise NotAuthorised(reason)
    return caller
