"""Reads of the webhook outbox: endpoints with their health, delivery logs, the backlog; and the
one write an operator asks for, sending a delivery again."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from billing_domain.webhooks import UnknownDelivery
from projections.base import stamp
from projections.reads import decode_cursor, encode_cursor
from projections.runner import Runner
from projections.store import Cursor, ViewStore
from projections.webhooks import DELIVERIES, HEALTH


class WebhookReads:
    def __init__(self, runner: Runner, store: ViewStore) -> None:
        self.runner = runner
        self.store = store

    def _endpoints_table(self) -> str:
        return self.runner.projection(self.runner.live("webhooks")).t("endpoints")

    def endpoints(self, cursor: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Registered endpoints in the order registered, with status and backlog."""
        after = decode_cursor(cursor, int)
        table = self._endpoints_table()
        with self.store.read() as cur:
            rows = cur.all(
                f"SELECT * FROM {table} WHERE registered_position > ? "
                "ORDER BY registered_position LIMIT ?",
                [after[0] if after else 0, limit + 1],
            )
            items = [self._endpoint(cur, row) for row in rows[:limit]]
        more = len(rows) > limit
        return {
            "items": items,
            "next_cursor": encode_cursor(rows[limit - 1]["registered_position"]) if more else None,
        }

    def endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        table = self._endpoints_table()
        with self.store.read() as cur:
            row = cur.one(f"SELECT * FROM {table} WHERE endpoint_id = ?", [endpoint_id])
            return None if row is None else self._endpoint(cur, row)

    def _endpoint(self, cur: Cursor, row: dict[str, Any]) -> dict[str, Any]:
        endpoint_id = row["endpoint_id"]
        health = cur.one(f"SELECT * FROM {HEALTH} WHERE endpoint_id = ?", [endpoint_id]) or {}
        counts = {
            r["status"]: int(r["n"])
            for r in cur.all(
                f"SELECT status, COUNT(*) AS n FROM {DELIVERIES} WHERE endpoint_id = ? "
                "GROUP BY status",
                [endpoint_id],
            )
        }
        if row["disabled_position"] is not None:
            status = "disabled"
        elif health.get("failing_since"):
            status = "failing"
        else:
            status = "active"
        return {
            "webhook_id": endpoint_id,
            "url": row["url"],
            "events": json.loads(row["events"]),
            "status": status,
            "created_at": row["registered_at"],
            "disabled_at": row["disabled_at"],
            "failing_since": health.get("failing_since"),
            "consecutive_failures": int(health.get("consecutive_failures") or 0),
            "last_success_at": health.get("last_success_at"),
            "last_failure_at": health.get("last_failure_at"),
            "pending": counts.get("pending", 0),
            "delivered": counts.get("delivered", 0),
            "failed": counts.get("failed", 0),
        }

    def deliveries(
        self,
        endpoint_id: str,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """An endpoint's deliveries in log order (the order they are sent in)."""
        after = decode_cursor(cursor, int)
        where, params = ["endpoint_id = ?", "seq > ?"], [endpoint_id, after[0] if after else 0]
        if status is not None:
            where.append("status = ?")
            params.append(status)
        with self.store.read() as cur:
            rows = cur.all(
                f"SELECT * FROM {DELIVERIES} WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                [*params, limit + 1],
            )
        more = len(rows) > limit
        return {
            "items": [delivery(row) for row in rows[:limit]],
            "next_cursor": encode_cursor(rows[limit - 1]["seq"]) if more else None,
        }

    def retry(self, endpoint_id: str, message_id: str, now: datetime) -> dict[str, Any]:
        """Send a delivery again as soon as its endpoint's queue reaches it (a failed or
        delivered one goes back in its place in log order, with a new retry window)."""
        key = [endpoint_id, message_id]
        with self.store.write() as cur:
            moved = cur.execute(
                f"UPDATE {DELIVERIES} SET status = 'pending', next_attempt_at = ?, "
                "first_attempt_at = NULL, lease_until = NULL WHERE endpoint_id = ? "
                "AND message_id = ?",
                [stamp(now), *key],
            ).rowcount
            if moved != 1:
                raise UnknownDelivery(f"no delivery {message_id[:80]!r} of webhook {endpoint_id}")
            row = cur.one(
                f"SELECT * FROM {DELIVERIES} WHERE endpoint_id = ? AND message_id = ?", key
            )
        assert row is not None
        return delivery(row)

    def backlog(self) -> dict[str, Any]:
        """Counts for monitoring, read through the status index (never the delivered rows):
        deliveries pending for active endpoints, deliveries failed, endpoints failing, and the
        oldest pending delivery's time."""
        table = self._endpoints_table()
        active = f"endpoint_id IN (SELECT endpoint_id FROM {table} WHERE disabled_position IS NULL)"
        with self.store.read() as cur:
            pending = cur.one(
                f"SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM {DELIVERIES} "
                f"WHERE status = 'pending' AND {active}"
            )
            failed = cur.one(f"SELECT COUNT(*) AS n FROM {DELIVERIES} WHERE status = 'failed'")
            failing = cur.one(
                f"SELECT COUNT(*) AS n FROM {HEALTH} WHERE failing_since IS NOT NULL AND {active}"
            )
        return {
            "pending": int((pending or {}).get("n") or 0),
            "failed": int((failed or {}).get("n") or 0),
            "failing_endpoints": int((failing or {}).get("n") or 0),
            "oldest_pending_at": (pending or {}).get("oldest"),
        }


def webhook_backlog(reads: WebhookReads) -> dict[str, Any]:
    """The webhook counts a metrics endpoint exports (see WebhookReads.backlog)."""
    return reads.backlog()


def delivery(row: dict[str, Any]) -> dict[str, Any]:
    payload = json.loads(row["payload"])
    return {
        "delivery_id": row["message_id"],
        "webhook_id": row["endpoint_id"],
        "event_type": row["event_type"],
        "position": int(row["seq"]),
        "status": row["status"],
        "attempts": int(row["attempts"]),
        "last_status_code": row["last_status"],
        "last_error": row["last_error"],
        "next_attempt_at": row["next_attempt_at"] if row["status"] == "pending" else None,
        "delivered_at": row["delivered_at"],
        "created_at": row["created_at"],
        "payload": payload,
    }
