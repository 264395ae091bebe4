"""Where the views live: SQL connections to PostgreSQL or SQLite behind one small interface.

PostgreSQL views live in the events' database and schema. SQLite views live in a sibling
file (`billing.db` -> `billing.views.db`): SQLite has one writer per file, so a separate
file keeps view writes from queueing behind ingestion. Either way a view's rows and its
tracking position share one database, so they commit in one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adapters.sqlite import set_wal_mode
from billing_domain.settings import Settings

SQLITE_KEYS = 300  # keys per query: SQLite allows 32766 parameters


class Cursor:
    """One transaction's statements, with `?` placeholders on both databases."""

    def __init__(self, raw: Any, postgres: bool) -> None:
        self.raw = raw
        self.postgres = postgres

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        self.raw.execute(self._sql(sql), tuple(params))
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.raw.executemany(self._sql(sql), rows)

    def rows_in(
        self,
        table: str,
        columns: Sequence[str],
        keys: Iterable[Sequence[Any]],
        select: str = "*",
        where: str = "",
    ) -> list[dict[str, Any]]:
        """Every row whose `columns` equal one of `keys` (text values), in one query on
        PostgreSQL (arrays as binary parameters: no text-array quoting) and in chunks of
        SQLITE_KEYS keys on SQLite (in process, no round trips)."""
        wanted = list(dict.fromkeys(tuple(k) for k in keys))
        if not wanted:
            return []
        extra = f" AND {where}" if where else ""
        if self.postgres:
            arrays = ", ".join(["%b::text[]"] * len(columns))
            self.raw.execute(
                f"SELECT {select} FROM {table} WHERE ({', '.join(columns)}) IN "
                f"(SELECT * FROM unnest({arrays})){extra}",
                [list(column) for column in zip(*wanted, strict=True)],
            )
            return [dict(row) for row in self.raw.fetchall()]
        found: list[dict[str, Any]] = []
        tuple_sql = "(" + ", ".join("?" * len(columns)) + ")"
        # The keys drive a join: SQLite plans `(a, b) IN (VALUES ...)` of more than one row as
        # a scan of the whole table, but looks each joined key up in the table's index.
        on = " AND ".join(f"{table}.{c} = k.column{i}" for i, c in enumerate(columns, 1))
        chosen = f"{table}.*" if select == "*" else select
        for start in range(0, len(wanted), SQLITE_KEYS):
            chunk = wanted[start : start + SQLITE_KEYS]
            found += self.all(
                f"SELECT {chosen} FROM (VALUES {', '.join([tuple_sql] * len(chunk))}) AS k "
                f"JOIN {table} ON {on}{extra}",
                [value for key in chunk for value in key],
            )
        return found

    def write_rows(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
        conflict: str = "",
    ) -> None:
        """Insert many rows in one statement. PostgreSQL: plain inserts by binary COPY;
        with a `conflict` clause, arrays through unnest, sent as binary parameters, so JSON
        text is not quoted element by element. SQLite: one prepared statement, in process.
        `columns` are (name, SQL type); `conflict` is the ON CONFLICT clause, if any."""
        if not rows:
            return
        names = ", ".join(name for name, _ in columns)
        if self.postgres and not conflict:  # plain inserts: binary COPY, no array dumping
            with self.raw.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([kind.lower() for _, kind in columns])
                for row in rows:
                    copy.write_row(row)
            return
        if self.postgres:
            arrays = ", ".join(f"%b::{kind}[]" for _, kind in columns)
            self.raw.execute(
                f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {conflict}",
                [list(column) for column in zip(*rows, strict=True)],
            )
            return
        marks = ", ".join("?" * len(columns))
        self.raw.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks}) {conflict}", rows)

    def lock_ddl(self) -> None:
        """Serialise table creation between processes starting at once (SQLite's BEGIN
        IMMEDIATE already does); concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL."""
        if self.postgres:
            self.raw.execute("SELECT pg_advisory_xact_lock(hashtext('billing-projections'))")

    @property
    def rowcount(self) -> int:
        return int(self.raw.rowcount)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.execute(sql, params)
        return [dict(row) for row in self.raw.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        self.execute(sql, params)
        row = self.raw.fetchone()
        return None if row is None else dict(row)


class ViewStore:
    postgres: bool

    @staticmethod
    def for_settings(settings: Settings) -> ViewStore:
        env = settings.eventsourcing_env()
        if settings.is_postgres:
            return PostgresViewStore(env)
        return SQLiteViewStore(env["SQLITE_DBNAME"])

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        raise NotImplementedError

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SQLiteViewStore(ViewStore):
    postgres = False

    def __init__(self, events_db: str) -> None:
        self.uri = events_db.startswith("file:")
        if self.uri:
            self.path = "file:billing_views?mode=memory&cache=shared"
        else:
            events = Path(events_db)
            self.path = str(events.with_name(f"{events.stem}.views{events.suffix or '.db'}"))
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._keeper = self._connect()  # an in-memory database lives while one connection does

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, uri=self.uri, isolation_level=None, timeout=30, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        if not self.uri:
            set_wal_mode(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._all.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        conn = self._conn()
        raw = conn.cursor()
        raw.execute("BEGIN IMMEDIATE")
        try:
            yield Cursor(raw, False)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        conn = self._conn()
        raw = conn.cursor()
        raw.execute("BEGIN")
        try:
            yield Cursor(raw, False)
        finally:
            conn.rollback()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


class PostgresViewStore(ViewStore):
    postgres = True

    def __init__(self, env: dict[str, str]) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.schema = env.get("POSTGRES_SCHEMA") or "public"
        conninfo = (
            f"dbname={env['POSTGRES_DBNAME']} host={env['POSTGRES_HOST']} "
            f"port={env['POSTGRES_PORT']} user={env['POSTGRES_USER']}"
        )
        kwargs: dict[str, Any] = {
            "row_factory": dict_row,
            "autocommit": True,
            "options": f"-c search_path={self.schema}",
        }
        if env.get("POSTGRES_PASSWORD"):
            kwargs["password"] = env["POSTGRES_PASSWORD"]
        self.pool = ConnectionPool(
            conninfo, min_size=1, max_size=6, kwargs=kwargs, open=True, name="billing-views"
        )

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as raw:
            yield Cursor(raw, True)

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as raw:
            yield Cursor(raw, True)

    def close(self) -> None:
        self.pool.close()
