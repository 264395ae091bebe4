"""Identities: keys, emitters and their grants. Only admins manage them."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, post

from api.http import responses as r
from api.http import schemas as s
from api.http.auth import requires
from api.http.common import SECURITY, WRITE, WRITE_ON, services
from api.http.errors import error_responses
from billing_domain.identity import Principal

_REMOVAL = error_responses(401, 403, 404, 429, 503)


class IdentityController(Controller):
    path = "/v1"
    tags = ["keys"]  # noqa: RUF012
    security = SECURITY
    guards = [requires("admin")]  # noqa: RUF012

    @post("/keys", status_code=201, sync_to_thread=True, responses=WRITE, summary="Create a key")
    def create_key(
        self, request: Request[Any, Any, Any], data: s.KeyIn, caller: Principal
    ) -> r.KeyCreatedOut:
        """Only the key's hash is stored; the response is the only time the key is shown."""
        key_id, key = services(request).app.create_key(
            data.role, data.name, data.emitter_id, caller
        )
        return r.KeyCreatedOut(
            key_id=key_id, key=key, role=data.role, name=data.name, emitter_id=data.emitter_id
        )

    @delete(
        "/keys/{key_id:str}",
        status_code=200,
        sync_to_thread=True,
        responses=_REMOVAL,
        summary="Revoke a key at once",
    )
    def revoke_key(
        self, request: Request[Any, Any, Any], key_id: str, caller: Principal
    ) -> r.KeyRevokedOut:
        """The key authenticates nothing afterwards."""
        return r.KeyRevokedOut.of(services(request).app.revoke_key(key_id, caller))

    @post(
        "/emitters",
        status_code=201,
        sync_to_thread=True,
        responses=WRITE,
        summary="Register an emitter (a service that sends usage)",
    )
    def register_emitter(
        self, request: Request[Any, Any, Any], data: s.EmitterIn, caller: Principal
    ) -> r.EmitterOut:
        """Its keys are created with POST /v1/keys {role: emitter, emitter_id}."""
        emitter = services(request).app.register_emitter(data.emitter_id, data.name, caller)
        return r.EmitterOut(emitter_id=emitter.emitter_id, name=emitter.name)

    @post(
        "/emitters/{emitter_id:str}/grants",
        status_code=201,
        sync_to_thread=True,
        responses=WRITE_ON,
        summary="Allow an emitter a customer and meters",
    )
    def grant(
        self, request: Request[Any, Any, Any], emitter_id: str, data: s.GrantIn, caller: Principal
    ) -> r.GrantOut:
        """Delegated access is a grant on another customer, with its own validity."""
        return r.GrantOut.of(
            services(request).app.grant(
                emitter_id, data.customer_id, data.meters, data.valid_from, data.valid_until, caller
            )
        )

    @delete(
        "/emitters/{emitter_id:str}/grants/{grant_id:str}",
        status_code=200,
        sync_to_thread=True,
        responses=_REMOVAL,
        summary="Withdraw a grant",
    )
    def revoke_grant(
        self, request: Request[Any, Any, Any], emitter_id: str, grant_id: str, caller: Principal
    ) -> r.GrantRevokedOut:
        """Takes effect at once."""
        return r.GrantRevokedOut.of(
            services(request).app.revoke_grant(emitter_id, grant_id, caller)
        )
