"""Identities: keys, emitters and their grants. Admins manage them; operators and finance
see them, and operators may offboard an emitter."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.params import Parameter, QueryParameter

from api.http import identity_schemas as ids
from api.http import responses as r
from api.http import schemas as s
from api.http.auth import requires
from api.http.common import (
    READ,
    READ_ONE,
    SECURITY,
    WRITE,
    WRITE_ON,
    Consistency,
    Cursor,
    Limit,
    check_limit,
    fresh,
    services,
    time_param,
)
from api.http.errors import error_responses
from billing_domain.errors import InvalidInput
from billing_domain.identity import Principal
from billing_domain.usage import iso
from projections.activity import IdentityReads

_REMOVAL = error_responses(401, 403, 404, 429, 503)


class IdentityController(Controller):
    path = "/v1"
    tags = ["keys"]  # noqa: RUF012
    security = SECURITY

    @post(
        "/keys",
        status_code=201,
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE,
        summary="Create a key",
    )
    def create_key(
        self, request: Request[Any, Any, Any], data: s.KeyIn, caller: Principal
    ) -> ids.KeyCreatedOut:
        """Only the key's hash is stored; the response is the only time the key is shown."""
        key_id, key = services(request).app.create_key(
            data.role, data.name, data.emitter_id, caller, expires_at=data.expires_at
        )
        return ids.KeyCreatedOut(
            key_id=key_id,
            key=key,
            role=data.role,
            name=data.name,
            emitter_id=data.emitter_id,
            expires_at=iso(data.expires_at) if data.expires_at else None,
        )

    @delete(
        "/keys/{key_id:str}",
        status_code=200,
        sync_to_thread=True,
        guards=[requires("admin")],
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
        guards=[requires("admin")],
        responses=WRITE,
        summary="Register an emitter (a service that sends usage)",
    )
    def register_emitter(
        self, request: Request[Any, Any, Any], data: s.EmitterIn, caller: Principal
    ) -> ids.EmitterOut:
        """Its keys are created with POST /v1/keys {role: emitter, emitter_id}."""
        emitter = services(request).app.register_emitter(
            data.emitter_id, data.name, caller, owner=data.owner
        )
        return ids.EmitterOut(emitter_id=emitter.emitter_id, name=emitter.name, owner=emitter.owner)

    @post(
        "/emitters/{emitter_id:str}/grants",
        status_code=201,
        sync_to_thread=True,
        guards=[requires("admin")],
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
        guards=[requires("admin")],
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

    @patch(
        "/emitters/{emitter_id:str}",
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE_ON,
        summary="Change an emitter's name or owner",
    )
    def update_emitter(
        self,
        request: Request[Any, Any, Any],
        emitter_id: str,
        data: ids.EmitterPatchIn,
        caller: Principal,
    ) -> ids.EmitterOut:
        """Only the fields sent change; `owner: null` clears the owner."""
        changes = {f: getattr(data, f) for f in data.model_fields_set}
        emitter = services(request).app.update_emitter(emitter_id, caller, **changes)
        return ids.EmitterOut(emitter_id=emitter.emitter_id, name=emitter.name, owner=emitter.owner)

    @post(
        "/keys/{key_id:str}/rotate",
        status_code=201,
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE_ON,
        summary="Rotate a key: a new key, the old one kept for an overlap",
    )
    def rotate_key(
        self,
        request: Request[Any, Any, Any],
        key_id: str,
        caller: Principal,
        data: ids.RotateIn | None = None,
    ) -> ids.KeyRotatedOut:
        """Same role, name and emitter; the old key is refused after the overlap (default a
        day). A revoked, expired or already rotated key is 409. The new key is shown once."""
        body = data or ids.RotateIn()
        rotated = services(request).app.rotate_key(
            key_id, body.overlap_seconds, caller, expires_at=body.expires_at
        )
        return ids.KeyRotatedOut.of(_times(rotated))

    @get(
        "/emitters",
        sync_to_thread=True,
        guards=[requires("admin", "operator", "finance")],
        responses=READ,
        summary="Emitters with their owners",
    )
    def list_emitters(
        self,
        request: Request[Any, Any, Any],
        caller: Principal,
        cursor: Annotated[str | None, Cursor] = None,
        limit: Annotated[int, Limit] = 100,
        consistency: Annotated[str | None, Consistency] = None,
    ) -> ids.EmitterPageOut:
        """By emitter_id, paged."""
        check_limit(limit)
        fresh(request, consistency)
        return ids.EmitterPageOut.of(_reads(request).emitters(cursor=cursor, limit=limit))

    @get(
        "/emitters/{emitter_id:str}",
        sync_to_thread=True,
        guards=[requires("admin", "operator", "finance")],
        responses=READ_ONE,
        summary="An emitter with its grants and keys",
    )
    def get_emitter(
        self,
        request: Request[Any, Any, Any],
        emitter_id: str,
        caller: Principal,
        consistency: Annotated[str | None, Consistency] = None,
    ) -> ids.EmitterDetailOut:
        """Grants with their validity and how each stands now; keys never show their secret."""
        app = services(request).app
        emitter = app.emitter(emitter_id)
        fresh(request, consistency)
        keys = _reads(request).keys(
            now=app.clock(), last_uses=app.key_uses.snapshot(), emitter_id=emitter_id, limit=1000
        )
        return ids.EmitterDetailOut.of(
            {
                "emitter_id": emitter.emitter_id,
                "name": emitter.name,
                "owner": emitter.owner,
                "offboarded_at": iso(emitter.offboarded_at) if emitter.offboarded_at else None,
                "offboard_reason": emitter.offboard_reason,
                "grants": [_times(g) for g in emitter.grant_views(app.clock())],
                "keys": keys["items"],
            }
        )

    @get(
        "/emitters/{emitter_id:str}/activity",
        sync_to_thread=True,
        guards=[requires("admin", "operator", "finance")],
        responses=READ_ONE,
        summary="An emitter's activity per day",
    )
    def emitter_activity(
        self,
        request: Request[Any, Any, Any],
        emitter_id: str,
        caller: Principal,
        from_: Annotated[
            str | None,
            QueryParameter(name="from", description="first day, YYYY-MM-DD or RFC 3339"),
        ] = None,
        to: Annotated[str | None, Parameter(description="last day, inclusive")] = None,
        consistency: Annotated[str | None, Consistency] = None,
    ) -> ids.ActivityOut:
        """Usage accepted, retried (duplicate), conflicting and refused, per UTC day, with
        the customers and meters its accepted usage reached."""
        services(request).app.emitter(emitter_id)
        start, end = _day(from_, "from"), _day(to, "to")
        fresh(request, consistency)
        return ids.ActivityOut.of(_reads(request).activity(emitter_id, start, end))

    @get(
        "/keys",
        sync_to_thread=True,
        guards=[requires("admin", "operator", "finance")],
        responses=READ,
        summary="Keys (never their secret), with expiry and last use",
    )
    def list_keys(
        self,
        request: Request[Any, Any, Any],
        caller: Principal,
        stale_days: Annotated[
            int | None,
            Parameter(ge=1, le=36500, description="only keys unused for this many days"),
        ] = None,
        emitter_id: Annotated[str | None, Parameter(description="only this emitter's keys")] = None,
        cursor: Annotated[str | None, Cursor] = None,
        limit: Annotated[int, Limit] = 100,
        consistency: Annotated[str | None, Consistency] = None,
    ) -> ids.KeyPageOut:
        """In order of creation; last_used_at is accurate to a minute."""
        check_limit(limit)
        fresh(request, consistency)
        app = services(request).app
        return ids.KeyPageOut.of(
            _reads(request).keys(
                now=app.clock(),
                last_uses=app.key_uses.snapshot(),
                stale_days=stale_days,
                emitter_id=emitter_id,
                cursor=cursor,
                limit=limit,
            )
        )

    @post(
        "/emitters/{emitter_id:str}/offboard",
        status_code=200,
        sync_to_thread=True,
        guards=[requires("admin", "operator")],
        responses=WRITE_ON,
        summary="Offboard an emitter: every key revoked, every grant ended",
    )
    def offboard(
        self,
        request: Request[Any, Any, Any],
        emitter_id: str,
        data: ids.OffboardIn,
        caller: Principal,
    ) -> ids.OffboardedOut:
        """One write, audited as one act; no key can be issued for it afterwards (409). The
        usage it sent stays billed and attributed."""
        return ids.OffboardedOut.of(
            services(request).app.offboard_emitter(emitter_id, data.reason, caller)
        )


def _times(value: dict[str, Any]) -> dict[str, Any]:
    return {k: iso(v) if isinstance(v, datetime) else v for k, v in value.items()}


def _day(text: str | None, field: str) -> date | None:
    """A day as YYYY-MM-DD, or the UTC day of an RFC 3339 time."""
    if text is None:
        return None
    if len(text) == 10:
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise InvalidInput(
                "must be a day (YYYY-MM-DD) or an RFC 3339 time", field=field
            ) from None
    return time_param(text, field).astimezone(UTC).date()  # type: ignore[union-attr]


def _reads(request: Request[Any, Any, Any]) -> IdentityReads:
    return IdentityReads(services(request).read_models)
