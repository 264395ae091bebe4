"""The webhook outbox: one pending delivery per (endpoint, event) the log says an endpoint wants.

Endpoints and the periods' customers are versioned tables like any projection's. The
deliveries are not: `webhook_deliveries` and `webhook_health` hold what was sent, and a
rebuilt version writes its rows with ON CONFLICT DO NOTHING, so rebuilding the outbox never
sends again what was delivered (nor resets what is pending or failed). A delivery's
`message_id` is derived from the stored event (originator id and version), so every version
and every process names the same event the same way; it is the `webhook-id` receivers
dedupe on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from billing_domain.ids import invoice_id
from billing_domain.usage import iso
from projections.base import Projection, stamp
from projections.store import Cursor

DELIVERIES = "webhook_deliveries"
HEALTH = "webhook_health"
MAX_LATE_RECORDS = 100  # records named in one usage.late payload; record_count says all

PERIOD_TOPICS = frozenset({"BillingPeriod.Opened"})
ENDPOINT_TOPICS = frozenset({"WebhookEndpoint.Registered", "WebhookEndpoint.Disabled"})
EVENT_TOPICS = frozenset(
    {
        "BillingPeriod.Closed",
        "BillingPeriod.Restated",
        "BillingPeriod.UsageRecorded",
        "AuditFact.Recorded",
    }
)
FACT_TYPES = {
    "usage.conflict": "usage.conflict",
    "reconciliation.findings": "reconciliation.finding",
    "projection.rebuilt": "projection.rebuilt",
}
DELIVERY_COLUMNS = [
    ("endpoint_id", "TEXT"),
    ("message_id", "TEXT"),
    ("seq", "BIGINT"),
    ("event_type", "TEXT"),
    ("payload", "TEXT"),
    ("status", "TEXT"),
    ("attempts", "INTEGER"),
    ("created_at", "TEXT"),
    ("next_attempt_at", "TEXT"),
]


def create_delivery_tables(cur: Cursor) -> None:
    """The delivery state, outside every version (see the module's docstring)."""
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {DELIVERIES} (endpoint_id TEXT NOT NULL, "
        "message_id TEXT NOT NULL, seq BIGINT NOT NULL, event_type TEXT NOT NULL, "
        "payload TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL, "
        "created_at TEXT NOT NULL, next_attempt_at TEXT, first_attempt_at TEXT, "
        "lease_until TEXT, last_status INTEGER, last_error TEXT, delivered_at TEXT, "
        "PRIMARY KEY (endpoint_id, message_id))"
    )
    cur.execute(
        f"CREATE INDEX IF NOT EXISTS {DELIVERIES}_queue ON {DELIVERIES} (endpoint_id, status, seq)"
    )
    cur.execute(f"CREATE INDEX IF NOT EXISTS {DELIVERIES}_seq ON {DELIVERIES} (endpoint_id, seq)")
    cur.execute(
        f"CREATE INDEX IF NOT EXISTS {DELIVERIES}_status ON {DELIVERIES} (status, created_at)"
    )
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {HEALTH} (endpoint_id TEXT PRIMARY KEY, "
        "consecutive_failures INTEGER NOT NULL, failing_since TEXT, last_success_at TEXT, "
        "last_failure_at TEXT)"
    )


def message_id(originator_id: Any, originator_version: int) -> str:
    text = f"{originator_id}:{originator_version}"
    return "msg_" + hashlib.sha256(text.encode()).hexdigest()[:32]


def envelope(event_type: str, at: Any, data: dict[str, Any]) -> str:
    """The body sent: Standard Webhooks' `{type, timestamp, data}`, fixed once written."""
    moment = at if isinstance(at, str) else iso(at)
    body = {"type": event_type, "timestamp": moment, "data": data}
    return json.dumps(body, separators=(",", ":"), default=str)


class WebhooksProjection(Projection):
    """Applied as a set: the batch's endpoints and periods first, then every event of the batch
    fanned out to the endpoints registered before it (and not disabled before it) that want
    its type, written with one statement."""

    name = "webhooks"
    topics = PERIOD_TOPICS | ENDPOINT_TOPICS | EVENT_TOPICS

    def tables(self) -> dict[str, str]:
        return {
            "endpoints": "endpoint_id TEXT PRIMARY KEY, uuid TEXT NOT NULL, url TEXT NOT NULL, "
            "events TEXT NOT NULL, "
            "registered_at TEXT NOT NULL, registered_position BIGINT NOT NULL, "
            "disabled_at TEXT, disabled_position BIGINT",
            "periods": "uuid TEXT PRIMARY KEY, customer_id TEXT NOT NULL, period TEXT NOT NULL",
        }

    def create(self, cur: Cursor) -> None:
        super().create(cur)
        create_delivery_tables(cur)

    def apply(self, cur: Cursor, events: Sequence[tuple[int, str, Any]]) -> None:
        self._endpoints(cur, events)
        periods: dict[str, tuple[str, str]] = {
            e.originator_id.hex: (e.customer_id, e.period)
            for _, topic, e in events
            if topic in PERIOD_TOPICS
        }
        cur.write_rows(
            self.t("periods"),
            self.columns("periods"),
            [(uuid, c, p) for uuid, (c, p) in periods.items()],
            "ON CONFLICT DO NOTHING",
        )
        messages = [
            (position, m)
            for position, topic, e in events
            if topic in EVENT_TOPICS
            for m in [self._message(topic, e)]
            if m is not None
        ]
        if not messages:
            return
        wanted = {
            e.originator_id.hex
            for _, topic, e in events
            if topic.startswith("BillingPeriod.") and topic not in PERIOD_TOPICS
        }
        for row in cur.rows_in(self.t("periods"), ["uuid"], [[u] for u in wanted - set(periods)]):
            periods[row["uuid"]] = (row["customer_id"], row["period"])
        endpoints = cur.all(f"SELECT * FROM {self.t('endpoints')}")
        rows = []
        for position, (event_type, at, data, e) in messages:
            if "customer_id" not in data and e.originator_id.hex in periods:
                customer_id, period = periods[e.originator_id.hex]
                data = {"customer_id": customer_id, "period": period, **data}
                if event_type.startswith("invoice."):
                    data["invoice_id"] = invoice_id(customer_id, period)
            body = envelope(event_type, at, data)
            for endpoint in endpoints:
                if not _wants(endpoint, event_type, position):
                    continue
                rows.append(
                    (
                        endpoint["endpoint_id"],
                        message_id(e.originator_id, e.originator_version),
                        position,
                        event_type,
                        body,
                        "pending",
                        0,
                        stamp(at),
                        stamp(at),
                    )
                )
        cur.write_rows(DELIVERIES, DELIVERY_COLUMNS, rows, "ON CONFLICT DO NOTHING")

    def _endpoints(self, cur: Cursor, events: Sequence[tuple[int, str, Any]]) -> None:
        registered = [
            (
                e.endpoint_id,
                e.originator_id.hex,
                e.url,
                json.dumps(list(e.events)),
                stamp(e.registered_at),
                position,
                None,
                None,
            )
            for position, topic, e in events
            if topic == "WebhookEndpoint.Registered"
        ]
        cur.write_rows(
            self.t("endpoints"), self.columns("endpoints"), registered, "ON CONFLICT DO NOTHING"
        )
        for position, topic, e in events:
            if topic == "WebhookEndpoint.Disabled":
                cur.execute(
                    f"UPDATE {self.t('endpoints')} SET disabled_at = ?, disabled_position = ? "
                    "WHERE uuid = ? AND disabled_position IS NULL",
                    [stamp(e.disabled_at), position, e.originator_id.hex],
                )

    @staticmethod
    def _message(topic: str, e: Any) -> tuple[str, Any, dict[str, Any], Any] | None:
        """(type, time, data, event) of what an event tells receivers, or None."""
        if topic in ("BillingPeriod.Closed", "BillingPeriod.Restated"):
            restated = topic == "BillingPeriod.Restated"
            data = {
                "revision": e.revision,
                "status": "issued",
                "currency": e.currency,
                "total": e.total,
                "lines": e.lines,
                "lineage_digest": e.lineage_digest,
                "plan_id": e.plan_id,
                "plan_version": e.plan_version,
                "issued_at": iso(e.closed_at),
            }
            if restated:
                data["reason"] = e.reason
            return ("invoice.restated" if restated else "invoice.issued"), e.closed_at, data, e
        if topic == "BillingPeriod.UsageRecorded":
            if e.treatment == "on_time":
                return None
            data = {
                "treatment": e.treatment,
                "received_at": e.received_at,
                "emitter": e.emitter,
                "record_count": len(e.records),
                "records": [
                    {
                        "event_id": r[0],
                        "submitted_customer_id": r[1],
                        "meter": r[2],
                        "quantity": str(r[3]),
                        "occurred_at": r[4],
                    }
                    for r in e.records[:MAX_LATE_RECORDS]
                ],
            }
            return "usage.late", e.received_at, data, e
        if topic == "AuditFact.Recorded" and e.action in FACT_TYPES:
            data = {
                "reason": e.reason,
                "actor": f"{e.emitter}/{e.key_id}",
                "at": iso(e.at),
                **_jsonable(e.detail),
            }
            return FACT_TYPES[e.action], e.at, data, e
        return None

    def changes(self, cur: Cursor, live: Projection) -> list[dict[str, Any]]:
        """Endpoints whose URL, types or disabling differ between the live view and this one
        (deliveries are shared by every version: a rebuild does not change them)."""
        rows = cur.all(
            f"SELECT COALESCE(o.endpoint_id, n.endpoint_id) AS endpoint_id, o.url, n.url AS "
            f"new_url FROM {live.t('endpoints')} o FULL OUTER JOIN {self.t('endpoints')} n "
            "ON o.endpoint_id = n.endpoint_id WHERE o.endpoint_id IS NULL OR "
            "n.endpoint_id IS NULL OR o.url <> n.url OR o.events <> n.events OR "
            "COALESCE(o.disabled_position, -1) <> COALESCE(n.disabled_position, -1)"
        )
        return [
            {"endpoint_id": r["endpoint_id"], "before": r["url"], "after": r["new_url"]}
            for r in rows
        ]


def _wants(endpoint: dict[str, Any], event_type: str, position: int) -> bool:
    disabled = endpoint["disabled_position"]
    return (
        int(endpoint["registered_position"]) < position
        and (disabled is None or int(disabled) > position)
        and event_type in json.loads(endpoint["events"])
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)
