"""The PostgreSQL store: the production default, through the library's postgres module."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresFactory,
)
from eventsourcing.utils import Environment
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from adapters.persistence import key_row
from billing_domain.ports import KeyRow, ordered_keys
from billing_domain.settings import SettingsError


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
    """The library's factory, with every pooled connection bounded in time: connecting
    (libpq `connect_timeout`), each statement (`statement_timeout`), and idling inside a
    transaction (the library's `idle_in_transaction_session_timeout`)."""

    aggregate_recorder_class = PostgresSnapshotRecorder

    def __init__(self, env: Environment | Any) -> None:
        super().__init__(env)
        kwargs = self.datastore.pool.kwargs
        assert isinstance(kwargs, dict)
        kwargs["connect_timeout"] = int(env.get("BILLING_CONNECT_TIMEOUT") or 5)
        kwargs["options"] = (
            f"-c statement_timeout={int(env.get('BILLING_STATEMENT_TIMEOUT_MS') or 30000)}"
        )


def check_reachable(env: dict[str, str]) -> None:
    """Connect once, quickly, so a wrong URL or a stopped server is one clear sentence
    naming the setting, not a long wait then a traceback."""
    host, port, dbname = env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["POSTGRES_DBNAME"]
    schema = env.get("POSTGRES_SCHEMA") or ""
    where = f"PostgreSQL at {host}:{port}, database {dbname!r}"
    try:
        with psycopg.connect(
            host=host,
            port=port,
            dbname=dbname,
            user=env["POSTGRES_USER"],
            password=env.get("POSTGRES_PASSWORD") or None,
            connect_timeout=int(env.get("BILLING_CONNECT_TIMEOUT") or 5),
        ) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema or "public"]
            ).fetchone()
    except psycopg.Error as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise SettingsError(
            f"BILLING_DATABASE_URL: cannot reach {where} ({reason}); start PostgreSQL or set "
            "BILLING_DATABASE_URL=postgresql://user:password@host:port/dbname"
        ) from None
    if found is None:
        raise SettingsError(
            f"BILLING_DATABASE_URL: schema {schema!r} does not exist in {where}; "
            f'create it (CREATE SCHEMA "{schema}") or change ?schema= in BILLING_DATABASE_URL'
        )


def _places(places: Iterable[tuple[UUID, int]]) -> str:
    """(originator id, version) places as the JSON the joined statements read."""
    return json.dumps([{"id": str(i), "v": v} for i, v in places])


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
        events = SQL("{}.{}").format(
            Identifier(self.datastore.schema), Identifier(events_table_name)
        )
        joined = (  # the events table joined to (originator id, version) places, as JSON
            "SELECT {select} FROM {events} e "
            "JOIN json_to_recordset(%s::json) AS q(id uuid, v bigint) "
            "ON e.originator_id = q.id AND e.originator_version {compare} q.v"
        )
        self.newer_statement = SQL(joined).format(
            select=SQL("DISTINCT e.originator_id"), events=events, compare=SQL(">")
        )
        self.events_at_statement = SQL(joined).format(
            select=SQL("e.originator_id, e.originator_version, e.topic, e.state"),
            events=events,
            compare=SQL("="),
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
        keys = ordered_keys(kwargs.pop("keys", None) or ())
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
        notification_ids: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
        return notification_ids

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
            curs.execute(self.newer_statement, [_places(versions.items())])
            return {row["originator_id"] for row in curs.fetchall()}

    def events_at(self, places: Sequence[tuple[UUID, int]]) -> list[StoredEvent]:
        """The stored events at these (originator id, version) places, in one query."""
        if not places:
            return []
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.events_at_statement, [_places(places)])
            return [
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]

    def keys_of(self, originator_ids: Sequence[UUID]) -> list[KeyRow]:
        """Every key row pointing at these aggregates (the reconciliation's index check)."""
        if not originator_ids:
            return []
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.keys_of_statement, [list(originator_ids)])
            return [key_row(r, r["originator_id"]) for r in curs.fetchall()]

    def select_keys(
        self, kind: str, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], KeyRow]:
        if not pairs:
            return {}
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.select_keys_statement, [json.dumps(list(pairs)), kind])
            return {
                (r["customer_id"], r["key"]): key_row(r, r["originator_id"])
                for r in curs.fetchall()
            }
