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
        return (
            self.customer_id in ("*", customer_id)
            and ("*" in self.meters or meter in self.meters)
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
        if self.role != "emitter":
            return self.role in ("admin", "operator")
        return any(g.allows(customer_id, meter, at) for g in self.grants)


SYSTEM = Principal(emitter="system", key_id="-", role="admin")


class Emitter(Aggregate):
    class Registered(Aggregate.Created):
        name: str
        role: str
        actor: str

    @staticmethod
    def create_id(name: str, **_: Any) -> UUID:
        return emitter_uuid(name)

    @event(Registered)
    def __init__(self, name: str, role: str, actor: str) -> None:
        self.name = name
        self.role = role
        self.grants: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, dict[str, Any]] = {}

    @event("Granted")
    def grant(self, grant_id: str, customer_id: str, meters: list[str],
              valid_from: datetime | None, valid_until: datetime | None, actor: str) -> None:
        self.grants[grant_id] = {"customer_id": customer_id, "meters": meters,
                                 "valid_from": valid_from, "valid_until": valid_until}

    @event("GrantRevoked")
    def revoke_grant(self, grant_id: str, actor: str) -> None:
        self.grants.pop(grant_id, None)

    @event("KeyIssued")
    def issue_key(self, key_id: str, key_hash: str, actor: str) -> None:
        self.keys[key_id] = {"hash": key_hash, "revoked": False}

    @event("KeyRevoked")
    def revoke_key(self, key_id: str, actor: str) -> None:
        self.keys[key_id]["revoked"] = True

    def active_grants(self) -> tuple[Grant, ...]:
        return tuple(
            Grant(gid, g["customer_id"], tuple(g["meters"]), g["valid_from"], g["valid_until"])
            for gid, g in sorted(self.grants.items())
        )

    def principal(self, key_id: str) -> Principal:
        return Principal(self.name, key_id, self.role, self.active_grants())


class KeyRef(Aggregate):
    """Maps a key id to the emitter holding it; its id makes key ids unique in the store."""

    class Created(Aggregate.Created):
        key_id: str
        emitter: str

    @staticmethod
    def create_id(key_id: str, **_: Any) -> UUID:
        return key_uuid(key_id)

    @event(Created)
    def __init__(self, key_id: str, emitter: str) -> None:
        self.key_id = key_id
        self.emitter = emitter


class AuditFact(Aggregate):
    """A fact worth keeping that changes no balance: a refusal, or a conflicting retry."""

    class Recorded(Aggregate.Created):
        action: str
        emitter: str
        key_id: str
        reason: str
        detail: dict[str, Any]
        at: datetime

    @event(Recorded)
    def __init__(self, action: str, emitter: str, key_id: str, reason: str,
                 detail: dict[str, Any], at: datetime) -> None:
        self.action = action
        self.emitter = emitter
        self.key_id = key_id
        self.reason = reason
        self.detail = detail
        self.at = at
