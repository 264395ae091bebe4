"""Request and response bodies of the identity lifecycle: owners, expiry, rotation,
offboarding, the lists of emitters and keys (never a secret but once) and activity."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from api.http.responses import KeyCreatedOut as KeyShownOut
from api.http.responses import Out, Page, TimeText
from api.http.schemas import Strict, _held, _optional
from billing_domain import bounds as b

Role = Literal["admin", "operator", "finance", "emitter"]


class EmitterPatchIn(BaseModel):
    model_config = Strict
    name: str | None = Field(default=None, min_length=1, max_length=b.MAX_NAME_LENGTH)
    owner: str | None = Field(
        default=None,
        max_length=b.MAX_NAME_LENGTH,
        description="who answers for the emitter; null clears it (unless owners are required)",
    )

    _name = field_validator("name")(_optional(b.check_text))
    _owner = field_validator("owner")(_optional(b.check_text))


class RotateIn(BaseModel):
    model_config = Strict
    overlap_seconds: int | None = Field(
        default=None,
        ge=0,
        le=30 * 86_400,
        description="how long the old key keeps working (default 86400: a day)",
    )
    expires_at: datetime | None = Field(
        default=None,
        description="the new key's expiry (default: the old key's lifetime from now, if any)",
    )

    _expires_at = field_validator("expires_at", mode="before")(_optional(b.parse_time))


class OffboardIn(BaseModel):
    model_config = Strict
    reason: str = Field(min_length=1, max_length=b.MAX_REASON_LENGTH)

    _reason = field_validator("reason")(_held(b.check_text, max_length=b.MAX_REASON_LENGTH))


class KeyCreatedOut(KeyShownOut):
    expires_at: TimeText | None = None


class EmitterOut(Out):
    emitter_id: str
    name: str
    owner: str | None


class KeyItemOut(Out):
    key_id: str
    role: Role
    name: str
    emitter_id: str | None
    created_at: TimeText
    expires_at: TimeText | None
    revoked_at: TimeText | None
    last_used_at: TimeText | None = Field(description="accurate to a minute")
    replaces: str | None = Field(description="the key this one rotated")
    replaced_by: str | None = Field(description="the key that rotated this one")
    status: Literal["active", "expired", "revoked"]


class KeyPageOut(Page):
    items: list[KeyItemOut]


class EmitterItemOut(Out):
    emitter_id: str
    name: str
    owner: str | None
    registered_at: TimeText
    offboarded_at: TimeText | None
    offboard_reason: str | None
    unrevoked_keys: int


class EmitterPageOut(Page):
    items: list[EmitterItemOut]


class GrantItemOut(Out):
    grant_id: str
    customer_id: str = Field(description='a customer id, or "*"')
    meters: list[str]
    valid_from: TimeText | None
    valid_until: TimeText | None
    status: Literal["active", "scheduled", "lapsed", "ended"] = Field(
        description="ended: by the emitter's offboarding"
    )


class EmitterDetailOut(Out):
    emitter_id: str
    name: str
    owner: str | None
    offboarded_at: TimeText | None
    offboard_reason: str | None
    grants: list[GrantItemOut]
    keys: list[KeyItemOut]


class KeyRotatedOut(Out):
    key_id: str
    key: str = Field(description="shown once; only its hash is stored")
    replaces: str
    old_key_expires_at: TimeText
    expires_at: TimeText | None
    role: Role
    name: str
    emitter_id: str | None


class OffboardedOut(Out):
    emitter_id: str
    offboarded_at: TimeText
    reason: str
    keys_revoked: list[str] = Field(description="by this call (empty when repeated)")
    grants_ended: list[str]


class ActivityDayOut(Out):
    day: str = Field(description="a UTC day, YYYY-MM-DD")
    accepted: int
    duplicate: int
    conflict: int
    refused: int
    customers: int = Field(description="distinct customers of the day's accepted usage")
    meters: int = Field(description="distinct meters of the day's accepted usage")


class ActivityOut(Out):
    emitter_id: str
    items: list[ActivityDayOut]
