"""Emitters, keys, grants, authentication and the audit of refusals."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import IntegrityError, Recording

from billing_domain.bounds import (
    MAX_GRANT_METERS,
    MAX_NAME_LENGTH,
    WILDCARD,
    check_id_or_wildcard,
    check_text,
)
from billing_domain.core import (
    ApplicationCore,
    check_identifier,
)
from billing_domain.errors import (
    EmitterExists,
    EmitterNotRegistered,
    EmitterOffboarded,
    InvalidInput,
    KeyNotActive,
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
from billing_domain.key_use import KeyUseLog
from billing_domain.usage import (
    iso,
)

_NO_KEY_HASH = hash_secret(secrets.token_urlsafe(32))
_KEY_ID = re.compile(r"[0-9a-f]{16}")
DEFAULT_OVERLAP_SECONDS = 86_400
MAX_OVERLAP_SECONDS = 30 * 86_400


class AccessCommands(ApplicationCore):
    _key_cache: KeyCache | None = None
    _key_uses: KeyUseLog | None = None

    @property
    def key_uses(self) -> KeyUseLog:
        """Each key's last use, in memory, written at most once a minute per key."""
        if self._key_uses is None:
            self._key_uses = KeyUseLog(self.save)
        return self._key_uses

    def close_key_uses(self) -> None:
        if self._key_uses is not None:
            self._key_uses.close()

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
        self,
        emitter_id: str,
        name: str,
        principal: Principal = SYSTEM,
        owner: str | None = None,
    ) -> Emitter:
        """Register a non-human identity that sends usage, and who answers for it."""
        check_identifier(emitter_id, "emitter_id")
        check_identifier(name, "name")
        owner = self._check_owner(owner)
        if self._find(emitter_uuid(emitter_id), Emitter) is not None:
            raise EmitterExists(f"emitter {emitter_id!r} already exists")
        emitter = Emitter(
            emitter_id=emitter_id,
            name=name,
            actor=principal.actor,
            owner=owner,
            tracks_keys=True,
        )
        try:
            self.save(emitter)
        except IntegrityError:
            raise EmitterExists(f"emitter {emitter_id!r} already exists") from None
        return emitter

    def _check_owner(self, owner: str | None) -> str | None:
        if owner is None:
            if self.settings.require_owner:
                raise InvalidInput("every emitter needs an owner here", field="owner")
            return None
        return check_text(owner, "owner", MAX_NAME_LENGTH)

    def update_emitter(
        self,
        emitter_id: str,
        principal: Principal = SYSTEM,
        **changes: str | None,
    ) -> Emitter:
        """Change an emitter's display name or owner (`name=`, `owner=`; owner None clears
        it unless owners are required)."""
        unknown = set(changes) - {"name", "owner"}
        if unknown:
            raise InvalidInput("only name and owner can change", field=sorted(unknown)[0])
        if "name" in changes:
            check_identifier(changes["name"], "name")
        if "owner" in changes:
            self._check_owner(changes["owner"])

        def attempt() -> Emitter:
            emitter = self._emitter(emitter_id)
            name = changes.get("name") or emitter.name
            owner = changes.get("owner", emitter.owner)
            if (name, owner) != (emitter.name, emitter.owner):
                emitter.update(name, owner, principal.actor)
                self.save(emitter)
            return emitter

        return self._retry(attempt)

    def _emitter(self, emitter_id: str) -> Emitter:
        emitter = self._find(emitter_uuid(emitter_id), Emitter) if emitter_id else None
        if emitter is None:
            raise UnknownEmitter(f"no emitter {emitter_id!r}", field="emitter_id")
        return emitter

    def emitter(self, emitter_id: str) -> Emitter:
        """An emitter as recorded (404 when there is none)."""
        return self._emitter(emitter_id)

    def key(self, key_id: str) -> Key:
        """A key as recorded, never its secret (404 when there is none)."""
        key = self._find(key_uuid(key_id), Key) if _KEY_ID.fullmatch(key_id) else None
        if key is None:
            raise UnknownKey(f"no key {key_id!r}")
        return key

    def _check_expiry(self, expires_at: datetime | None, now: datetime) -> datetime | None:
        """A new key's expiry: in the future, and within BILLING_KEY_MAX_DAYS when set."""
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise InvalidInput("must have a UTC offset", field="expires_at")
            if expires_at <= now:
                raise InvalidInput("must be in the future", field="expires_at")
        days = self.settings.key_max_days
        if days is not None:
            if expires_at is None:
                raise InvalidInput(
                    f"keys here expire within {days} days: give expires_at", field="expires_at"
                )
            if expires_at > now + timedelta(days=days):
                raise InvalidInput(f"must be at most {days} days from now", field="expires_at")
        return expires_at

    def create_key(
        self,
        role: str,
        name: str,
        emitter_id: str | None = None,
        principal: Principal = SYSTEM,
        expires_at: datetime | None = None,
    ) -> tuple[str, str]:
        """Issue a key; returns (key_id, key). The key is shown once and stored hashed."""
        if role not in ROLES:
            raise InvalidInput(f"must be one of {', '.join(ROLES)}", field="role")
        check_identifier(name, "name")
        if role == "emitter":
            if not emitter_id:
                raise InvalidInput("an emitter key names its emitter", field="emitter_id")
        elif emitter_id is not None:
            raise InvalidInput("only emitter keys belong to an emitter", field="emitter_id")
        now = self.clock()
        expires_at = self._check_expiry(expires_at, now)
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)

        def attempt() -> None:
            holder = None
            if emitter_id is not None:
                holder = self._find(emitter_uuid(emitter_id), Emitter)
                if holder is None:
                    raise EmitterNotRegistered(f"no emitter {emitter_id!r}")
                if holder.offboarded:
                    raise EmitterOffboarded(f"emitter {emitter_id!r} was offboarded")
                holder.add_key(key_id, principal.actor)
            key = Key(
                key_id=key_id,
                key_hash=hash_secret(secret),
                role=role,
                name=name,
                emitter_id=emitter_id,
                actor=principal.actor,
                expires_at=expires_at,
                issued_at=now,
            )
            # The emitter's version moves with each key, so an offboarding racing this key
            # makes one of the two writes retry and see the other.
            self.save(*([holder] if holder else []), key)

        self._retry(attempt)
        return key_id, f"bk_{key_id}_{secret}"

    def rotate_key(
        self,
        key_id: str,
        overlap_seconds: int | None = None,
        principal: Principal = SYSTEM,
        expires_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Issue a key with the same role, name and emitter; the old one keeps working for
        the overlap (default a day), then is refused. Shown once, like any new key."""
        overlap = DEFAULT_OVERLAP_SECONDS if overlap_seconds is None else overlap_seconds
        if isinstance(overlap, bool) or not isinstance(overlap, int):
            raise InvalidInput("must be a whole number of seconds", field="overlap_seconds")
        if not 0 <= overlap <= MAX_OVERLAP_SECONDS:
            raise InvalidInput(
                f"must be from 0 to {MAX_OVERLAP_SECONDS} seconds", field="overlap_seconds"
            )
        new_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)

        def attempt() -> dict[str, Any]:
            now = self.clock()
            old = self.key(key_id)
            if old.revoked:
                raise KeyNotActive(f"key {key_id!r} is revoked")
            if old.expired(now):
                raise KeyNotActive(f"key {key_id!r} has expired")
            if old.replaced_by is not None:
                raise KeyNotActive(f"key {key_id!r} was already rotated to {old.replaced_by!r}")
            new_expiry = expires_at
            if new_expiry is None and old.expires_at is not None:
                lifetime = old.expires_at - (old.issued_at or old.created_on)
                new_expiry = now + lifetime
            if new_expiry is None and self.settings.key_max_days is not None:
                new_expiry = now + timedelta(days=self.settings.key_max_days)
            new_expiry = self._check_expiry(new_expiry, now)
            holder = None
            if old.emitter_id is not None:
                holder = self._emitter(old.emitter_id)
                if holder.offboarded:
                    raise EmitterOffboarded(f"emitter {old.emitter_id!r} was offboarded")
                holder.add_key(new_id, principal.actor)
            old_until = now + timedelta(seconds=overlap)
            old.rotate(new_id, old_until, principal.actor)
            new = Key(
                key_id=new_id,
                key_hash=hash_secret(secret),
                role=old.role,
                name=old.name,
                emitter_id=old.emitter_id,
                actor=principal.actor,
                expires_at=new_expiry,
                replaces=key_id,
                issued_at=now,
            )
            self.save(*([holder] if holder else []), old, new)
            return {
                "key_id": new_id,
                "key": f"bk_{new_id}_{secret}",
                "replaces": key_id,
                "old_key_expires_at": old.expires_at,
                "expires_at": new_expiry,
                "role": old.role,
                "name": old.name,
                "emitter_id": old.emitter_id,
            }

        return self._retry(attempt)

    def offboard_emitter(
        self, emitter_id: str, reason: str, principal: Principal = SYSTEM
    ) -> dict[str, Any]:
        """Revoke every key of an emitter and end every grant, in one write, audited as one
        act; no key can be issued for it afterwards. Usage it sent stays billed."""
        check_identifier(reason, "reason")

        def attempt() -> dict[str, Any]:
            now = self.clock()
            emitter = self._emitter(emitter_id)
            if emitter.offboarded:
                return self._offboarding(emitter, [], [])
            key_ids = list(emitter.key_ids)
            if not emitter.tracks_keys:
                key_ids += [k for k in self._legacy_key_ids(emitter_id) if k not in key_ids]
            keys = [k for k in (self._find(key_uuid(i), Key) for i in key_ids) if k is not None]
            live = [k for k in keys if not k.revoked]
            grant_ids = sorted(emitter.grants)
            for key in live:
                key.retire(emitter_id, principal.actor, now)
            emitter.offboard(reason, [k.key_id for k in live], grant_ids, principal.actor, now)
            self.save(emitter, *live)
            return self._offboarding(emitter, [k.key_id for k in live], grant_ids)

        return self._retry(attempt)

    @staticmethod
    def _offboarding(emitter: Emitter, key_ids: list[str], grant_ids: list[str]) -> dict[str, Any]:
        return {
            "emitter_id": emitter.emitter_id,
            "offboarded_at": iso(emitter.offboarded_at) if emitter.offboarded_at else None,
            "reason": emitter.offboard_reason,
            "keys_revoked": key_ids,
            "grants_ended": grant_ids,
        }

    def _legacy_key_ids(self, emitter_id: str) -> list[str]:
        """Keys issued before emitters listed their keys: found in the log's Key.Issued."""
        topic = event_topics(Key)
        issued = [t for t in topic if t.endswith("Key.Issued")]
        found: list[str] = []
        position = 0
        while True:
            page = self.recorder.select_notifications(
                position, 1000, topics=issued, inclusive_of_start=False
            )
            for notification in page:
                e = self.mapper.to_domain_event(notification)
                if getattr(e, "emitter_id", None) == emitter_id:
                    found.append(e.key_id)  # type: ignore[attr-defined]
            if len(page) < 1000:
                return found
            position = page[-1].id

    def revoke_key(self, key_id: str, principal: Principal = SYSTEM) -> dict[str, Any]:
        """Revoke a key at once; it authenticates nothing afterwards."""

        def attempt() -> dict[str, Any]:
            key = (
                self._find(key_uuid(key_id), Key) if re.fullmatch(r"[0-9a-f]{16}", key_id) else None
            )
            if key is None:
                raise UnknownKey(f"no key {key_id!r}")
            if not key.revoked:
                key.revoke(principal.actor, self.clock())
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
        now = self.clock()
        # Checked on every request, not only when the cache reloads: expiry is to the second.
        if key.expired(now):
            raise NotAuthenticated("expired key")
        self.key_uses.touch(key.key_id, now)
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
            if holder.offboarded:
                raise EmitterOffboarded(f"emitter {emitter_id!r} was offboarded")
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
