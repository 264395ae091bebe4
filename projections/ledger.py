"""The invoices projection: usage balances, drafts, issued revisions and lineage pointers.

Per (customer, period, meter) it keeps the running billed totals (the same plain dicts the
period aggregate keeps, so the domain's pricing gives the same amounts) and one delta row
per event that changed them. Delta rows carry `received_at`, so `as_of` reads re-add them;
they also point lineage reads at the events in the log that hold the source records, so a
usage event of thousands of records costs one row, not thousands.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from billing_domain.ids import invoice_id
from billing_domain.invoicing import carried_lines, total_of, usage_lines
from billing_domain.merkle import append, root
from billing_domain.pricing import Charge, parse_charges
from billing_domain.usage import add_record, compensate_record, tracked_value
from billing_domain.verification import adjustment_hash, compensation_hash, usage_hashes
from projections.base import Projection, dec, dumps, stamp
from projections.batch import (
    BILLED,
    CARRIED,
    LATE,
    ZERO,
    BatchState,
    add_totals,
    plan_for,
)
from projections.store import Cursor


def _add_leaves(row: dict[str, Any], items: Iterable[int]) -> None:
    """Append billed items to the period row's lineage tree (its compact range, as JSON)."""
    peaks, count = json.loads(row["peaks"]), int(row["items"])
    for item in items:
        append(peaks, count, item)
        count += 1
    row["peaks"], row["items"], row["dirty"] = dumps(peaks), count, True


def _stamp_peaks(row: dict[str, Any], delta: dict[str, Any]) -> None:
    """A billed delta row keeps the tree as it stood after its event, for as_of digests."""
    delta["peaks"], delta["items"] = row["peaks"], row["items"]


