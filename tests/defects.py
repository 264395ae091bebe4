"""Defects injected straight into the stored tables, as a bad deploy, a failed write or an
intruder would leave them: SQL against the event store and the read-model tables, never
through the application. Used by the reconciliation tests and benchmark on both stores."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg

from billing_domain.ids import invoice_id, period_uuid
from billing_domain.settings import Settings

PERIOD = "billing_domain.period:BillingPeriod."


class EventTables:
    """The event store's table, read and written with plain SQL."""

    def __init__(self, settings: Settings) -> None:
        env = settings.eventsourcing_env()
        self.postgres = settings.is_postgres
        if self.postgres:
            self.conn: Any = psycopg.connect(
                host=env["POSTGRES_HOST"],
                port=env["POSTGRES_PORT"],
                dbname=env["POSTGRES_DBNAME"],
                user=env["POSTGRES_USER"],
                autocommit=True,
            )
            schema = env["POSTGRES_SCHEMA"] or "public"
            self.events = f'"{schema}".billing_events'
        else:
            self.conn = sqlite3.connect(env["SQLITE_DBNAME"], isolation_level=None)
            self.events = "stored_events"

    def close(self) -> None:
        self.conn.close()

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _id(self, originator_id: UUID) -> Any:
        return originator_id if self.postgres else originator_id.hex

    def rows(self, topic_suffix: str) -> list[tuple[Any, int, dict[str, Any]]]:
        """(originator_id, version, state) of every stored event with this period topic."""
        cur = self.conn.execute(
            self._q(
                f"SELECT originator_id, originator_version, state FROM {self.events} "
                "WHERE topic = ?"
            ),
            [PERIOD + topic_suffix],
        )
        return [(r[0], int(r[1]), json.loads(bytes(r[2]))) for r in cur.fetchall()]

    def write_state(self, originator_id: Any, version: int, state: dict[str, Any]) -> None:
        self.conn.execute(
            self._q(
                f"UPDATE {self.events} SET state = ? WHERE originator_id = ? "
                "AND originator_version = ?"
            ),
            [json.dumps(state).encode(), originator_id, version],
        )

    def next_version(self, originator_id: UUID) -> int:
        row = self.conn.execute(
            self._q(f"SELECT MAX(originator_version) FROM {self.events} WHERE originator_id = ?"),
            [self._id(originator_id)],
        ).fetchone()
        return int(row[0] or 0) + 1

    def insert(self, originator_id: UUID, topic: str, state: bytes) -> int:
        """Append a stored event to an aggregate's stream at its next version."""
        version = self.next_version(originator_id)
        self.conn.execute(
            self._q(
                f"INSERT INTO {self.events} (originator_id, "
                "originator_version, topic, state) VALUES (?, ?, ?, ?)"
            ),
            [self._id(originator_id), version, topic, state],
        )
        return version


@contextmanager
def event_tables(settings: Settings) -> Iterator[EventTables]:
    tables = EventTables(settings)
    try:
        yield tables
    finally:
        tables.close()


def alter_usage_quantity(settings: Settings, event_id: str, quantity: str) -> str:
    """Change one stored usage record's quantity in place; returns the quantity it had."""
    with event_tables(settings) as t:
        for originator_id, version, state in t.rows("UsageRecorded"):
            for record in state["records"]:
                if record[0] == event_id:
                    before = record[3]
                    record[3] = quantity
                    t.write_state(originator_id, version, state)
                    return str(before)
    raise LookupError(f"no stored usage record {event_id!r}")


def usage_state(
    records: list[list[Any]],
    received_at: str,
    meters: dict[str, list[Any]],
    treatment: str = "on_time",
) -> bytes:
    """A UsageRecorded state as the application writes it."""
    return json.dumps(
        {
            "timestamp": {"_type_": "datetime_iso", "_data_": "2026-11-24T12:00:00+00:00"},
            "received_at": received_at,
            "emitter": "intruder",
            "key_id": "-",
            "treatment": treatment,
            "meters": meters,
            "records": records,
        }
    ).encode()


def insert_usage(
    settings: Settings,
    customer_id: str,
    period: str,
    records: list[list[Any]],
    received_at: str,
    meters: dict[str, list[Any]],
) -> int:
    with event_tables(settings) as t:
        return t.insert(
            period_uuid(customer_id, period),
            PERIOD + "UsageRecorded",
            usage_state(records, received_at, meters),
        )


def insert_raw(settings: Settings, customer_id: str, period: str, topic: str, state: bytes) -> int:
    with event_tables(settings) as t:
        return t.insert(period_uuid(customer_id, period), topic, state)


@contextmanager
def view_tables(settings: Settings) -> Iterator[Any]:
    """A write cursor on the read-model tables (`?` placeholders on both stores)."""
    from projections.store import ViewStore

    store = ViewStore.for_settings(settings)
    try:
        with store.write() as cur:
            yield cur
    finally:
        store.close()


def delete_balance(settings: Settings, customer_id: str, period: str, meter: str) -> int:
    with view_tables(settings) as cur:
        return cur.execute(
            "DELETE FROM pj_invoices_v1_balances WHERE customer_id = ? AND "
            "period = ? AND meter = ?",
            [customer_id, period, meter],
        ).rowcount


def alter_invoice_total(settings: Settings, customer_id: str, period: str, total: str) -> int:
    with view_tables(settings) as cur:
        return cur.execute(
            "UPDATE pj_invoices_v1_invoices SET total = ? WHERE invoice_id = ?",
            [total, invoice_id(customer_id, period)],
        ).rowcount


def delete_invoice(settings: Settings, customer_id: str, period: str) -> int:
    with view_tables(settings) as cur:
        return cur.execute(
            "DELETE FROM pj_invoices_v1_invoices WHERE invoice_id = ?",
            [invoice_id(customer_id, period)],
        ).rowcount
