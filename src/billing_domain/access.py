"""Emitters, keys, grants, authentication and the audit of refusals."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import IntegrityError, Recording

from billing_domain.bounds import MAX_GRANT_METERS, WILDCARD, check_id_or_wildcard
from billing_domain.core import (
    ApplicationCore,
    check_identifier,
)
from billing_domain.errors import (
    EmitterExists,
    EmitterNotRegistered,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    UnknownEmitter,
    UnknownKey,
)
from billing_domain.identity import (
    ROLES,
    SYSTEM,
    Emitter,
    Grant,
    Key,
    Principal,
    hash_secret,
    secrets_match,
)
from billing_domain.ids import (
    emitter_uuid,
    key_uuid,
)
from billing_domain.key_cache import KeyCache, event_topics
from billing_domain.usage import (
    iso,
)

_NO_KEY_HASH = hash_secret(secrets.token_urlsafe(32))
_KEY_ID = re.compile(r"[0-9a-f]{16}")


class AccessCommands(ApplicationCore):
    _key_cache: KeyCache | None = None

    @property
    def key_cache(self) -> KeyCache:
        """Keys and grants as authentication reads them, kept in this process and invalidated
        from the log (billing_domain.key_cache)."""
        if self._key_cache is None:
            self._key_cache = KeyCache(self.recorder, event_topics(Key, Emitter))
        return self._key_cache

    def close_key_cache(self) -> None:
        if self._key_cache is not None:
            self._key_cache.close()

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        recordings = super()._record(processing_event)
        # This process's own key and grant changes take effect before it answers.
        if self._key_cache is not None:
            changed = [
                aggregate_id
                for aggregate_id, aggregate in processing_event.aggregates.items()
                if isinstance(aggregate, (Key, Emitter))
            ]
            if changed:
                self._key_cache.evict(changed)
        return recordings

    def _cached_key(self, aggregate_id: UUID) -> Key | None:
        key: Key | None = self.key_cache.get(aggregate_id, lambda i: self._find(i, Key))
        return key

    def _cached_grants(self, emitter_id: str) -> tuple[Grant, ...]:
        def load(aggregate_id: UUID) -> tuple[Grant, ...]:
            emitter = self._find(aggregate_id, Emitter)
            return emitter.active_grants() if emitter is not None else ()

        grants: tuple[Grant, ...] = self.key_cache.get(emitter_uuid(emitter_id), load)
        return grants

    def register_emitter(
        self, emitter_id: str, name: str, principal: Principal = SYSTEM
    ) -> Emitter:
        """Register a non-human identity that sends usage."""
        check_identifier(emitter_id, "emitter_id")
        check_identifier(name, "name")
        if self._find(emitter_uuid(emitter_id), Emitter) is not None:
            raise EmitterExists(f"emitter {emitter_id!r} already exists")
        emitter = Emitter(emitter_id=emitter_id, name=name, actor=principal.actor)
        try:
            self.save(emitter)
        except IntegrityError:
            raise EmitterExists(f"emitter {emitter_id!r} already exists") from None
        return emitter

    def create_key(
        self, role: str, name: str, emitter_id: str | None = None, principal: Principal = SYSTEM
    ) -> tuple[str, str]:
        """Issue a key; returns (key_id, key). The key is shown once and stored hashed."""
        if role not in ROLES:
            raise InvalidInput(f"must be one of {', '.join(ROLES)}", field="role")
        check_identifier(name, "name")
        if role == "emitter":
            if not emitter_id:
                raise InvalidInput("an emitter key names its emitter", field="emitter_id")
            if self._find(emitter_uuid(emitter_id), Emitter) is None:
                raise EmitterNotRegistered(f"no emitter {emitter_id!r}")
        elif emitter_id is not None:
            raise InvalidInput("only emitter keys belong to an emitter", field="emitter_id")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        self.save(
            Key(
                key_id=key_id,
                key_hash=hash_secret(secret),
                role=role,
                name=name,
                emitter_id=emitter_id,
                actor=principal.actor,
            )
        )
        return key_id, f"bk_{key_id}_{secret}"

    def revoke_key(self, key_id: str, principal: Principal = SYSTEM) -> dict[str, Any]:
        """Revoke a key at once; it authenticates nothing afterwards."""

        def attempt() -> dict[str, Any]:
            key = (
                self._find(key_uuid(key_id), Key) if re.fullmatch(r"[0-9a-f]{16}", key_id) else None
            )
            if key is None:
                raise UnknownKey(f"no key {key_id!r}")
            if not key.revoked:
                key.revoke(principal.actor)
                self.save(key)
            return {"key_id": key_id, "role": key.role, "name": key.name, "revoked": True}

        return self._retry(attempt)

    def authenticate(self, token: str) -> Principal:
        """The principal a bearer key stands for; any doubt is NotAuthenticated.

        Keys and grants come from this process's cache (no store round trip once a key has
        been seen); a revocation anywhere reaches every process within a second."""
        admin_key = self.settings.admin_key
        if admin_key and secrets.compare_digest(hash_secret(token), hash_secret(admin_key)):
            return Principal(emitter="bootstrap-admin", key_id="bootstrap", role="admin")
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "bk" or not _KEY_ID.fullmatch(parts[1]):
            raise NotAuthenticated("malformed key")
        key = self._cached_key(key_uuid(parts[1]))
        # An unknown key id costs the same hash comparison as a known one.
        if not secrets_match(parts[2], key.key_hash if key else _NO_KEY_HASH) or key is None:
            raise NotAuthenticated("unknown key")
        if key.revoked:
            raise NotAuthenticated("revoked key")
        grants: tuple[Grant, ...] = ()
        if key.emitter_id is not None:
            grants = self._cached_grants(key.emitter_id)
        return Principal(key.holder, key.key_id, key.role, grants)

    def grant(
        self,
        emitter_id: str,
        customer_id: str,
        meters: list[str],
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        principal: Principal = SYSTEM,
    ) -> dict[str, Any]:
        """Allow an emitter to ingest for a customer (or '*') and meters within a window."""
        check_id_or_wildcard(customer_id, "customer_id")
        if customer_id != WILDCARD:
            self._customer(customer_id)
        if not isinstance(meters, list) or not meters:
            raise InvalidInput("needs at least one meter name, or '*'", field="meters")
        if len(meters) > MAX_GRANT_METERS:
            raise InvalidInput(f"at most {MAX_GRANT_METERS} meters per grant", field="meters")
        for index, meter in enumerate(meters):
            check_id_or_wildcard(meter, f"meters[{index}]")
        for name, value in (("valid_from", valid_from), ("valid_until", valid_until)):
            if value is not None and value.tzinfo is None:
                raise InvalidInput("must have a UTC offset", field=name)
        if valid_from and valid_until and valid_until <= valid_from:
            raise InvalidInput("must be after valid_from", field="valid_until")
        grant_id = f"g_{secrets.token_hex(6)}"

        def attempt() -> dict[str, Any]:
            holder = self._find(emitter_uuid(emitter_id), Emitter)
            if holder is None:
                raise UnknownEmitter(f"no emitter {emitter_id!r}")
            holder.grant(
                grant_id, customer_id, list(meters), valid_from, valid_until, principal.actor
            )
            self.save(holder)
            return {
                "grant_id": grant_id,
                "emitter_id": emitter_id,
                "customer_id": customer_id,
                "meters": list(meters),
                "valid_from": iso(valid_from) if valid_from else None,
                "valid_until": iso(valid_until) if valid_until else None,
            }

        return self._retry(attempt)

    def revoke_grant(
        self, emitter_id: str, grant_id: str, principal: Principal = SYSTEM
    ) -> dict[str, Any]:
        """Withdraw a grant at once."""

        def attempt() -> dict[str, Any]:
            holder = self._find(emitter_uuid(emitter_id), Emitter)
            if holder is None:
                raise UnknownEmitter(f"no emitter {emitter_id!r}")
            if grant_id not in holder.grants:
                raise NotFound(
                    f"emitter {emitter_id!r} has no grant {grant_id!r}", field="grant_id"
                )
            holder.revoke_grant(grant_id, principal.actor)
            self.save(holder)
            return {"grant_id": grant_id, "emitter_id": emitter_id, "revoked": True}

        return self._retry(attempt)

    def record_refusal(
        self,
        principal: Principal | None,
        action: str,
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Count a refused request for the audit log (never the key itself); repeats of the
        same refusal within a window are kept as one fact with their count."""
        self.refusals.record(principal, action, reason, detail or {}, self.clock())
