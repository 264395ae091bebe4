"""Short-lived stream tokens (Stripe's meter event sessions): a key's holder trades it for a
token that authenticates as the same key until it expires.

A token is signed with the stored hash of the key it stands for, which only the store holds:
every process verifies it without shared state, and revoking or expiring the key ends it.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

from billing_domain.access import AccessCommands
from billing_domain.errors import NotAuthenticated
from billing_domain.identity import Principal
from billing_domain.ids import key_uuid

SESSION_LIFETIME = timedelta(minutes=15)
_PREFIX = "bks"


def _signature(key_hash: str, key_id: str, expires: int) -> str:
    return hmac.new(key_hash.encode(), f"{key_id}|{expires}".encode(), hashlib.sha256).hexdigest()


class StreamSessionCommands(AccessCommands):
    def open_stream_session(self, principal: Principal) -> tuple[str, datetime]:
        """A token standing for the caller's key until it expires (at most 15 minutes)."""
        key = self._cached_key(key_uuid(principal.key_id))
        if key is None:
            raise NotAuthenticated("only a key from POST /v1/keys can open a session")
        expires_at = (self.clock() + SESSION_LIFETIME).replace(microsecond=0)
        if key.expires_at is not None:
            expires_at = min(expires_at, key.expires_at)
        expires = int(expires_at.timestamp())
        token = f"{_PREFIX}_{key.key_id}_{expires}_{_signature(key.key_hash, key.key_id, expires)}"
        return token, datetime.fromtimestamp(expires, UTC)

    def authenticate_stream(self, token: str) -> Principal:
        """The principal a stream token stands for; any doubt is NotAuthenticated."""
        parts = token.split("_")
        if len(parts) != 4 or parts[0] != _PREFIX or not parts[2].isdigit():
            raise NotAuthenticated("malformed session token")
        key_id, expires, signature = parts[1], int(parts[2]), parts[3]
        key = self._cached_key(key_uuid(key_id)) if len(key_id) == 16 else None
        expected = _signature(key.key_hash if key else "-", key_id, expires)
        if key is None or not hmac.compare_digest(signature, expected):
            raise NotAuthenticated("unknown session token")
        now = self.clock()
        if now.timestamp() >= expires:
            raise NotAuthenticated("expired session token")
        if key.revoked or key.expired(now):
            raise NotAuthenticated("the session's key is revoked or expired")
        grants = self._cached_grants(key.emitter_id) if key.emitter_id is not None else ()
        return Principal(key.holder, key.key_id, key.role, grants)
