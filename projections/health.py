"""What /health answers when a store does not: the errors that mean "down", and the answer."""

from __future__ import annotations

import sqlite3
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
