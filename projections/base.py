"""What every projection is: versioned tables, handlers per event topic, applied in batches."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from projections.store import Cursor


class Projection:
    """A view of the log. `version` names its tables; `logic` names the handlers' rules."""

    name = ""
    logic = 1
    topics: frozenset[str] = frozenset()  # "Class.Event" qualnames; others are skipped unread

    def __init__(self, version: int) -> None:
        self.version = version
        self.prefix = f"pj_{self.name}_v{version}"
        # Set by the runner while it builds a version nobody reads yet: work whose result
        # only the newest state decides (an open period's draft, say) may wait for `settle`.
        self.deferring = False
        # Set by `keep` while the runner applies many batches per checkpoint.
        self.keeping = False

    @property
    def key(self) -> str:
        return f"{self.name}_v{self.version}"

    def t(self, table: str) -> str:
        return f"{self.prefix}_{table}"

    def tables(self) -> dict[str, str]:
        """Table name suffix -> column definitions."""
        raise NotImplementedError

    def indexes(self) -> list[str]:
        return []

    def columns(self, table: str) -> list[tuple[str, str]]:
        """A table's (column, SQL type) pairs, in order."""
        return COLUMN.findall(self.tables()[table])

    def fingerprint(self) -> str:
        """What the code expects the tables to be: every table's columns and types, in order.
        A live version whose recorded fingerprint differs was built by other code."""
        return schema_fingerprint({table: self.columns(table) for table in self.tables()})

    def create(self, cur: Cursor) -> None:
        for table, columns in self.tables().items():
            cur.execute(f"CREATE TABLE IF NOT EXISTS {self.t(table)} ({columns})")
        for statement in self.indexes():
            cur.execute(statement)

    def drop(self, cur: Cursor) -> None:
        for table in self.tables():
            cur.execute(f"DROP TABLE IF EXISTS {self.t(table)}")

    def apply(self, cur: Cursor, events: Sequence[tuple[int, str, Any]]) -> None:
        """Write the rows for (position, topic, event) triples, inside the caller's transaction."""
        raise NotImplementedError

    def keep(self) -> bool:
        """With many batches to go (a build, or a live version far behind): start keeping
        the rows batches fold into in memory across batches, written by `flush` at
        checkpoints instead of once per batch. False (the default) when the projection
        cannot: each batch then writes all its rows."""
        return False

    def flush(self, cur: Cursor) -> None:
        """Write the rows kept in memory as they stand, inside the caller's transaction (which
        also moves the position), and drop them: a checkpoint. They are never kept past it:
        between transactions another process may change them (a quarantine retry does,
        without moving the position)."""

    def holding(self) -> int:
        """Rows kept in memory now: the runner ends a checkpoint early above KEEP_ROWS."""
        return 0

    def forget(self) -> None:
        """Drop the rows kept in memory without writing them (their transaction rolled back)."""

    def settle(self, cur: Cursor, after: Any) -> Any:
        """Do one chunk of the work deferred while `deferring` (after the chunk key `after`,
        None at first), inside the caller's transaction; return the next chunk's key, or
        None when nothing is left. The runner calls it until None before a built version
        is `ready` or `live`. It must be idempotent: a crash repeats it from the start."""
        return None

    def changes(self, cur: Cursor, live: Projection) -> list[dict[str, Any]]:
        """What switching reads from `live` to this version would change, for an operator."""
        raise NotImplementedError


COLUMN = re.compile(r"(\w+) (TEXT|BIGINT|INTEGER)\b")


def schema_fingerprint(tables: dict[str, list[tuple[str, str]]]) -> str:
    text = ";".join(
        f"{table}:" + ",".join(f"{name} {kind.lower()}" for name, kind in columns)
        for table, columns in sorted(tables.items())
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def dec(text: str | None) -> Decimal:
    return Decimal(text) if text else Decimal(0)


def stamp(moment: Any) -> str:
    """A fixed-width UTC time, so text comparison in SQL is time comparison."""
    if isinstance(moment, str):  # events of one commit share their receipt time: parsed once
        return _stamp_text(moment)
    return str(moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


@lru_cache(maxsize=1024)
def _stamp_text(moment: str) -> str:
    return stamp(datetime.fromisoformat(moment.replace("Z", "+00:00")))


def peaks_text(peaks: list[str]) -> str:
    """A lineage tree's compact range (hex digests, which JSON never escapes) as `dumps`
    writes it, without the encoder: one is written per billed event."""
    return '["' + '","'.join(peaks) + '"]' if peaks else "[]"
