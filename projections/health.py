"""What /health answers when a store does not: the errors that mean "down", and the answer."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import weakref
from typing import Any

import psycopg
from eventsourcing.persistence import PersistenceError


class StoreUnavailable(Exception):
    """The store did not answer in time."""


STORE_ERRORS = (StoreUnavailable, PersistenceError, sqlite3.Error, psycopg.Error, OSError)


def down_answer(what: str, error: BaseException, position: int | None = None) -> dict[str, Any]:
    reason = f"{what} does not answer: {type(error).__name__}: {error}"
    return {
        "status": "down",
        "store": {"status": "down" if what == "event store" else "ok", "position": position},
        "position": position,
        "projections": [],
        "reasons": [reason],
    }


# A projection worker in another process (`billing projections run`, serve's child) tells the
# API processes it is alive, and why it last failed, through a row of this table beside the
# views; /health of a process that does not project itself reads it.
WORKERS_TABLE = "projection_workers"
HEARTBEAT_SECONDS = 2.0
DEFAULT_STALE_SECONDS = 30.0
FORGET_SECONDS = 86_400.0  # rows of workers gone this long are removed


def stale_seconds() -> float:
    return float(os.environ.get("BILLING_HEALTH_WORKER_STALE", DEFAULT_STALE_SECONDS))


_ready: weakref.WeakSet[Any] = weakref.WeakSet()


def _ensure(store: Any) -> None:
    if store in _ready:
        return
    with store.write() as cur:
        cur.lock_ddl()
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {WORKERS_TABLE} (worker TEXT PRIMARY KEY, "
            "beat_at DOUBLE PRECISION NOT NULL, error TEXT)"
        )
    _ready.add(store)


class Heartbeat:
    """This process's row: written at most every HEARTBEAT_SECONDS, and at once when its
    error changes; removed when the worker stops."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._last = 0.0
        self._error: str | None = None
        self._beating = False

    def beat(self, error: str | None) -> None:
        now = time.time()
        if now - self._last < HEARTBEAT_SECONDS and error == self._error:
            return
        _ensure(self.store)
        self._beating = True
        with self.store.write() as cur:
            cur.execute(
                f"INSERT INTO {WORKERS_TABLE} (worker, beat_at, error) VALUES (?, ?, ?) "
                "ON CONFLICT (worker) DO UPDATE SET beat_at = excluded.beat_at, "
                "error = excluded.error",
                [self.worker, now, error],
            )
            cur.execute(f"DELETE FROM {WORKERS_TABLE} WHERE beat_at < ?", [now - FORGET_SECONDS])
        self._last, self._error = now, error

    def stop(self) -> None:
        if self._beating:
            with self.store.write() as cur:
                cur.execute(f"DELETE FROM {WORKERS_TABLE} WHERE worker = ?", [self.worker])


def worker_reasons(store: Any, stale: float) -> list[str]:
    """Why /health is degraded on account of the external projection worker, if it is."""
    _ensure(store)
    with store.read() as cur:
        rows = cur.all(f"SELECT worker, beat_at, error FROM {WORKERS_TABLE}")
    now = time.time()
    alive = [r for r in rows if now - float(r["beat_at"]) <= stale]
    if not alive:
        last = max((float(r["beat_at"]) for r in rows), default=None)
        since = "never" if last is None else f"{now - last:.0f} s ago"
        return [
            f"no projection worker has reported within {stale:g} s (last: {since}); is "
            "`billing projections run` running?"
        ]
    return [f"projection worker {r['worker']} failed: {r['error']}" for r in alive if r["error"]]


def projection_reasons(rows: list[dict[str, Any]], max_lag: int, note: Any) -> list[str]:
    """Quarantined notifications, a schema mismatch (with `note(name)` on its rebuild), or a
    lag past `max_lag`, for each projection version that is not retired."""
    reasons = []
    for row in rows:
        if row["state"] == "retired":
            continue
        if row["quarantined"]:
            reasons.append(
                f"{row['key']} has {row['quarantined']} quarantined notification(s): "
                f"GET /v1/projections/{row['name']}/quarantine"
            )
        if row["state"] == "live" and row["problem"]:
            reasons.append(row["problem"] + note(row["name"]))
        elif row["state"] == "live" and row["lag"] > max_lag:
            reasons.append(f"{row['key']} lags {row['lag']} notifications (more than {max_lag})")
    return reasons
