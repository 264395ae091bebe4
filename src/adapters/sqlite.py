"""The SQLite store: the embedded default. One file per application, in WAL mode."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteFactory
from eventsourcing.utils import Environment

from adapters.persistence import key_row
from billing_domain.ports import KeyRow, ordered_keys
from billing_domain.settings import SettingsError


def set_wal_mode(conn: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Put a SQLite database in WAL mode. Switching needs a moment alone with the file, and
    processes opening a new store together get "database is locked" at once rather than
    waiting: retry until the switch is made (once made, it is a no-op for everyone)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def check_openable(path: str) -> None:
    """The store's file can be created or opened: its directory exists and lets us in."""
    if path.startswith("file:"):
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SettingsError(
            f"BILLING_DATABASE_URL: the directory {directory} for the SQLite file {path} does "
            f"not exist; create it (mkdir -p {directory}) or point BILLING_DATABASE_URL elsewhere"
        )
    if os.path.isdir(path):
        raise SettingsError(
            f"BILLING_DATABASE_URL: {path} is a directory; name a file, "
            f"e.g. sqlite:///{os.path.join(path, 'billing.db')}"
        )
    try:
        sqlite3.connect(path, timeout=1).close()
    except sqlite3.Error as error:
        raise SettingsError(
            f"BILLING_DATABASE_URL: cannot open the SQLite file {path} ({error}); check its "
            "permissions or point BILLING_DATABASE_URL elsewhere"
        ) from None


def prepare_sqlite_file(path: str) -> None:
    """Create the store's file in WAL mode before the event store's recorders open it."""
    if path.startswith("file:"):
        return
    conn = sqlite3.connect(path, timeout=30)
    try:
        set_wal_mode(conn)
    finally:
        conn.close()


class SQLiteBillingFactory(SQLiteFactory):
    """The library's SQLite factory, with the store's file put in WAL mode first."""

    def __init__(self, env: Environment | Any) -> None:
        db_name = (env.get(self.SQLITE_DBNAME) if env is not None else None) or ""
        if db_name:
            prepare_sqlite_file(db_name)
        super().__init__(env)


class SQLiteBillingRecorder(SQLiteApplicationRecorder):
    keys_table_name = "billing_keys"

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            (
                f"CREATE TABLE IF NOT EXISTS {self.keys_table_name} ("
                "customer_id TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, "
                "payload_hash TEXT NOT NULL, originator_id TEXT NOT NULL, "
                "originator_version INTEGER NOT NULL, meter TEXT NOT NULL, quantity TEXT NOT NULL, "
                "PRIMARY KEY (customer_id, kind, key)) WITHOUT ROWID"
            ),
        ]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        notification_ids = super()._insert_events(c, stored_events, **kwargs)
        keys = ordered_keys(kwargs.get("keys") or ())
        if keys:
            c.executemany(
                f"INSERT INTO {self.keys_table_name} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        k.customer_id,
                        k.kind,
                        k.key,
                        k.payload_hash,
                        k.originator_id.hex,
                        k.originator_version,
                        k.meter,
                        k.quantity,
                    )
                    for k in keys
                ],
            )
        return notification_ids

    def _joined(self, select: str, compare: str, places: Sequence[tuple[UUID, int]]) -> list[Any]:
        """Rows of the events table joined to (originator id, version) places, 400 a query:
        `SELECT {select} ... ON e.originator_version {compare} q.v`."""
        rows: list[Any] = []
        items = list(places)
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(items), 400):
                chunk = items[start : start + 400]
                c.execute(
                    "WITH q(id, v) AS (VALUES " + ",".join(["(?, ?)"] * len(chunk)) + ") "
                    f"SELECT {select} FROM {self.events_table_name} e "
                    f"JOIN q ON e.originator_id = q.id AND e.originator_version {compare} q.v",
                    [x for i, v in chunk for x in (i.hex, v)],
                )
                rows += c.fetchall()
        return rows

    def newer_than(self, versions: dict[UUID, int]) -> set[UUID]:
        """The aggregates, of those given with a version, that have events after it."""
        rows = self._joined("DISTINCT e.originator_id", ">", list(versions.items()))
        return {UUID(row["originator_id"]) for row in rows}

    def events_at(self, places: Sequence[tuple[UUID, int]]) -> list[StoredEvent]:
        """The stored events at these (originator id, version) places, in one read per 400."""
        select = "e.originator_id, e.originator_version, e.topic, e.state"
        return [
            StoredEvent(
                originator_id=UUID(row["originator_id"]),
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
            for row in self._joined(select, "=", places)
        ]

    def keys_of(self, originator_ids: Sequence[UUID]) -> list[KeyRow]:
        """Every key row pointing at these aggregates (the reconciliation's index check)."""
        rows: list[KeyRow] = []
        ids = [i.hex for i in originator_ids]
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                c.execute(
                    f"SELECT * FROM {self.keys_table_name} WHERE originator_id IN "
                    f"({','.join('?' * len(chunk))})",
                    chunk,
                )
                rows += [key_row(r, UUID(r["originator_id"])) for r in c.fetchall()]
        return rows

    def select_keys(
        self, kind: str, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], KeyRow]:
        found: dict[tuple[str, str], KeyRow] = {}
        by_customer: dict[str, list[str]] = {}
        for customer_id, key in pairs:
            by_customer.setdefault(customer_id, []).append(key)
        with self.datastore.transaction(commit=False) as c:
            for customer_id, keys in by_customer.items():
                for start in range(0, len(keys), 500):
                    chunk = keys[start : start + 500]
                    c.execute(
                        f"SELECT * FROM {self.keys_table_name} WHERE customer_id = ? AND kind = ? "
                        f"AND key IN ({','.join('?' * len(chunk))})",
                        [customer_id, kind, *chunk],
                    )
                    for r in c.fetchall():
                        found[(r["customer_id"], r["key"])] = key_row(r, UUID(r["originator_id"]))
        return found
