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
from typing import Any

from billing_domain.ids import invoice_id
from billing_domain.invoicing import invoice_lines, issued_view
from billing_domain.pricing import Charge, parse_charges
from billing_domain.reducer import (
    add_carried,
    add_totals,
    adjustment_delta,
    compensation_delta,
    grow,
    is_billed,
    source_items,
    usage_deltas,
)
from billing_domain.verification import adjustment_hash, compensation_hash, usage_hashes
from projections.base import Projection, dec, dumps, peaks_text, stamp
from projections.batch import BILLED, LATE, BatchState
from projections.diffs import invoice_changes
from projections.invoice_writes import (
    drafts,
    settle_drafts,
    write_batch,
    write_folded,
    write_invoices,
)
from projections.store import Cursor


def _add_leaves(row: dict[str, Any], items: Iterable[int]) -> None:
    """Append billed items to the period row's lineage tree (its compact range); the tree is
    parsed once per batch and kept as a list until the row is written."""
    tree = row.get("tree")
    if tree is None:
        tree = row["tree"] = json.loads(row["peaks"])
    row["items"], _ = grow(tree, int(row["items"]), 0, items)
    row["peaks"], row["dirty"] = peaks_text(tree), True


def _stamp_peaks(row: dict[str, Any], delta: dict[str, Any]) -> None:
    """A billed delta row keeps the tree as it stood after its event, for as_of digests."""
    delta["peaks"], delta["items"] = row["peaks"], row["items"]


