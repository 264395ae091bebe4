"""Reconciliation runs started from the console: who ran which period when, and what it found.

Kept in one small table beside the views (`console_reconciliation_runs`), at most KEEP_RUNS
rows; a report larger than MAX_REPORT_BYTES keeps its summary and drops its rows.
"""

from __future__ import annotations

import json
import weakref
from datetime import UTC, datetime
from typing import Any

from api.bootstrap import Services
from projections.base import stamp

TABLE = "console_reconciliation_runs"
KEEP_RUNS = 50
MAX_REPORT_BYTES = 512 * 1024


_ready: weakref.WeakSet[Any] = weakref.WeakSet()


def _ensure(services: Services) -> None:
    store = services.read_models.store
    if store in _ready:
        return
    with store.write() as cur:
        cur.lock_ddl()
        _create(cur)
    _ready.add(store)


def _create(cur: Any) -> None:
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (run_id BIGINT PRIMARY KEY, at TEXT NOT NULL, "
        "actor TEXT NOT NULL, period TEXT NOT NULL, customer_id TEXT, ok INTEGER NOT NULL, "
        "summary TEXT NOT NULL, report TEXT)"
    )


def keep(services: Services, actor: str, report: dict[str, Any]) -> int:
    """Store a run's report; the oldest runs beyond KEEP_RUNS go. Returns the run's id."""
    text = json.dumps(report, default=str)
    kept = text if len(text) <= MAX_REPORT_BYTES else None
    _ensure(services)
    with services.read_models.store.write() as cur:
        last = cur.one(f"SELECT MAX(run_id) AS n FROM {TABLE}")
        run_id = int(last["n"] or 0) + 1 if last else 1
        cur.execute(
            f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                stamp(datetime.now(UTC)),
                actor,
                report["period"],
                report.get("customer_id"),
                1 if report["ok"] else 0,
                json.dumps(
                    {"summary": report["summary"], "checked": report["checked"]}, default=str
                ),
                kept,
            ],
        )
        cur.execute(f"DELETE FROM {TABLE} WHERE run_id <= ?", [run_id - KEEP_RUNS])
    return run_id


def listed(services: Services, until: str | None = None) -> list[dict[str, Any]]:
    """Past runs, newest first (those started by `until` when given)."""
    _ensure(services)
    with services.read_models.store.read() as cur:
        rows = cur.all(
            f"SELECT run_id, at, actor, period, customer_id, ok, summary FROM {TABLE} "
            "ORDER BY run_id DESC"
        )
    runs = [{**r, "ok": bool(r["ok"]), **json.loads(r["summary"])} for r in rows]
    return [r for r in runs if until is None or r["at"] <= until]


def one(services: Services, run_id: int) -> dict[str, Any] | None:
    _ensure(services)
    with services.read_models.store.read() as cur:
        row = cur.one(f"SELECT * FROM {TABLE} WHERE run_id = ?", [run_id])
    if row is None:
        return None
    return {
        **{k: row[k] for k in ("run_id", "at", "actor", "period", "customer_id")},
        "ok": bool(row["ok"]),
        **json.loads(row["summary"]),
        "report": json.loads(row["report"]) if row["report"] else None,
    }
