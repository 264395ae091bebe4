"""What one batch of events reads and changes in the invoices projection.

A batch is applied as a set: `load` reads every row the batch's events need with one query
per table, the handlers fold the events in memory (with the domain's reducer), and the
projection writes each table once at the end. Nothing here reads the database per event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from billing_domain.numbers import ZERO
from billing_domain.usage import new_totals
from projections.base import dec
from projections.store import Cursor

BILLED, LATE = "billed", "late"  # a delta row's kind: priced by its period, or carried out
PERIOD_EVENTS = "BillingPeriod."


def totals_from_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "aggregation": row["aggregation"],
        "field": row["field"],
        "sum": dec(row["sum"]),
        "count": int(row["count"]),
        "values": json.loads(row["vals"]),
        "adjustment": dec(row["adjustment"]),
    }


class BatchState:
    """State one batch of events reads and changes, loaded up front, written at the end."""

    def __init__(self, projection: Any, cur: Cursor) -> None:
        self.p = projection
        self.cur = cur
        self.periods: dict[str, dict[str, Any]] = {}  # period uuid hex -> row
        self.customer_periods: dict[str, list[dict[str, Any]]] = {}  # the same rows, by customer
        self.balances: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.changed_balances: set[tuple[str, str]] = set()
        self.deltas: dict[tuple[str, str, str, int, str], dict[str, Any]] = {}
        self.received: dict[int, str] = {}
        self.carried: list[tuple[Any, ...]] = []
        self.carried_ids: set[tuple[str, str, str]] = set()
        self.new_carried_ids: list[tuple[str, str, str]] = []
        self.compensated: dict[tuple[str, str, str], Decimal] = {}
        self.changed_compensated: set[tuple[str, str, str]] = set()
        self.touched: set[tuple[str, str]] = set()
        self.customers: dict[str, dict[str, Any] | None] = {}
        self.by_uuid: dict[str, str] = {}
        self.changed_customers: set[str] = set()
        self.open_periods: dict[str, list[str]] = {}
        self.plans: list[tuple[Any, ...]] = []
        self.issued: list[dict[str, Any]] = []

    # Loading, once per batch ------------------------------------------------------------

    def load(self, events: Sequence[tuple[int, str, Any]]) -> None:
        """Read every row these events need and this state does not hold yet: one query per
        table (a state kept across batches, `keep`, reads only what earlier batches did not)."""
        t, cur = self.p.t, self.cur
        uuids = {
            e.originator_id.hex
            for _, topic, e in events
            if topic.startswith(PERIOD_EVENTS) and topic != "BillingPeriod.Opened"
        }
        missing = [[u] for u in uuids if u not in self.periods]
        for row in cur.rows_in(t("periods"), ["period_uuid"], missing):
            self.add_period(row)
        keys: set[tuple[str, str]] = {
            (row["customer_id"], row["period"])
            for row in (self.periods.get(u) for u in uuids)
            if row is not None
        }
        keys |= {(e.customer_id, e.period) for _, t_, e in events if t_ == "BillingPeriod.Opened"}
        unread = [key for key in keys if key not in self.balances]
        for key in unread:
            self.balances[key] = {}
        for row in cur.rows_in(t("balances"), ["customer_id", "period"], unread):
            self.balances[(row["customer_id"], row["period"])][row["meter"]] = totals_from_row(row)
        corrected: set[tuple[str, str, str]] = set()
        for _, topic, e in events:
            period = self.periods.get(e.originator_id.hex)
            if topic == "BillingPeriod.UsageCompensated" and period is not None:
                triple = (period["customer_id"], period["period"], e.event_id)
                if triple not in self.compensated:
                    corrected.add(triple)
        for triple in corrected:
            self.compensated[triple] = ZERO
        columns = ["customer_id", "period", "event_id"]
        for row in cur.rows_in(t("compensated"), columns, corrected):
            self.compensated[(row["customer_id"], row["period"], row["event_id"])] = dec(
                row["quantity"]
            )
        for row in cur.rows_in(t("carried_ids"), columns, corrected):
            self.carried_ids.add((row["customer_id"], row["period"], row["event_id"]))
        # Customers' rows serve drafts (currency, plan) and subscriptions; a version being
        # built defers its drafts, so it reads only the customers its events subscribe.
        self._load_customers(events, set() if self.p.deferring else {c for c, _ in keys})

    def load_customers(self, ids: set[str]) -> None:
        """The customers' rows alone (no events): what pricing drafts of their periods needs."""
        self._load_customers((), ids)

    def _load_customers(self, events: Sequence[tuple[int, str, Any]], ids: set[str]) -> None:
        t, cur = self.p.t, self.cur
        uuids = {e.originator_id.hex for _, topic, e in events if topic == "Customer.Subscribed"}
        unread = [[c] for c in ids if c not in self.customers]
        rows = cur.rows_in(t("customers"), ["customer_id"], unread)
        rows += cur.rows_in(t("customers"), ["uuid"], [[u] for u in uuids if u not in self.by_uuid])
        for row in rows:
            row["subscriptions"] = json.loads(row["subscriptions"])
            self.customers[row["customer_id"]] = row
            self.by_uuid[row["uuid"]] = row["customer_id"]
        for customer_id in ids:
            self.customers.setdefault(customer_id, None)
        if self.p.deferring:  # no drafts priced, so no open periods to find
            return
        subscribed = [[self.by_uuid[u]] for u in uuids if u in self.by_uuid]
        for row in cur.rows_in(
            t("periods"), ["customer_id"], subscribed, "customer_id, period", "status = 'open'"
        ):
            self.open_periods.setdefault(row["customer_id"], []).append(row["period"])

    # Keeping state across batches ---------------------------------------------------------

    def size(self) -> int:
        """Rows held: what bounds the memory of a state kept across batches."""
        return (
            len(self.periods)
            + len(self.balances)
            + len(self.compensated)
            + len(self.carried_ids)
            + len(self.customers)
        )

    def next_batch(self, cur: Cursor) -> None:
        """Drop what one batch wrote (its appended rows), keep the rows it folded into and
        the periods whose drafts it touched."""
        self.cur = cur
        self.deltas.clear()
        self.received.clear()
        self.carried.clear()
        self.new_carried_ids.clear()
        self.open_periods.clear()
        self.plans.clear()
        self.issued.clear()

    # What the handlers ask for ---------------------------------------------------------------

    def add_period(self, row: dict[str, Any]) -> None:
        self.periods[row["period_uuid"]] = row
        self.customer_periods.setdefault(row["customer_id"], []).append(row)

    def period(self, originator_id: Any) -> dict[str, Any]:
        row = self.periods.get(originator_id.hex)
        if row is None:
            raise LookupError(
                f"period aggregate {originator_id.hex} has no Opened event in the log"
            )
        return row

    def balance(self, customer_id: str, period: str) -> dict[str, dict[str, Any]]:
        return self.balances.setdefault((customer_id, period), {})

    def customer(self, customer_id: str) -> dict[str, Any] | None:
        return self.customers.get(customer_id)

    def customer_by_uuid(self, uuid_hex: str) -> dict[str, Any]:
        customer_id = self.by_uuid.get(uuid_hex)
        customer = None if customer_id is None else self.customers.get(customer_id)
        if customer is None:
            raise LookupError(f"customer aggregate {uuid_hex} has no Opened event in the log")
        return customer

    def delta(
        self,
        customer_id: str,
        period: str,
        meter: str,
        position: int,
        kind: str,
        change: dict[str, Any],
    ) -> dict[str, Any]:
        """One event's change to one meter, kept signed for `as_of` reads."""
        delta = self.deltas[(customer_id, period, meter, position, kind)] = {**change, "items": 0}
        return delta

    def meter(
        self, customer_id: str, period: str, meter: str, like: dict[str, Any] | None
    ) -> dict[str, Any]:
        """A period's running totals of a meter, created empty in the shape of `like`."""
        meters = self.balance(customer_id, period)
        self.changed_balances.add((customer_id, period))
        if meter not in meters:
            shape = ("sum", None) if like is None else (like["aggregation"], like["field"])
            meters[meter] = new_totals(*shape)
        return meters[meter]

    def compensated_so_far(self, customer_id: str, period: str, event_id: str) -> Decimal:
        return self.compensated.get((customer_id, period, event_id), ZERO)

    def compensate(self, customer_id: str, period: str, event_id: str, quantity: Decimal) -> None:
        key = (customer_id, period, event_id)
        self.compensated[key] = self.compensated.get(key, ZERO) + quantity
        self.changed_compensated.add(key)

    def carry(self, customer_id: str, period: str, event_id: str) -> None:
        key = (customer_id, period, event_id)
        if key not in self.carried_ids:
            self.carried_ids.add(key)
            self.new_carried_ids.append(key)

    def was_carried(self, customer_id: str, period: str, event_id: str) -> bool:
        return (customer_id, period, event_id) in self.carried_ids
