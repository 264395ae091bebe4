"""Lineage: an invoice line's source records, read from the log events the view points at."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from adapters.stored_json import decode_state
from billing_domain.application import BillingApplication
from billing_domain.ids import period_uuid
from billing_domain.usage import decimal_text, iso
from billing_domain.verification import PERIOD_TOPIC, PeriodLedger, lineage_proof
from projections.batch import BILLED, LATE
from projections.reads import InvoiceReads, decode_cursor, encode_cursor
from projections.runner import topic_name
from projections.store import Cursor


def _who(actor: str) -> tuple[str, str]:
    emitter, _, key_id = actor.partition("/")
    return emitter, key_id


def source_items(topic: str, e: Any, meter: str) -> list[dict[str, Any]]:
    """The records an event contributes to one meter, with signed quantities."""
    if topic == "BillingPeriod.UsageRecorded":
        return [
            {
                "kind": "usage",
                "id": r[0],
                "customer_id": r[1],
                "quantity": r[3],
                "occurred_at": r[4],
                "received_at": e.received_at,
                "emitter": e.emitter,
                "key_id": e.key_id,
            }
            for r in e.records
            if r[2] == meter
        ]
    if topic == "BillingPeriod.UsageCompensated" and e.meter == meter:
        emitter, key_id = _who(e.actor)
        return [
            {
                "kind": "compensation",
                "id": e.compensation_id,
                "event_id": e.event_id,
                "customer_id": e.submitted_customer_id,
                "quantity": decimal_text(-e.quantity),
                "occurred_at": e.received_at,
                "received_at": e.received_at,
                "emitter": emitter,
                "key_id": key_id,
                "reason": e.reason,
            }
        ]
    if topic == "BillingPeriod.UsageAdjusted" and e.meter == meter:
        emitter, key_id = _who(e.actor)
        return [
            {
                "kind": "adjustment",
                "id": e.adjustment_id,
                "quantity": decimal_text(e.quantity),
                "occurred_at": iso(e.occurred_at),
                "received_at": e.received_at,
                "emitter": emitter,
                "key_id": key_id,
                "reason": e.reason,
            }
        ]
    return []


class LineageReads:
    def __init__(self, app: BillingApplication, reads: InvoiceReads) -> None:
        self.app = app
        self.reads = reads

    def event(self, position: int) -> tuple[str, Any]:
        notification = self.app.recorder.select_notifications(start=position, limit=1)[0]
        return topic_name(notification.topic), self.app.mapper.to_domain_event(notification)

    def lineage(
        self, cur: Cursor, invoice_id: str, line: int, cursor: str | None, limit: int
    ) -> dict[str, Any] | None:
        rows = cur.all(
            f"SELECT * FROM {self.reads.t('invoices')} WHERE invoice_id = ? ORDER BY revision DESC",
            [invoice_id],
        )
        if not rows:
            return None
        row = rows[0]
        lines = json.loads(row["lines"])
        if not 0 <= line < len(lines):
            return None
        wanted = lines[line]
        upto = int(row["position"]) or None
        after = decode_cursor(cursor, int, int) or [0, 0]
        if wanted["kind"] == "usage":
            items = self._usage(
                cur,
                row["customer_id"],
                row["period"],
                wanted["meter"],
                upto,
                int(after[0]),
                int(after[1]),
                limit + 1,
            )
        else:
            every = self._carried(
                cur,
                row["customer_id"],
                row["period"],
                wanted["usage_period"],
                wanted["meter"],
                upto,
            )
            start = int(after[1])
            items = [
                (0, start + i, item) for i, item in enumerate(every[start : start + limit + 1])
            ]
        next_cursor = None
        if len(items) > limit:
            position, index, _ = items[limit]
            next_cursor = encode_cursor(position, index)
        return {
            "items": [item for _, _, item in items[:limit]],
            "next_cursor": next_cursor,
            "invoice_id": invoice_id,
            "line": line,
            "revision": int(row["revision"]),
        }

    def _usage(
        self,
        cur: Cursor,
        customer_id: str,
        period: str,
        meter: str,
        upto: int | None,
        from_position: int,
        from_index: int,
        wanted: int,
    ) -> list[tuple[int, int, dict[str, Any]]]:
        found: list[tuple[int, int, dict[str, Any]]] = []
        for position in self._positions(
            cur, customer_id, period, meter, BILLED, from_position, upto
        ):
            topic, event = self.event(position)
            for index, item in enumerate(source_items(topic, event, meter)):
                if position == from_position and index < from_index:
                    continue
                found.append((position, index, item))
                if len(found) >= wanted:
                    return found
        return found

    def _positions(
        self,
        cur: Cursor,
        customer_id: str,
        period: str,
        meter: str,
        kind: str,
        from_position: int,
        upto: int | None,
    ) -> Iterator[int]:
        bound = " AND position <= ?" if upto else ""
        params: list[Any] = [customer_id, period, meter, kind, from_position]
        if upto:
            params.append(upto)
        rows = cur.all(
            f"SELECT position FROM {self.reads.t('deltas')} WHERE customer_id = ? "
            f"AND period = ? AND meter = ? AND kind = ? AND position >= ?{bound} "
            "ORDER BY position",
            params,
        )
        for r in rows:
            yield int(r["position"])

    def _carried(
        self,
        cur: Cursor,
        customer_id: str,
        period: str,
        from_period: str,
        meter: str,
        upto: int | None,
    ) -> list[dict[str, Any]]:
        """Late records carried into this period: the ids the carry event names, found in the
        late events of the earlier period saved in the same commit, just before it."""
        items: list[dict[str, Any]] = []
        carried = cur.all(
            f"SELECT position FROM {self.reads.t('carried')} WHERE "
            "customer_id = ? AND period = ? AND from_period = ? AND meter = ? "
            "ORDER BY position",
            [customer_id, period, from_period, meter],
        )
        for row in carried:
            position = int(row["position"])
            if upto and position > upto:
                continue
            _, carry = self.event(position)
            wanted = {(kind, ident) for kind, ident, _ in carry.sources}
            late = cur.all(
                f"SELECT position FROM {self.reads.t('deltas')} WHERE "
                "customer_id = ? AND period = ? AND meter = ? AND kind = ? AND "
                "position < ? ORDER BY position DESC",
                [customer_id, from_period, meter, LATE, position],
            )
            for source in late:
                topic, event = self.event(int(source["position"]))
                for item in source_items(topic, event, meter):
                    if (item["kind"], item["id"]) in wanted:
                        wanted.discard((item["kind"], item["id"]))
                        items.append(item)
                if not wanted:
                    break
        return items


def inclusion_proof(
    app: BillingApplication,
    customer_id: str,
    period: str,
    invoice: str,
    event_id: str,
    revision: int | None = None,
) -> dict[str, Any]:
    """The audit path of one item of a period's lineage tree, from the period's stored events
    (read from the log, not the views)."""
    originator_id = period_uuid(customer_id, period)
    ledger = PeriodLedger(originator_id, customer_id, period, keep_records=False, leaves=[])
    for stored in app.recorder.select_events(originator_id):
        if stored.topic.startswith(PERIOD_TOPIC):
            name = stored.topic[len(PERIOD_TOPIC) :]
            version = stored.originator_version
            ledger.apply(name, decode_state(stored.state), version, version)
    return lineage_proof(ledger, invoice, event_id, revision)