class InvoicesProjection(Projection):
    name = "invoices"
    topics = frozenset(
        {
            "BillingPeriod.Opened",
            "BillingPeriod.UsageRecorded",
            "BillingPeriod.LateUsageCarriedForward",
            "BillingPeriod.UsageCompensated",
            "BillingPeriod.UsageAdjusted",
            "BillingPeriod.Closed",
            "BillingPeriod.Restated",
            "Customer.Opened",
            "Customer.Subscribed",
            "Plan.VersionPublished",
        }
    )

    def tables(self) -> dict[str, str]:
        return {
            "customers": "customer_id TEXT PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, "
            "currency TEXT NOT NULL, subscriptions TEXT NOT NULL",
            "plans": "plan_id TEXT NOT NULL, version INTEGER NOT NULL, currency TEXT NOT NULL, "
            "charges TEXT NOT NULL, PRIMARY KEY (plan_id, version)",
            "periods": "period_uuid TEXT PRIMARY KEY, customer_id TEXT NOT NULL, "
            "period TEXT NOT NULL, invoice_id TEXT NOT NULL, status TEXT NOT NULL, "
            "peaks TEXT NOT NULL, items BIGINT NOT NULL",
            "balances": "customer_id TEXT NOT NULL, period TEXT NOT NULL, meter TEXT NOT NULL, "
            "aggregation TEXT NOT NULL, field TEXT, sum TEXT NOT NULL, "
            "count BIGINT NOT NULL, vals TEXT NOT NULL, adjustment TEXT NOT NULL, "
            "PRIMARY KEY (customer_id, period, meter)",
            "deltas": "customer_id TEXT NOT NULL, period TEXT NOT NULL, meter TEXT NOT NULL, "
            "position BIGINT NOT NULL, kind TEXT NOT NULL, received_at TEXT NOT NULL, "
            "aggregation TEXT NOT NULL, field TEXT, sum TEXT NOT NULL, "
            "count BIGINT NOT NULL, vals TEXT NOT NULL, adjustment TEXT NOT NULL, "
            "peaks TEXT NOT NULL, items BIGINT NOT NULL, "
            "PRIMARY KEY (customer_id, period, meter, kind, position)",
            "carried": "customer_id TEXT NOT NULL, period TEXT NOT NULL, "
            "from_period TEXT NOT NULL, meter TEXT NOT NULL, "
            "position BIGINT NOT NULL, received_at TEXT NOT NULL, "
            "quantity TEXT NOT NULL, amount TEXT NOT NULL, peaks TEXT NOT NULL, "
            "items BIGINT NOT NULL, "
            "PRIMARY KEY (customer_id, period, from_period, meter, position)",
            "compensated": "customer_id TEXT NOT NULL, period TEXT NOT NULL, "
            "event_id TEXT NOT NULL, quantity TEXT NOT NULL, "
            "PRIMARY KEY (customer_id, period, event_id)",
            "carried_ids": "customer_id TEXT NOT NULL, period TEXT NOT NULL, "
            "event_id TEXT NOT NULL, PRIMARY KEY (customer_id, period, event_id)",
            "invoices": "invoice_id TEXT NOT NULL, revision INTEGER NOT NULL, "
            "customer_id TEXT NOT NULL, period TEXT NOT NULL, status TEXT NOT NULL, "
            "currency TEXT NOT NULL, lines TEXT NOT NULL, total TEXT NOT NULL, "
            "lineage_digest TEXT NOT NULL, plan_id TEXT, plan_version INTEGER, "
            "issued_at TEXT, position BIGINT NOT NULL, "
            "PRIMARY KEY (invoice_id, revision)",
        }

    def indexes(self) -> list[str]:
        return [
            f"CREATE INDEX IF NOT EXISTS {self.prefix}_periods_cp "
            f"ON {self.t('periods')} (customer_id, period)",
            f"CREATE INDEX IF NOT EXISTS {self.prefix}_invoices_cp "
            f"ON {self.t('invoices')} (customer_id, period, revision)",
        ]

    # Rules a later logic version may change ------------------------------------------------

    def draft_lines(
        self,
        period: str,
        meters: dict[str, dict[str, Any]],
        charges: Sequence[Charge],
        carried: list[dict[str, Any]],
        currency: str,
    ) -> list[dict[str, Any]]:
        return usage_lines(period, meters, charges, currency) + carried_lines(carried, currency)

    # Applying events ------------------------------------------------------------------------

    def apply(self, cur: Cursor, events: Sequence[tuple[int, str, Any]]) -> None:
        batch = BatchState(self, cur)
        handlers = {
            "BillingPeriod.Opened": self._on_period_opened,
            "BillingPeriod.UsageRecorded": self._on_usage,
            "BillingPeriod.LateUsageCarriedForward": self._on_carried,
            "BillingPeriod.UsageCompensated": self._on_compensated,
            "BillingPeriod.UsageAdjusted": self._on_adjusted,
            "BillingPeriod.Closed": self._on_issued,
            "BillingPeriod.Restated": self._on_issued,
            "Customer.Opened": self._on_customer_opened,
            "Customer.Subscribed": self._on_subscribed,
            "Plan.VersionPublished": self._on_plan_published,
        }
        for position, topic, event in events:
            handlers[topic](batch, position, event)
        self._write(batch)

    def _on_period_opened(self, b: BatchState, position: int, e: Any) -> None:
        row = {
            "period_uuid": e.originator_id.hex,
            "customer_id": e.customer_id,
            "period": e.period,
            "invoice_id": invoice_id(e.customer_id, e.period),
            "status": "open",
            "peaks": "[]",
            "items": 0,
            "dirty": True,
        }
        b.periods[row["period_uuid"]] = row
        b.balances.setdefault((e.customer_id, e.period), {})
        b.touched.add((e.customer_id, e.period))

    def _on_customer_opened(self, b: BatchState, position: int, e: Any) -> None:
        b.customers[e.customer_id] = {
            "customer_id": e.customer_id,
            "uuid": e.originator_id.hex,
            "currency": e.currency,
            "subscriptions": [],
        }
        b.changed_customers.add(e.customer_id)

    def _on_subscribed(self, b: BatchState, position: int, e: Any) -> None:
        customer = b.customer_by_uuid(e.originator_id.hex)
        customer_id = customer["customer_id"]
        customer["subscriptions"].append(
            {
                "plan_id": e.plan_id,
                "plan_version": e.plan_version,
                "effective_from": e.effective_from,
            }
        )
        b.changed_customers.add(customer_id)
        for row in b.cur.all(
            f"SELECT period FROM {self.t('periods')} WHERE customer_id = ? "
            "AND period >= ? AND status = 'open'",
            [customer_id, e.effective_from],
        ):
            b.touched.add((customer_id, row["period"]))
        for row in b.periods.values():
            if row["customer_id"] == customer_id and row["period"] >= e.effective_from:
                b.touched.add((customer_id, row["period"]))

    def _on_plan_published(self, b: BatchState, position: int, e: Any) -> None:
        b.cur.execute(
            f"INSERT INTO {self.t('plans')} VALUES (?, ?, ?, ?)",
            [e.originator_id.hex, e.version, e.currency, dumps(e.charges)],
        )

    def _on_usage(self, b: BatchState, position: int, e: Any) -> None:
        row = b.period(e.originator_id)
        customer_id, period = row["customer_id"], row["period"]
        billed = e.treatment != CARRIED
        kind = BILLED if billed else LATE
        by_meter: dict[str, dict[str, Any]] = {}
        hashes = usage_hashes(e.records, e.received_at, e.emitter, e.key_id) if billed else None
        for record in e.records:
            meter = record[2]
            delta = by_meter.get(meter)
            if delta is None:
                aggregation, field = e.meters[meter]
                delta = by_meter[meter] = b.delta(
                    customer_id, period, meter, position, kind, aggregation, field
                )
            quantity = Decimal(record[3])
            value = (
                tracked_value(delta, quantity, record[5])
                if delta["aggregation"] in ("max", "unique_count")
                else None
            )
            add_record(delta, quantity, value)
            if not billed:
                b.carried_ids.append((customer_id, period, record[0]))
        b.received[position] = e.received_at
        if billed:
            _add_leaves(row, hashes)  # type: ignore[arg-type]
        for meter, delta in by_meter.items():
            totals = b.meter(customer_id, period, meter, delta["aggregation"], delta["field"])
            if billed:
                add_totals(totals, delta)
                _stamp_peaks(row, delta)
        if billed:
            b.touched.add((customer_id, period))

    def _on_carried(self, b: BatchState, position: int, e: Any) -> None:
        row = b.period(e.originator_id)
        _add_leaves(row, (int(source[2], 16) for source in e.sources))
        b.carried.append(
            (
                row["customer_id"],
                row["period"],
                e.from_period,
                e.meter,
                position,
                stamp(e.received_at),
                str(e.quantity),
                str(e.amount),
                row["peaks"],
                row["items"],
            )
        )
        b.touched.add((row["customer_id"], row["period"]))

    def _on_compensated(self, b: BatchState, position: int, e: Any) -> None:
        row = b.period(e.originator_id)
        customer_id, period = row["customer_id"], row["period"]
        net_before = e.original_quantity - b.compensated_so_far(customer_id, period, e.event_id)
        b.compensated[(customer_id, period, e.event_id)] += e.quantity
        b.received[position] = e.received_at
        totals = b.meter(customer_id, period, e.meter, "sum", None)
        billed = e.treatment != CARRIED and not b.was_carried(customer_id, period, e.event_id)
        delta = b.delta(
            customer_id,
            period,
            e.meter,
            position,
            BILLED if billed else LATE,
            totals["aggregation"],
            totals["field"],
        )
        before = tracked_value(totals, net_before, e.properties)
        after = tracked_value(totals, net_before - e.quantity, e.properties)
        delta["sum"] -= e.quantity
        if before is not None:
            delta["values"][before] = delta["values"].get(before, 0) - 1
        if net_before - e.quantity <= 0:
            delta["count"] -= 1
        elif after is not None:
            delta["values"][after] = delta["values"].get(after, 0) + 1
        if billed:
            compensate_record(
                totals, e.quantity, net_before=net_before, value_before=before, value_after=after
            )
            _add_leaves(
                row,
                [
                    compensation_hash(
                        e.compensation_id,
                        e.event_id,
                        e.submitted_customer_id,
                        e.meter,
                        e.quantity,
                        e.reason,
                        e.received_at,
                        e.actor,
                    )
                ],
            )
            _stamp_peaks(row, delta)
            b.touched.add((customer_id, period))

    def _on_adjusted(self, b: BatchState, position: int, e: Any) -> None:
        row = b.period(e.originator_id)
        customer_id, period = row["customer_id"], row["period"]
        billed = e.treatment != CARRIED
        delta = b.delta(
            customer_id,
            period,
            e.meter,
            position,
            BILLED if billed else LATE,
            e.aggregation,
            e.field,
        )
        delta["adjustment"] += e.quantity
        b.received[position] = e.received_at
        if billed:
            b.meter(customer_id, period, e.meter, e.aggregation, e.field)["adjustment"] += (
                e.quantity
            )
            _add_leaves(
                row,
                [
                    adjustment_hash(
                        e.adjustment_id,
                        e.meter,
                        e.quantity,
                        e.occurred_at,
                        e.reason,
                        e.received_at,
                        e.actor,
                    )
                ],
            )
            _stamp_peaks(row, delta)
            b.touched.add((customer_id, period))

    def _on_issued(self, b: BatchState, position: int, e: Any) -> None:
        row = b.period(e.originator_id)
        row["status"] = "closed"
        row["dirty"] = True
        b.cur.execute(
            f"UPDATE {self.t('invoices')} SET status = 'superseded' "
            "WHERE invoice_id = ? AND revision < ?",
            [row["invoice_id"], e.revision],
        )
        self._upsert_invoice(
            b.cur,
            {
                "invoice_id": row["invoice_id"],
                "revision": e.revision,
                "customer_id": row["customer_id"],
                "period": row["period"],
                "status": "issued",
                "currency": e.currency,
                "lines": dumps(e.lines),
                "total": str(e.total),
                "lineage_digest": e.lineage_digest,
                "plan_id": e.plan_id,
                "plan_version": e.plan_version,
                "issued_at": stamp(e.closed_at),
                "position": position,
            },
        )

    # Writing ----------------------------------------------------------------------------------

    def _upsert_invoice(self, cur: Cursor, row: dict[str, Any]) -> None:
        columns = list(row)
        cur.execute(
            f"INSERT INTO {self.t('invoices')} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT (invoice_id, revision) "
            f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in columns[2:])}",
            [row[c] for c in columns],
        )

    def _write(self, b: BatchState) -> None:
        cur = b.cur
        b.period_rows = {(r["customer_id"], r["period"]): r for r in b.periods.values()}
        for customer_id in b.changed_customers:
            customer = b.customers[customer_id]
            assert customer is not None
            cur.execute(
                f"INSERT INTO {self.t('customers')} VALUES (?, ?, ?, ?) ON CONFLICT "
                "(customer_id) DO UPDATE SET subscriptions = excluded.subscriptions",
                [
                    customer_id,
                    customer["uuid"],
                    customer["currency"],
                    dumps(customer["subscriptions"]),
                ],
            )
        cur.executemany(
            f"INSERT INTO {self.t('periods')} VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
            "(period_uuid) DO UPDATE SET status = excluded.status, peaks = excluded.peaks, "
            "items = excluded.items",
            [
                (
                    r["period_uuid"],
                    r["customer_id"],
                    r["period"],
                    r["invoice_id"],
                    r["status"],
                    r["peaks"],
                    r["items"],
                )
                for r in b.periods.values()
                if r.get("dirty")
            ],
        )
        cur.executemany(
            f"INSERT INTO {self.t('balances')} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
            "(customer_id, period, meter) DO UPDATE SET sum = excluded.sum, "
            "count = excluded.count, vals = excluded.vals, adjustment = excluded.adjustment",
            [
                (
                    c,
                    p,
                    m,
                    t["aggregation"],
                    t["field"],
                    str(t["sum"]),
                    t["count"],
                    dumps(t["values"]),
                    str(t["adjustment"]),
                )
                for (c, p), meters in b.balances.items()
                for m, t in meters.items()
            ],
        )
        cur.executemany(
            f"INSERT INTO {self.t('deltas')} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    c,
                    p,
                    m,
                    pos,
                    kind,
                    stamp(b.received[pos]),
                    t["aggregation"],
                    t["field"],
                    str(t["sum"]),
                    t["count"],
                    dumps(t["values"]),
                    str(t["adjustment"]),
                    t.get("peaks", "[]"),
                    t["items"],
                )
                for (c, p, m, pos, kind), t in b.deltas.items()
            ],
        )
        cur.executemany(
            f"INSERT INTO {self.t('carried')} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", b.carried
        )
        cur.executemany(
            f"INSERT INTO {self.t('carried_ids')} VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            b.carried_ids,
        )
        cur.executemany(
            f"INSERT INTO {self.t('compensated')} VALUES (?, ?, ?, ?) ON CONFLICT "
            "(customer_id, period, event_id) DO UPDATE SET quantity = excluded.quantity",
            [(*key, str(q)) for key, q in b.compensated.items()],
        )
        for customer_id, period in sorted(b.touched):
            self._write_draft(b, customer_id, period)

    def _write_draft(self, b: BatchState, customer_id: str, period: str) -> None:
        row = b.period_rows.get((customer_id, period))
        if row is None:
            row = b.cur.one(
                f"SELECT * FROM {self.t('periods')} WHERE customer_id = ? AND period = ?",
                [customer_id, period],
            )
        if row is None or row["status"] != "open":
            return
        customer = b.customer(customer_id)
        if customer is None:
            return
        subscribed = plan_for(customer["subscriptions"], period)
        charges = self.charges(b.cur, subscribed)
        carried = self.carried_entries(b.cur, customer_id, period)
        lines = self.draft_lines(
            period, b.balance(customer_id, period), charges, carried, customer["currency"]
        )
        self._upsert_invoice(
            b.cur,
            {
                "invoice_id": row["invoice_id"],
                "revision": 1,
                "customer_id": customer_id,
                "period": period,
                "status": "draft",
                "currency": customer["currency"],
                "lines": dumps(lines),
                "total": total_of(lines),
                "lineage_digest": root(json.loads(row["peaks"])),
                "plan_id": subscribed[0] if subscribed else None,
                "plan_version": subscribed[1] if subscribed else None,
                "issued_at": None,
                "position": 0,
            },
        )

    # Shared with the reads ----------------------------------------------------------------------

    def charges(self, cur: Cursor, plan: tuple[str, int] | None) -> tuple[Charge, ...]:
        if plan is None:
            return ()
        from billing_domain.ids import plan_uuid

        row = cur.one(
            f"SELECT charges FROM {self.t('plans')} WHERE plan_id = ? AND version = ?",
            [plan_uuid(plan[0]).hex, plan[1]],
        )
        return parse_charges(json.loads(row["charges"])) if row else ()

    def carried_entries(
        self, cur: Cursor, customer_id: str, period: str, as_of: str | None = None
    ) -> list[dict[str, Any]]:
        entries: dict[tuple[str, str], dict[str, Any]] = {}
        for r in cur.all(
            f"SELECT from_period, meter, quantity, amount, received_at FROM "
            f"{self.t('carried')} WHERE customer_id = ? AND period = ?",
            [customer_id, period],
        ):
            if as_of is not None and r["received_at"] > as_of:
                continue
            entry = entries.setdefault(
                (r["from_period"], r["meter"]),
                {
                    "from_period": r["from_period"],
                    "meter": r["meter"],
                    "quantity": ZERO,
                    "amount": ZERO,
                },
            )
            entry["quantity"] += dec(r["quantity"])
            entry["amount"] += dec(r["amount"])
        return list(entries.values())

    # Rebuilds -----------------------------------------------------------------------------------

    def changes(self, cur: Cursor, live: Projection) -> list[dict[str, Any]]:
        """Every invoice revision whose lines or total differ between the live view and this."""
        old, new = live.t("invoices"), self.t("invoices")

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
