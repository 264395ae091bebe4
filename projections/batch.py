"""What one batch of events reads and changes in the invoices projection, and the
arithmetic on the per-meter totals its rows hold."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from billing_domain.usage import DIGEST_MODULUS, new_totals
from projections.base import dec
from projections.store import Cursor

CARRIED = "carried_forward"
BILLED, LATE = "billed", "late"
ZERO = Decimal(0)


def totals_from_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "aggregation": row["aggregation"],
        "field": row["field"],
        "sum": dec(row["sum"]),
        "count": int(row["count"]),
        "values": json.loads(row["vals"]),
        "adjustment": dec(row["adjustment"]),
    }


def add_totals(into: dict[str, Any], delta: dict[str, Any]) -> None:
    into["sum"] += delta["sum"]
    into["count"] += delta["count"]
    into["adjustment"] += delta["adjustment"]
    values = into["values"]
    for value, n in delta["values"].items():
        left = values.get(value, 0) + n
        if left > 0:
            values[value] = left
        else:
            values.pop(value, None)


def plan_for(subscriptions: list[dict[str, Any]], period: str) -> tuple[str, int] | None:
    """The customer aggregate's rule: the latest subscription starting by the period."""
    chosen = None
    for subscription in subscriptions:
        if subscription["effective_from"] <= period:
            chosen = subscription
    return None if chosen is None else (chosen["plan_id"], int(chosen["plan_version"]))


class BatchState:
    """State one batch of events reads and changes, loaded on demand, written at the end."""

    def __init__(self, projection: Any, cur: Cursor) -> None:
        self.p = projection
        self.cur = cur
        self.periods: dict[str, dict[str, Any]] = {}  # period uuid hex -> row
        self.period_rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.balances: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.deltas: dict[tuple[str, str, str, int, str], dict[str, Any]] = {}
        self.received: dict[int, str] = {}
        self.carried: list[tuple[Any, ...]] = []
        self.carried_ids: list[tuple[str, str, str]] = []
        self.compensated: dict[tuple[str, str, str], Decimal] = {}
        self.touched: set[tuple[str, str]] = set()
        self.customers: dict[str, dict[str, Any] | None] = {}
        self.changed_customers: set[str] = set()

    # Loading ------------------------------------------------------------------------------

    def period(self, originator_id: Any) -> dict[str, Any]:
        key = originator_id.hex
        if key not in self.periods:
            row = self.cur.one(f"SELECT * FROM {self.p.t('periods')} WHERE period_uuid = ?", [key])
            if row is None:
                raise LookupError(f"period aggregate {key} has no Opened event in the log")
            self.periods[key] = row
        return self.periods[key]

    def balance(self, customer_id: str, period: str) -> dict[str, dict[str, Any]]:
        key = (customer_id, period)
        if key not in self.balances:
            rows = self.cur.all(
                f"SELECT * FROM {self.p.t('balances')} WHERE customer_id = ? AND period = ?", key
            )
            self.balances[key] = {r["meter"]: totals_from_row(r) for r in rows}
        return self.balances[key]

    def customer(self, customer_id: str) -> dict[str, Any] | None:
        if customer_id not in self.customers:
            row = self.cur.one(
                f"SELECT * FROM {self.p.t('customers')} WHERE customer_id = ?", [customer_id]
            )
            if row is not None:
                row["subscriptions"] = json.loads(row["subscriptions"])
            self.customers[customer_id] = row
        return self.customers[customer_id]

    def customer_by_uuid(self, uuid_hex: str) -> dict[str, Any]:
        for customer in self.customers.values():
            if customer is not None and customer["uuid"] == uuid_hex:
                return customer
        row = self.cur.one(
            f"SELECT customer_id FROM {self.p.t('customers')} WHERE uuid = ?", [uuid_hex]
        )
        if row is None:
            raise LookupError(f"customer aggregate {uuid_hex} has no Opened event in the log")
        customer = self.customer(row["customer_id"])
        assert customer is not None
        return customer

    def delta(
        self,
        customer_id: str,
        period: str,
        meter: str,
        position: int,
        kind: str,
        aggregation: str,
        field: str | None,
    ) -> dict[str, Any]:
        key = (customer_id, period, meter, position, kind)
        if key not in self.deltas:
            self.deltas[key] = {**new_totals(aggregation, field), "acc": 0, "items": 0}
        return self.deltas[key]

    def meter(
        self, customer_id: str, period: str, meter: str, aggregation: str, field: str | None
    ) -> dict[str, Any]:
        meters = self.balance(customer_id, period)
        if meter not in meters:
            meters[meter] = new_totals(aggregation, field)
        return meters[meter]

    def compensated_so_far(self, customer_id: str, period: str, event_id: str) -> Decimal:
        key = (customer_id, period, event_id)
        if key not in self.compensated:
            row = self.cur.one(
                f"SELECT quantity FROM {self.p.t('compensated')} "
                "WHERE customer_id = ? AND period = ? AND event_id = ?",
                key,
            )
            self.compensated[key] = dec(row["quantity"]) if row else ZERO
        return self.compensated[key]

    def was_carried(self, customer_id: str, period: str, event_id: str) -> bool:
        if (customer_id, period, event_id) in self.carried_ids:
            return True
        return (
            self.cur.one(
                f"SELECT 1 AS x FROM {self.p.t('carried_ids')} WHERE "
                "customer_id = ? AND period = ? AND event_id = ?",
                [customer_id, period, event_id],
            )
            is not None
        )

    @staticmethod
    def accumulate(
        row: dict[str, Any], value: int, items: int = 1, delta: dict[str, Any] | None = None
    ) -> None:
        row["acc"] = format((int(row["acc"], 16) + value) % DIGEST_MODULUS, "x")
        row["items"] = int(row["items"]) + items
        row["dirty"] = True
        if delta is not None:  # as_of reads re-add these to give the digest of that time
            delta["acc"] = (delta["acc"] + value) % DIGEST_MODULUS
            delta["items"] += items
