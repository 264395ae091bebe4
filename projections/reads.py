"""Queries over the invoices projection's tables: balances, invoices, revisions, as_of drafts."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

from billing_domain.invoicing import (
    Plan,
    charge_amount,
    draft_view,
    issued_view,
    plan_in_force,
)
from billing_domain.merkle import root
from billing_domain.numbers import ZERO
from billing_domain.pricing import Charge, round_money
from billing_domain.reducer import add_totals
from billing_domain.usage import aggregate_quantity, decimal_text, new_totals
from projections.batch import BILLED, totals_from_row
from projections.errors import InvalidCursor
from projections.ledger import InvoicesProjection
from projections.store import Cursor


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


def decode_cursor(cursor: str | None, *kinds: type) -> list[Any] | None:
    """The parts of a cursor this service gave out, checked against their expected types."""
    if not cursor:
        return None
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError):
        parts = None
    if (
        not isinstance(parts, list)
        or len(parts) != len(kinds)
        or not all(type(part) is kind for part, kind in zip(parts, kinds, strict=True))
    ):
        raise InvalidCursor("cursor is not one this service gave out")
    return parts


def invoice_view(row: dict[str, Any]) -> dict[str, Any]:
    """An invoices row as the public invoice."""
    lines = json.loads(row["lines"])
    if row["status"] == "draft":
        plan = None if row["plan_id"] is None else (row["plan_id"], int(row["plan_version"]))
        return draft_view(
            row["customer_id"], row["period"], row["currency"], lines, row["lineage_digest"], plan
        )
    return issued_view(
        row["customer_id"],
        row["period"],
        {**row, "lines": lines},
        status=row["status"],
        issued_at=row["issued_at"],
    )


class InvoiceReads:
    def __init__(self, projection: InvoicesProjection) -> None:
        self.p = projection

    def t(self, table: str) -> str:
        return self.p.t(table)

    def meters(
        self, cur: Cursor, customer_id: str, period: str, as_of: str | None
    ) -> dict[str, dict[str, Any]]:
        if as_of is None:
            rows = cur.all(
                f"SELECT * FROM {self.t('balances')} WHERE customer_id = ? AND period = ?",
                [customer_id, period],
            )
            return {r["meter"]: totals_from_row(r) for r in rows}
        meters: dict[str, dict[str, Any]] = {}
        for r in cur.all(
            f"SELECT * FROM {self.t('deltas')} WHERE customer_id = ? AND "
            "period = ? AND kind = ? AND received_at <= ? ORDER BY position",
            [customer_id, period, BILLED, as_of],
        ):
            totals = meters.setdefault(r["meter"], new_totals(r["aggregation"], r["field"]))
            add_totals(totals, totals_from_row(r))
        return meters

    def issued(
        self, cur: Cursor, customer_id: str, period: str, as_of: str | None
    ) -> list[dict[str, Any]]:
        rows = cur.all(
            f"SELECT * FROM {self.t('invoices')} WHERE customer_id = ? AND "
            "period = ? AND status <> 'draft' ORDER BY revision",
            [customer_id, period],
        )
        return [r for r in rows if as_of is None or r["issued_at"] <= as_of]

    def charges_for(
        self, cur: Cursor, customer: dict[str, Any], period: str, issued: list[dict[str, Any]]
    ) -> tuple[tuple[Charge, ...], Plan]:
        plan: Plan
        if issued and issued[-1]["plan_id"]:
            plan = (issued[-1]["plan_id"], int(issued[-1]["plan_version"]))
        else:
            plan = plan_in_force(json.loads(customer["subscriptions"]), period)
        return self.p.charges(cur, plan), plan

    def customer(self, cur: Cursor, customer_id: str) -> dict[str, Any] | None:
        return cur.one(f"SELECT * FROM {self.t('customers')} WHERE customer_id = ?", [customer_id])

    def usage(
        self, cur: Cursor, customer_id: str, period: str, as_of: str | None
    ) -> list[dict[str, Any]]:
        customer = self.customer(cur, customer_id)
        if customer is None:
            return []
        meters = self.meters(cur, customer_id, period, as_of)
        charges, _ = self.charges_for(
            cur, customer, period, self.issued(cur, customer_id, period, as_of)
        )
        currency = customer["currency"]
        items = []
        for charge in charges:
            totals = meters.get(charge.meter) or new_totals(charge.aggregation, charge.field)
            items.append(
                {
                    "meter": charge.meter,
                    "quantity": decimal_text(aggregate_quantity(totals)),
                    "amount": str(charge_amount(charge, totals, currency)),
                    "currency": currency,
                }
            )
        priced = {charge.meter for charge in charges}
        for meter in sorted(set(meters) - priced):  # recorded, priced by no charge in force
            items.append(
                {
                    "meter": meter,
                    "quantity": decimal_text(aggregate_quantity(meters[meter])),
                    "amount": str(round_money(ZERO, currency)),
                    "currency": currency,
                }
            )
        return items

    def invoice(
        self, cur: Cursor, invoice_id: str, revision: int | None, as_of: str | None
    ) -> dict[str, Any] | None:
        rows = cur.all(
            f"SELECT * FROM {self.t('invoices')} WHERE invoice_id = ? ORDER BY revision",
            [invoice_id],
        )
        if not rows:
            return None
        if as_of is None:
            chosen = (
                rows[-1]
                if revision is None
                else next((r for r in rows if int(r["revision"]) == revision), None)
            )
            return None if chosen is None else invoice_view(chosen)
        issued = [r for r in rows if r["status"] != "draft" and r["issued_at"] <= as_of]
        if issued:
            chosen = (
                issued[-1]
                if revision is None
                else next((r for r in issued if int(r["revision"]) == revision), None)
            )
            if chosen is None:
                return None
            view = invoice_view(chosen)
            view["status"] = "issued" if chosen is issued[-1] else "superseded"
            return view
        if revision not in (None, 1):
            return None
        return self.draft_as_of(cur, rows[0]["customer_id"], rows[0]["period"], invoice_id, as_of)

    def draft_as_of(
        self, cur: Cursor, customer_id: str, period: str, invoice_id: str, as_of: str
    ) -> dict[str, Any] | None:
        customer = self.customer(cur, customer_id)
        if customer is None:
            return None
        charges, plan = self.charges_for(cur, customer, period, [])
        carried = self.p.carried_entries(cur, customer_id, period, as_of)
        lines = self.p.draft_lines(
            period,
            self.meters(cur, customer_id, period, as_of),
            charges,
            carried,
            customer["currency"],
        )
        digest = self.lineage_digest(cur, customer_id, period, as_of)
        return draft_view(customer_id, period, customer["currency"], lines, digest, plan)

    def lineage_digest(
        self, cur: Cursor, customer_id: str, period: str, as_of: str | None = None
    ) -> str:
        """The root of the period's lineage tree as its last billed lineage row (received by
        `as_of`) left it: each row keeps the tree's compact range after its event."""
        latest: tuple[int, str] = (-1, "[]")
        for table in ("deltas", "carried"):
            where = " AND kind = 'billed'" if table == "deltas" else ""
            params = [customer_id, period]
            if as_of is not None:
                where += " AND received_at <= ?"
                params.append(as_of)
            r = cur.one(
                f"SELECT position, peaks FROM {self.t(table)} WHERE customer_id = ? "
                f"AND period = ?{where} ORDER BY position DESC LIMIT 1",
                params,
            )
            if r is not None and int(r["position"]) > latest[0]:
                latest = (int(r["position"]), r["peaks"])
        return root(json.loads(latest[1]))

    def invoices(
        self,
        cur: Cursor,
        customer_id: str | None,
        period: str | None,
        cursor: str | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], str | None]:
        where, params = ["1 = 1"], list[Any]()
        if customer_id is not None:
            where.append("customer_id = ?")
            params.append(customer_id)
        if period is not None:
            where.append("period = ?")
            params.append(period)
        after = decode_cursor(cursor, str, str, int)
        if after is not None:
            where.append(
                "(customer_id > ? OR (customer_id = ? AND (period > ? OR "
                "(period = ? AND revision > ?))))"
            )
            params += [after[0], after[0], after[1], after[1], after[2]]
        rows = cur.all(
            f"SELECT invoice_id, customer_id, period, revision, status, total, "
            f"currency, issued_at FROM {self.t('invoices')} "
            f"WHERE {' AND '.join(where)} ORDER BY customer_id, period, revision "
            f"LIMIT ?",
            [*params, limit + 1],
        )
        items = [{**r, "revision": int(r["revision"])} for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor(last["customer_id"], last["period"], last["revision"])
        return items, next_cursor

    def revisions(self, cur: Cursor, invoice_id: str) -> list[dict[str, Any]] | None:
        rows = cur.all(
            f"SELECT revision, status, total, issued_at, lineage_digest FROM "
            f"{self.t('invoices')} WHERE invoice_id = ? ORDER BY revision",
            [invoice_id],
        )
        if not rows:
            return None
        result, previous = [], Decimal(0)
        for r in rows:
            total = Decimal(r["total"])
            result.append(
                {
                    "revision": int(r["revision"]),
                    "status": r["status"],
                    "total": r["total"],
                    "delta": str(total - previous),
                    "issued_at": r["issued_at"],
                    "lineage_digest": r["lineage_digest"],
                }
            )
            previous = total
        return result
