"""What a rebuild would change: the invoice revisions that differ between two versions."""

from __future__ import annotations

import json
from typing import Any

from projections.store import Cursor


def invoice_changes(cur: Cursor, old: str, new: str) -> list[dict[str, Any]]:
    """Every invoice revision whose lines or total differ between two invoices tables."""

    def view(status: str | None, total: str | None, lines: str | None) -> Any:
        return (
            None
            if total is None
            else {"status": status, "total": total, "lines": json.loads(lines or "[]")}
        )

    changed = []
    for left, right, flip in ((old, new, False), (new, old, True)):
        only = "" if not flip else " AND b.invoice_id IS NULL"
        differ = (
            ""
            if flip
            else " AND (b.invoice_id IS NULL OR a.total <> b.total OR a.lines <> b.lines)"
        )
        for r in cur.all(
            f"SELECT a.invoice_id, a.revision, a.customer_id, a.period, a.status, "
            f"a.total, a.lines, b.status AS b_status, b.total AS b_total, "
            f"b.lines AS b_lines FROM {left} a LEFT JOIN {right} b ON "
            f"a.invoice_id = b.invoice_id AND a.revision = b.revision "
            f"WHERE 1 = 1{only}{differ}"
        ):
            mine = view(r["status"], r["total"], r["lines"])
            theirs = view(r["b_status"], r["b_total"], r["b_lines"])
            changed.append(
                {
                    "invoice_id": r["invoice_id"],
                    "customer_id": r["customer_id"],
                    "period": r["period"],
                    "revision": int(r["revision"]),
                    "before": theirs if flip else mine,
                    "after": mine if flip else theirs,
                }
            )
    return sorted(changed, key=lambda c: (c["customer_id"], c["period"], c["revision"]))
