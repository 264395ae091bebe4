"""Non-human identities: emitters with a role, their grants, and their hashed keys."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from billing_domain.ids import emitter_uuid, key_uuid

ROLES = ("admin", "operator", "finance", "emitter")


def hash_secret(secret: str) -> str:
    # Keys are 256 random bits, so a fast hash cannot be brute-forced; no salt is needed.
    return hashlib.sha256(secret.encode()).hexdigest()


def secrets_match(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


@dataclass(frozen=True)
class Grant:
    grant_id: str
    customer_id: str  # a customer id, or "*" for every customer
    meters: tuple[str, ...]  # meter names, or ("*",)
    valid_from: datetime | None
    valid_until: datetime | None

    def allows(self, customer_id: str, meter: str, at: datetime) -> bool:
        return self.covers(customer_id, at) and ("*" in self.meters or meter in self.meters)

    def covers(self, customer_id: str, at: datetime) -> bool:
        """For this customer, some meter, at this time."""
        return (
            self.customer_id in ("*", customer_id)
            and (self.valid_from is None or at >= self.valid_from)
            and (self.valid_until is None or at < self.valid_until)
        )


@dataclass(frozen=True)
class Principal:
    """Who is calling: an emitter identity, the key it used, its role and grants."""

    emitter: str
    key_id: str
    role: str
    grants: tuple[Grant, ...] = ()

    @property
    def actor(self) -> str:
        return f"{self.emitter}/{self.key_id}"

    def may_ingest(self, customer_id: str, meter: str, at: datetime) -> bool:
        if self.role == "admin":
            return True
        return self.role == "emitter" and any(g.allows(customer_id, meter, at) for g in self.grants)

    def may_ingest_for(self, customer_id: str, at: datetime) -> bool:
        """Allowed for this customer and at least one meter."""
        if self.role == "admin":
            return True
        return self.role == "emitter" and any(g.covers(customer_id, at) for g in self.grants)


SYSTEM = Principal(emitter="system", key_id="-", role="admin")


class Emitter(Aggregate):
    """A service that sends usage; its grants say for which customers and meters, its owner
    who answers for it. Offboarding ends its grants and revokes its keys for good."""

    class Registered(Aggregate.Created):
        emitter_id: str
        name: str
        actor: str
        # Emitters registered before owners and key tracking were recorded have neither.
        owner: str | None = None
        tracks_keys: bool = False

    @staticmethod
    def create_id(emitter_id: str, **_: Any) -> UUID:
        return emitter_uuid(emitter_id)

    @event(Registered)
    def __init__(
        self,
        emitter_id: str,
        name: str,
        actor: str,
        owner: str | None = None,
        tracks_keys: bool = False,
    ) -> None:
        self.emitter_id = emitter_id
        self.name = name
        self.owner = owner
        self.tracks_keys = tracks_keys
        self.grants: dict[str, dict[str, Any]] = {}
        self.key_ids: list[str] = []
        self.offboarded_at: datetime | None = None
        self.offboard_reason: str | None = None

    @event("Updated")
    def update(self, name: str, owner: str | None, actor: str) -> None:
        self.name = name
        self.owner = owner

    @event("Granted")
    def grant(
        self,
        grant_id: str,
        customer_id: str,
        meters: list[str],
        valid_from: datetime | None,
        valid_until: datetime | None,
        actor: str,
    ) -> None:
        self.grants[grant_id] = {
            "customer_id": customer_id,
            "meters": meters,
            "valid_from": valid_from,
            "valid_until": valid_until,
        }

    @event("GrantRevoked")
    def revoke_grant(self, grant_id: str, actor: str) -> None:
        self.grants.pop(grant_id, None)

    @event("KeyAdded")
    def add_key(self, key_id: str, actor: str) -> None:
        self.key_ids.append(key_id)

    @event("Offboarded")
    def offboard(
        self, reason: str, key_ids: list[str], grant_ids: list[str], actor: str, at: datetime
    ) -> None:
        self.offboarded_at = at
        self.offboard_reason = reason
        for grant_id in grant_ids:
            grant = self.grants.get(grant_id)
            if grant is not None and (grant["valid_until"] is None or grant["valid_until"] > at):
                grant["valid_until"] = at
                grant["ended"] = True

    @property
    def offboarded(self) -> bool:
        return getattr(self, "offboarded_at", None) is not None

    def grant_views(self, at: datetime) -> list[dict[str, Any]]:
        """Every grant kept, with its validity and how it stands at `at`."""
        views = []
        for grant_id, g in sorted(self.grants.items()):
            status = "active"
            if g.get("ended"):
                status = "ended"
            elif g["valid_from"] is not None and at < g["valid_from"]:
                status = "scheduled"
            elif g["valid_until"] is not None and at >= g["valid_until"]:
                status = "lapsed"
            views.append(
                {
                    "grant_id": grant_id,
                    "customer_id": g["customer_id"],
                    "meters": list(g["meters"]),
                    "valid_from": g["valid_from"],
                    "valid_until": g["valid_until"],
                    "status": status,
                }
            )
        return views

    def active_grants(self) -> tuple[Grant, ...]:
        if self.offboarded:
            return ()
        return tuple(
            Grant(gid, g["customer_id"], tuple(g["meters"]), g["valid_from"], g["valid_until"])
            for gid, g in sorted(self.grants.items())
        )


class Key(Aggregate):
    """An API key: its role, its holder, its expiry, and only the hash of its secret."""

    class Issued(Aggregate.Created):
        key_id: str
        key_hash: str
        role: str
        name: str
        emitter_id: str | None
        actor: str
        # Keys issued before expiry and rotation were recorded have none of these.
        expires_at: datetime | None = None
        replaces: str | None = None
        issued_at: datetime | None = None

    @staticmethod
    def create_id(key_id: str, **_: Any) -> UUID:
        return key_uuid(key_id)

    @event(Issued)
    def __init__(
        self,
        key_id: str,
        key_hash: str,
        role: str,
        name: str,
        emitter_id: str | None,
        actor: str,
        expires_at: datetime | None = None,
        replaces: str | None = None,
        issued_at: datetime | None = None,
    ) -> None:
        self.key_id = key_id
        self.key_hash = key_hash
        self.role = role
        self.name = name
        self.emitter_id = emitter_id
        self.expires_at = expires_at
        self.replaces = replaces
        self.issued_at = issued_at
        self.replaced_by: str | None = None
        self.revoked = False
        self.revoked_at: datetime | None = None

    @event("Revoked")
    def revoke(self, actor: str, at: datetime | None = None) -> None:
        self.revoked = True
        self.revoked_at = at

    @event("Rotated")
    def rotate(self, replaced_by: str, expires_at: datetime, actor: str) -> None:
        """The old key of a rotation: it keeps working until `expires_at` (the overlap)."""
        self.replaced_by = replaced_by
        if self.expires_at is None or expires_at < self.expires_at:
            self.expires_at = expires_at

    @event("Retired")
    def retire(self, emitter_id: str, actor: str, at: datetime) -> None:
        """Revoked with its emitter's offboarding (audited as that one act)."""
        self.revoked = True
        self.revoked_at = at

    def expired(self, at: datetime) -> bool:
        return self.expires_at is not None and at >= self.expires_at

    @property
    def holder(self) -> str:
        return self.emitter_id or self.name


class AuditFact(Aggregate):
    """A fact worth keeping that changes no balance: a refusal, or a conflicting retry.

    Refusals are counted: `count` of them between `first_at` and `at`. Facts stored before
    counting have neither, and read as one (first_at None)."""

    class Recorded(Aggregate.Created):
        action: str
        emitter: str
        key_id: str
        reason: str
        detail: dict[str, Any]
        at: datetime
        count: int = 1
        first_at: datetime | None = None

    @event(Recorded)
    def __init__(
        self,
        action: str,
        emitter: str,
        key_id: str,
        reason: str,
        detail: dict[str, Any],
        at: datetime,
        count: int = 1,
        first_at: datetime | None = None,
    ) -> None:
        self.action = action
        self.emitter = emitter
        self.key_id = key_id
        self.reason = reason
        self.detail = detail
        self.at = at
        self.count = count
        self.first_at = first_at
