"""Quarantine: a stored event a projection cannot apply is set aside, not allowed to stop it.

The runner records the notification here in the transaction that moves its position past
it, so the rows of every other event and the position still commit together. An operator
lists what is set aside and retries it after a fix; the retry applies it or keeps it with the
new error. Failures of the store itself (a lost connection, a lock timeout) are not the
event's fault: they propagate, roll the batch back and are retried like before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import Notification

from projections.base import stamp
from projections.store import Cursor

QUARANTINE = "projection_quarantine"
DECODE, APPLY = "decode", "apply"  # the stage that failed: the stored bytes, or the handlers
MAX_MESSAGE = 2000

COLUMNS = (
    "name TEXT NOT NULL, version INTEGER NOT NULL, notification_id BIGINT NOT NULL, "
    "originator_id TEXT NOT NULL, originator_version BIGINT NOT NULL, topic TEXT NOT NULL, "
    "stage TEXT NOT NULL, error_type TEXT NOT NULL, error TEXT NOT NULL, "
    "first_seen TEXT NOT NULL, last_seen TEXT NOT NULL, attempts INTEGER NOT NULL, "
    "PRIMARY KEY (name, version, notification_id)"
)


def create(cur: Cursor) -> None:
    cur.execute(f"CREATE TABLE IF NOT EXISTS {QUARANTINE} ({COLUMNS})")


def store_failure(error: BaseException) -> bool:
    """The database failed, not the event: retrying the batch later is the cure."""
    return isinstance(
        error,
        (
            sqlite3.OperationalError,
            sqlite3.InterfaceError,
            psycopg.OperationalError,
            psycopg.InterfaceError,
        ),
    )


@contextmanager
def savepoint(cur: Cursor, name: str = "pj_apply") -> Iterator[None]:
    """Undo what the block wrote, and only that, when it raises."""
    cur.execute(f"SAVEPOINT {name}")
    try:
        yield
    except Exception as error:
        if not store_failure(error):
            cur.execute(f"ROLLBACK TO SAVEPOINT {name}")
            cur.execute(f"RELEASE SAVEPOINT {name}")
        raise
    cur.execute(f"RELEASE SAVEPOINT {name}")


def describe(error: BaseException) -> tuple[str, str]:
    message = str(error) or repr(error)
    return type(error).__name__, message[:MAX_MESSAGE]


def record(
    cur: Cursor,
    name: str,
    version: int,
    notification: Notification,
    stage: str,
    error: BaseException,
) -> None:
    """Set a notification aside for a projection version; a second failure counts an attempt."""
    error_type, message = describe(error)
    now = stamp(datetime.now(UTC))
    cur.execute(
        f"INSERT INTO {QUARANTINE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) "
        "ON CONFLICT (name, version, notification_id) DO UPDATE SET "
        "stage = excluded.stage, error_type = excluded.error_type, error = excluded.error, "
        f"last_seen = excluded.last_seen, attempts = {QUARANTINE}.attempts + 1",
        [
            name,
            version,
            notification.id,
            _hex(notification.originator_id),
            notification.originator_version,
            notification.topic,
            stage,
            error_type,
            message,
            now,
            now,
        ],
    )


def _hex(originator_id: UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, UUID) else UUID(originator_id).hex


def forget(cur: Cursor, name: str, version: int, notification_id: int | None = None) -> None:
    """Drop one quarantined notification of a version, or all of them (a dropped version)."""
    if notification_id is None:
        cur.execute(f"DELETE FROM {QUARANTINE} WHERE name = ? AND version = ?", [name, version])
        return
    cur.execute(
        f"DELETE FROM {QUARANTINE} WHERE name = ? AND version = ? AND notification_id = ?",
        [name, version, notification_id],
    )


def find(cur: Cursor, name: str, version: int, notification_id: int) -> dict[str, Any] | None:
    return cur.one(
        f"SELECT * FROM {QUARANTINE} WHERE name = ? AND version = ? AND notification_id = ?",
        [name, version, notification_id],
    )


def listed(cur: Cursor, versions: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    """The quarantined notifications of these versions, oldest first, as an operator reads them."""
    if not versions:
        return []
    wanted = set(versions)
    rows = cur.all(f"SELECT * FROM {QUARANTINE} ORDER BY name, version, notification_id")
    return [item(r) for r in rows if (r["name"], int(r["version"])) in wanted]


def counts(cur: Cursor) -> dict[tuple[str, int], int]:
    rows = cur.all(f"SELECT name, version, COUNT(*) AS n FROM {QUARANTINE} GROUP BY name, version")
    return {(r["name"], int(r["version"])): int(r["n"]) for r in rows}


def item(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": row["name"],
        "version": int(row["version"]),
        "key": f"{row['name']}_v{int(row['version'])}",
        "notification_id": int(row["notification_id"]),
        "originator_id": row["originator_id"],
        "originator_version": int(row["originator_version"]),
        "topic": row["topic"],
        "stage": row["stage"],
        "error_type": row["error_type"],
        "error": row["error"],
        "first_seen": row["first_seen"],
        "last_seen": row["last_seen"],
        "attempts": int(row["attempts"]),
    }
