"""Bearer keys and the role each endpoint family needs. Refusals are audited, keys never."""

from __future__ import annotations

import secrets
from typing import Any

import anyio
from litestar import Request

from billing_domain.errors import NotAuthenticated, NotAuthorised
from billing_domain.identity import Principal

ROLES_FOR: dict[str, frozenset[str]] = {
    "ingest": frozenset({"admin", "emitter"}),
    "manage": frozenset({"admin"}),
    "close": frozenset({"admin", "operator"}),
    "read": frozenset({"admin", "finance"}),
    "reconcile": frozenset({"admin", "operator", "finance"}),
    "audit": frozenset({"admin", "finance"}),
    "projections": frozenset({"admin", "operator"}),
}


def _key_id_of(token: str) -> str:
    parts = token.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "bk" and len(parts[1]) == 16 else "-"


async def principal_async(request: Request[Any, Any, Any]) -> Principal:
    """As `principal`, without a thread hop for the bootstrap key (no store access needed)."""
    services = request.app.state.services
    admin_key = services.settings.admin_key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if (
        admin_key
        and scheme.lower() == "bearer"
        and request.route_handler.opt["family"] in ROLES_FOR
        and "admin" in ROLES_FOR[request.route_handler.opt["family"]]
        and secrets.compare_digest(token.strip().encode(), admin_key.encode())
    ):
        return Principal(emitter="bootstrap-admin", key_id="bootstrap", role="admin")
    return await anyio.to_thread.run_sync(principal, request)


def principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller, allowed for this route's family (route opt "family"), or a refusal."""
    services = request.app.state.services
    family = request.route_handler.opt["family"]
    route = {"request": f"{request.method} {request.url.path}"}
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        services.app.record_refusal(None, "request.refused", "missing bearer key", route)
        raise NotAuthenticated("send Authorization: Bearer <key>", field="authorization")
    try:
        caller = services.app.authenticate(token)
    except NotAuthenticated as refused:
        anonymous = Principal(emitter="unknown", key_id=_key_id_of(token), role="none")
        services.app.record_refusal(anonymous, "request.refused", refused.reason, route)
        raise NotAuthenticated(refused.reason, field="authorization") from None
    if caller.role not in ROLES_FOR[family]:
        reason = f"role {caller.role!r} may not {family}"
        services.app.record_refusal(caller, "request.refused", reason, route)
        raise NotAuthorised(reason)
    return caller
