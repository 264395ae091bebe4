"""Helpers both store adapters use."""

from __future__ import annotations

import sqlite3
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError

from billing_domain.ports import KeyRow

# SQLSTATE classes of a lost or refused connection, and of an operator stopping the server.
_CONNECTION_STATES = ("08", "57P")


def key_row(r: Any, originator_id: UUID) -> KeyRow:
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


def _is_outage(error: BaseException) -> bool:
    if isinstance(error, OperationalError | InterfaceError):
        return True
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    if isinstance(error, psycopg.Error):
        return (error.sqlstate or "").startswith(_CONNECTION_STATES)
    if isinstance(error, sqlite3.OperationalError):
        return "locked" in str(error) or "busy" in str(error)
    return False


def store_unavailable(error: BaseException) -> bool:
    """Whether this error means the store could not be reached or did not answer in time
    (connection lost or refused, server shutting down, a lock or statement timeout), so the
    same request may succeed when retried. The library wraps the driver's errors (`raise ...
    from`): the chain of causes is followed to see them."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if _is_outage(current):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False
