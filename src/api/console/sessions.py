"""Console sign-ins: a random session id in a cookie, the session itself kept server-side.

`billing serve` runs several worker processes, so sessions live where every worker sees them:
one small table beside the views (`console_sessions`), found by the hash of the session id
(the ids in the cookies are not stored). A session holds the key id and role it was opened
with, never the key: each request asks `still_valid` whether that key id may still act (a
revoked key ends its sessions at once). Sessions end after IDLE_SECONDS unused or
LIFETIME_SECONDS in all; at most MAX_SESSIONS are kept, the least recently used going first.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IDLE_SECONDS = 30 * 60
LIFETIME_SECONDS = 8 * 60 * 60
MAX_SESSIONS = 1000
TOUCH_SECONDS = 10  # last_seen is written at most this often per session
TABLE = "console_sessions"


@dataclass
class Session:
    key_id: str
    role: str
    holder: str
    csrf: str
    started: float
    last_seen: float
    # the hash of the bootstrap admin key, so a changed BILLING_ADMIN_KEY ends its sessions
    secret_hash: str | None = None


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


_created: weakref.WeakSet[Any] = weakref.WeakSet()
_created_lock = threading.Lock()


class SessionStore:
    """Sessions in the view store (`projections.store.ViewStore`), shared by every worker."""

    def __init__(
        self,
        store: Any,
        *,
        idle: float = IDLE_SECONDS,
        lifetime: float = LIFETIME_SECONDS,
        limit: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.idle = idle
        self.lifetime = lifetime
        self.limit = limit
        self.clock = clock

    def _ensure(self) -> None:
        with _created_lock:
            if self.store in _created:
                return
            with self.store.write() as cur:
                cur.lock_ddl()
                cur.execute(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} (id_hash TEXT PRIMARY KEY, "
                    "key_id TEXT NOT NULL, role TEXT NOT NULL, holder TEXT NOT NULL, "
                    "csrf TEXT NOT NULL, started DOUBLE PRECISION NOT NULL, "
                    "last_seen DOUBLE PRECISION NOT NULL, secret_hash TEXT)"
                )
            _created.add(self.store)

    def open(
        self, key_id: str, role: str, holder: str, secret_hash: str | None = None
    ) -> tuple[str, Session]:
        """A new session id (for the cookie) and its session; expired and surplus sessions go."""
        self._ensure()
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(key_id, role, holder, secrets.token_urlsafe(32), now, now, secret_hash)
        with self.store.write() as cur:
            cur.execute(
                f"DELETE FROM {TABLE} WHERE last_seen < ? OR started < ?",
                [now - self.idle, now - self.lifetime],
            )
            cur.execute(
                f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [_digest(session_id), key_id, role, holder, session.csrf, now, now, secret_hash],
            )
            cur.execute(
                f"DELETE FROM {TABLE} WHERE id_hash NOT IN (SELECT id_hash FROM {TABLE} "
                "ORDER BY last_seen DESC, started DESC LIMIT ?)",
                [self.limit],
            )
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this id, touched; None when unknown or expired."""
        if not session_id or len(session_id) > 100:
            return None
        self._ensure()
        digest = _digest(session_id)
        now = self.clock()
        with self.store.read() as cur:
            row = cur.one(f"SELECT * FROM {TABLE} WHERE id_hash = ?", [digest])
        if row is None:
            return None
        session = Session(
            row["key_id"],
            row["role"],
            row["holder"],
            row["csrf"],
            float(row["started"]),
            float(row["last_seen"]),
            row["secret_hash"],
        )
        if now - session.last_seen > self.idle or now - session.started > self.lifetime:
            self.close(session_id)
            return None
        if now - session.last_seen >= TOUCH_SECONDS:
            with self.store.write() as cur:
                cur.execute(f"UPDATE {TABLE} SET last_seen = ? WHERE id_hash = ?", [now, digest])
            session.last_seen = now
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._ensure()
            with self.store.write() as cur:
                cur.execute(f"DELETE FROM {TABLE} WHERE id_hash = ?", [_digest(session_id)])

    def close_key(self, key_id: str) -> int:
        """End every session opened with this key id; how many there were."""
        self._ensure()
        with self.store.write() as cur:
            cur.execute(f"DELETE FROM {TABLE} WHERE key_id = ?", [key_id])
            return int(cur.rowcount)

    def __len__(self) -> int:
        self._ensure()
        with self.store.read() as cur:
            row = cur.one(f"SELECT COUNT(*) AS n FROM {TABLE}")
        return int(row["n"]) if row else 0