def invoice_row(view: dict[str, Any], position: int) -> dict[str, Any]:
    """An invoice view as its row: lines as JSON, and the position of the event that issued
    it (0 for a draft)."""
    return {**view, "lines": dumps(view["lines"]), "position": position}


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

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.kept: BatchState | None = None

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
        return invoice_lines(period, meters, charges, carried, currency)

    # Applying events ------------------------------------------------------------------------

    def apply(self, cur: Cursor, events: Sequence[tuple[int, str, Any]]) -> None:
        batch = self.kept
        if batch is None:
            batch = BatchState(self, cur)
            if self.keeping:
                self.kept = batch
        else:
            batch.next_batch(cur)
        batch.load(events)
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
        write_batch(self, batch)

    def keep(self) -> bool:
        """Periods, balances, customers and compensations stay in memory across batches and
        are written once per checkpoint (`flush`), not once per batch; so are the drafts of
        the open periods the batches touched (a version being built defers them further,
        to `settle`)."""
        self.keeping = True
        return True

    def flush(self, cur: Cursor) -> None:
        if self.kept is None:
            return
        self.kept.cur = cur
        write_folded(self, self.kept)
        if not self.deferring:  # a live version: the touched periods' drafts, once each
            write_invoices(self, cur, drafts(self, self.kept))
        self.kept = None  # read again next checkpoint, after taking the position's row

    def holding(self) -> int:
        return 0 if self.kept is None else self.kept.size()

    def forget(self) -> None:
        self.keeping, self.kept = False, None

    def settle(self, cur: Cursor, after: Any) -> Any:
        """Drafts deferred while building: every open period priced once, in chunks."""
        return settle_drafts(self, cur, after)

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
        b.add_period(row)
        b.balances.setdefault((e.customer_id, e.period), {})
        b.touched.add((e.customer_id, e.period))

    def _on_customer_opened(self, b: BatchState, position: int, e: Any) -> None:
        b.customers[e.customer_id] = {
            "customer_id": e.customer_id,
            "uuid": e.originator_id.hex,
            "currency": e.currency,
            "subscriptions": [],
        }
        b.by_uuid[e.originator_id.hex] = e.customer_id
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
        if self.deferring:  # no drafts priced while building: none to mark
            return
        for period in b.open_periods.get(customer_id, ()):
            if period >= e.effective_from:
                b.touched.add((customer_id, period))
        for row in b.customer_periods.get(customer_id, ()):
            if row["period"] >= e.effective_from:
                b.touched.add((customer_id, row["period"]))

    def _on_plan_published(self, b: BatchState, position: int, e: Any) -> None:
        b.plans.append((e.originator_id.hex, e.version, e.currency, dumps(e.charges)))

    def _on_usage(self, b: BatchState, position: int, e: Any) -> None:
        row = b.period(e.originator_id)
        customer_id, period = row["customer_id"], row["period"]
        billed = is_billed(e.treatment)
        balance = b.balance(customer_id, period)
        for meter, change in usage_deltas(e.records, e.meters, balance).items():
            b.delta(customer_id, period, meter, position, BILLED if billed else LATE, change)
            totals = b.meter(customer_id, period, meter, change)
            if billed:
                add_totals(totals, change)
        b.received[position] = e.received_at
        if billed:
            _add_leaves(row, usage_hashes(e.records, e.received_at, e.emitter, e.key_id))
            for meter in {r[2] for r in e.records}:
                _stamp_peaks(row, b.deltas[(customer_id, period, meter, position, BILLED)])
            b.touched.add((customer_id, period))
        else:
            for r in e.records:
                b.carry(customer_id, period, r[0])

    def _on_carried(self, b: BatchState, position: int, e: Any) -> None:
        row = b.period(e.originator_id)
        _add_leaves(row, source_items(e.sources))
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
        b.compensate(customer_id, period, e.event_id, e.quantity)
        b.received[position] = e.received_at
        totals = b.meter(customer_id, period, e.meter, None)
        change = compensation_delta(totals, e.quantity, net_before, e.properties)
        billed = is_billed(e.treatment) and not b.was_carried(customer_id, period, e.event_id)
        delta = b.delta(customer_id, period, e.meter, position, BILLED if billed else LATE, change)
        if billed:
            add_totals(totals, change)
            item = compensation_hash(
                e.compensation_id,
                e.event_id,
                e.submitted_customer_id,
                e.meter,
                e.quantity,
                e.reason,
                e.received_at,
                e.actor,
            )
            _add_leaves(row, [item])
            _stamp_peaks(row, delta)
            b.touched.add((customer_id, period))

    def _on_adjusted(self, b: BatchState, position: int, e: Any) -> None:
        row = b.period(e.originator_id)
        customer_id, period = row["customer_id"], row["period"]
        billed = is_billed(e.treatment)
        change = adjustment_delta(e.aggregation, e.field, e.quantity)
        delta = b.delta(customer_id, period, e.meter, position, BILLED if billed else LATE, change)
        b.received[position] = e.received_at
        if billed:
            add_totals(b.meter(customer_id, period, e.meter, change), change)
            item = adjustment_hash(
                e.adjustment_id,
                e.meter,
                e.quantity,
                e.occurred_at,
                e.reason,
                e.received_at,
                e.actor,
            )
            _add_leaves(row, [item])
            _stamp_peaks(row, delta)
            b.touched.add((customer_id, period))

    def _on_issued(self, b: BatchState, position: int, e: Any) -> None:
        row = b.period(e.originator_id)
        row["status"] = "closed"
        row["dirty"] = True
        view = issued_view(
            row["customer_id"],
            row["period"],
            vars(e),
            status="issued",
            issued_at=stamp(e.closed_at),
        )
        b.issued.append(invoice_row(view, position))

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
        entries: dict[str, dict[str, Any]] = {}
        for r in cur.all(
            f"SELECT from_period, meter, quantity, amount, received_at FROM "
            f"{self.t('carried')} WHERE customer_id = ? AND period = ?",
            [customer_id, period],
        ):
            if as_of is None or r["received_at"] <= as_of:
                add_carried(
                    entries, r["from_period"], r["meter"], dec(r["quantity"]), dec(r["amount"])
                )
        return list(entries.values())

    # Rebuilds -----------------------------------------------------------------------------------

    def changes(self, cur: Cursor, live: Projection) -> list[dict[str, Any]]:
        """Every invoice revision whose lines or total differ between the live view and this."""
        return invoice_changes(cur, live.t("invoices"), self.t("invoices"))
