"""Recorders that write idempotency keys in the same transaction as the events they guard.

A key is (customer_id, kind, key): a usage event id, a compensation id or an adjustment id.
The table's primary key is what refuses a second record, also when two processes race;
the application then re-reads the keys and answers duplicate or conflict.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresFactory,
)
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier


@dataclass(frozen=True)
class KeyRow:
    customer_id: str
    kind: str
    key: str
    payload_hash: str
    originator_id: UUID
    originator_version: int
    meter: str
    quantity: str


def _rows(keys: Iterable[KeyRow]) -> list[KeyRow]:
    # A fixed order means two writers never wait on each other's keys in opposite orders.
    return sorted(keys, key=lambda k: (k.customer_id, k.kind, k.key))


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


def prepare_sqlite_file(path: str) -> None:
    """Create the store's file in WAL mode before the event store's recorders open it."""
    if path.startswith("file:"):
        return
    conn = sqlite3.connect(path, timeout=30)
    try:
        set_wal_mode(conn)
    finally:
        conn.close()


def _key_row(r: Any, originator_id: UUID) -> KeyRow:
    return KeyRow(
        r["customer_id"],
        r["kind"],
        r["key"],
        r["payload_hash"],
        originator_id,
        int(r["originator_version"]),
        r["meter"],
        r["quantity"],
    )


class _SerialisedCreateTable:
    """Processes starting together (the API and the worker) race on CREATE TABLE IF NOT
    EXISTS ("pg_type_typname_nsp_index") and CREATE OR REPLACE FUNCTION ("tuple concurrently
    updated"): tables are created one process at a time, under an advisory lock."""

    datastore: Any

    def create_table(self) -> None:
        with self.datastore.get_connection() as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext('billing.create_table'))")
            try:
                super().create_table()  # type: ignore[misc]
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext('billing.create_table'))")


class PostgresSnapshotRecorder(_SerialisedCreateTable, PostgresAggregateRecorder):
    """The snapshots table's recorder."""


class PostgresBillingFactory(PostgresFactory):
    aggregate_recorder_class = PostgresSnapshotRecorder


class PostgresBillingRecorder(_SerialisedCreateTable, PostgresApplicationRecorder):
    def __init__(self, datastore: Any, *, events_table_name: str = "stored_events") -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.keys_table_name = events_table_name.replace("_events", "") + "_keys"
        table = SQL("{}.{}").format(
            Identifier(self.datastore.schema), Identifier(self.keys_table_name)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {table} ("
                "customer_id text NOT NULL, kind text NOT NULL, key text NOT NULL, "
                "payload_hash text NOT NULL, originator_id uuid NOT NULL, "
                "originator_version bigint NOT NULL, meter text NOT NULL, quantity text NOT NULL, "
                "PRIMARY KEY (customer_id, kind, key))"
            ).format(table=table)
        )
        # One JSON parameter: PostgreSQL unpacks it in C, far faster than adapting arrays.
        self.insert_keys_statement = SQL(
            "INSERT INTO {table} (customer_id, kind, key, payload_hash, originator_id, "
            "originator_version, meter, quantity) "
            "SELECT * FROM json_to_recordset(%s::json) AS x(customer_id text, kind text, "
            "key text, payload_hash text, originator_id uuid, originator_version bigint, "
            "meter text, quantity text)"
        ).format(table=table)
        self.newer_statement = SQL(
            "SELECT DISTINCT e.originator_id FROM {events} e "
            "JOIN json_to_recordset(%s::json) AS q(id uuid, v bigint) "
            "ON e.originator_id = q.id AND e.originator_version > q.v"
        ).format(
            events=SQL("{}.{}").format(
                Identifier(self.datastore.schema), Identifier(events_table_name)
            )
        )
        self.keys_of_statement = SQL(
            "SELECT * FROM {table} WHERE originator_id = ANY(%s::uuid[])"
        ).format(table=table)
        self.select_keys_statement = SQL(
            "SELECT k.* FROM {table} k JOIN (SELECT e->>0 AS c, e->>1 AS k2 "
            "FROM json_array_elements(%s::json) AS e) AS q "
            "ON k.customer_id = q.c AND k.key = q.k2 WHERE k.kind = %s"
        ).format(table=table)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # Build the parameters first: inside the library's transaction block a Python
        # exception would be caught and the block committed, so only SQL may run there.
        keys = _rows(kwargs.pop("keys", None) or ())
        if keys:
            kwargs["key_columns"] = [
                json.dumps(
                    [
                        {
                            "customer_id": k.customer_id,
                            "kind": k.kind,
                            "key": k.key,
                            "payload_hash": k.payload_hash,
                            "originator_id": str(k.originator_id),
                            "originator_version": k.originator_version,
                            "meter": k.meter,
                            "quantity": k.quantity,
                        }
                        for k in keys
                    ]
                )
            ]
        return super().insert_events(stored_events, **kwargs)

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        notification_ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        if kwargs.get("key_columns"):
            conn = curs.connection
            with conn.pipeline() as pipeline, conn.cursor() as keys_cursor:
                keys_cursor.execute(self.insert_keys_statement, kwargs["key_columns"])
                pipeline.sync()
        return notification_ids

    def newer_than(self, versions: dict[UUID, int]) -> set[UUID]:
        """The aggregates, of those given with a version, that have events after it."""
        if not versions:
            return set()
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                self.newer_statement,
                [json.dumps([{"id": str(i), "v": v} for i, v in versions.items()])],
            )
            return {row["originator_id"] for row in curs.fetchall()}

    def keys_of(self, originator_ids: Sequence[UUID]) -> list[KeyRow]:
        """Every key row pointing at these aggregates (the reconciliation's index check)."""
        if not originator_ids:
            return []
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.keys_of_statement, [list(originator_ids)])
            return [_key_row(r, r["originator_id"]) for r in curs.fetchall()]

    def select_keys(
        self, kind: str, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], KeyRow]:
        if not pairs:
            return {}
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.select_keys_statement, [json.dumps(list(pairs)), kind])
            return {
                (r["customer_id"], r["key"]): _key_row(r, r["originator_id"])
                for r in curs.fetchall()
            }


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
        keys = _rows(kwargs.get("keys") or ())
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

    def newer_than(self, versions: dict[UUID, int]) -> set[UUID]:
        """The aggregates, of those given with a version, that have events after it."""
        newer: set[UUID] = set()
        items = list(versions.items())
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(items), 400):
                chunk = items[start : start + 400]
                c.execute(
                    "WITH q(id, v) AS (VALUES " + ",".join(["(?, ?)"] * len(chunk)) + ") "
                    f"SELECT DISTINCT e.originator_id FROM {self.events_table_name} e "
                    "JOIN q ON e.originator_id = q.id AND e.originator_version > q.v",
                    [x for i, v in chunk for x in (i.hex, v)],
                )
                newer.update(UUID(row["originator_id"]) for row in c.fetchall())
        return newer

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
                rows += [_key_row(r, UUID(r["originator_id"])) for r in c.fetchall()]
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
                        found[(r["customer_id"], r["key"])] = _key_row(r, UUID(r["originator_id"]))
        return found
