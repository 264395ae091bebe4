"""Bearer keys and the role each endpoint family needs. Refusals are audited, keys never."""

from __future__ import annotations

import re
import secrets
from typing import Any

import anyio
from litestar import Request

from billing_domain.errors import NotAuthenticated, NotAuthorised
from billing_domain.identity import Principal, hash_secret
from billing_domain.throttle import FailureThrottle, RateLimited

ROLES_FOR: dict[str, frozenset[str]] = {
    "ingest": frozenset({"admin", "emitter"}),
    "manage": frozenset({"admin"}),
    "close": frozenset({"admin", "operator"}),
    "read": frozenset({"admin", "finance"}),
    "reconcile": frozenset({"admin", "operator", "finance"}),
    "audit": frozenset({"admin", "finance"}),
    "projections": frozenset({"admin", "operator"}),
}


def _key_id_of(token: str) -> str | None:
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[0] == "bk" and re.fullmatch(r"[0-9a-f]{16}", parts[1]):
        return parts[1]
    return None


def _client_of(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "-"


def _bearer(request: Request[Any, Any, Any]) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _throttle(services: Any) -> FailureThrottle:
    return services.throttle  # type: ignore[no-any-return]


async def principal_async(request: Request[Any, Any, Any]) -> Principal:
    """As `principal`, without a thread hop for the bootstrap key (no store access needed)."""
    services = request.app.state.services
    admin_key = services.settings.admin_key
    token = _bearer(request)
    if (
        admin_key
        and token is not None
        and request.route_handler.opt["family"] in ROLES_FOR
        and "admin" in ROLES_FOR[request.route_handler.opt["family"]]
        and _throttle(services).clear(_client_of(request), _key_id_of(token))
        and secrets.compare_digest(hash_secret(token), hash_secret(admin_key))
    ):
        return Principal(emitter="bootstrap-admin", key_id="bootstrap", role="admin")
    return await anyio.to_thread.run_sync(principal, request)


def principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller, allowed for this route's family (route opt "family"), or a refusal.

    A client or key id that failed too often of late is refused (429) before its key is
    looked at; only failures count, so good keys are never slowed."""
    services = request.app.state.services
    family = request.route_handler.opt["family"]
    client = _client_of(request)
    route = {"request": f"{request.method} {request.url.path}", "client": client}
    token = _bearer(request)
    key_id = _key_id_of(token) if token else None
    anonymous = Principal(emitter="unknown", key_id=key_id or "-", role="none")
    try:
        _throttle(services).check(client, key_id)
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
        _throttle(services).failed(client, key_id)
        services.app.record_refusal(anonymous, "request.refused", refused.reason, route)
        raise NotAuthenticated(refused.reason, field="authorization") from None
    if caller.role not in ROLES_FOR[family]:
        reason = f"role {caller.role!r} may not {family}"
        services.app.record_refusal(caller, "request.refused", reason, route)
        raise NotAuthorised(reason)
    return caller
