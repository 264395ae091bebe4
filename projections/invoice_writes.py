"""Writing one batch of the invoices projection: each table once, drafts once per period.

Every table gets one multi-row statement per batch (`Cursor.write_rows`), and each open
period the batch touched gets its draft invoice recomputed once, from rows read with one
query per table, however many of the batch's events touched it. A version being built
defers its drafts (`Projection.deferring`): `settle_drafts` prices every open period once
when the log is applied.
"""

from __future__ import annotations

import json
from typing import Any

from billing_domain.ids import plan_uuid
from billing_domain.invoicing import draft_view, plan_in_force
from billing_domain.merkle import root
from billing_domain.pricing import Charge, parse_charges
from billing_domain.reducer import add_carried
from projections.base import Projection, dec, dumps, stamp
from projections.batch import BatchState, totals_from_row
from projections.store import Cursor


def upsert(p: Projection, table: str, keys: tuple[str, ...], update: tuple[str, ...]) -> str:
    """The ON CONFLICT clause that replaces `update` columns of an existing row."""
    if not update:
        return f"ON CONFLICT ({', '.join(keys)}) DO NOTHING"
    sets = ", ".join(f"{c} = excluded.{c}" for c in update)
    return f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"


def write_batch(p: Projection, b: BatchState) -> None:
    """Write what a batch changed. A projection keeping rows across batches (`keeping`)
    writes only the rows the batch appended; the rows it folded into wait for its flush."""
    if not p.keeping:
        write_folded(p, b)
    write_appended(p, b)


def write_folded(p: Projection, b: BatchState) -> None:
    """The rows events fold into (customers, periods, balances, compensated), those changed."""
    cur, t, cols = b.cur, p.t, p.columns
    customers = [
        (c["customer_id"], c["uuid"], c["currency"], dumps(c["subscriptions"]))
        for c in (b.customers[i] for i in sorted(b.changed_customers))
        if c is not None
    ]
    cur.write_rows(
        t("customers"),
        cols("customers"),
        customers,
        upsert(p, "customers", ("customer_id",), ("subscriptions",)),
    )
    cur.write_rows(
        t("periods"),
        cols("periods"),
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
        upsert(p, "periods", ("period_uuid",), ("status", "peaks", "items")),
    )
    cur.write_rows(
        t("balances"),
        cols("balances"),
        [
            (
                c,
                p_,
                m,
                totals["aggregation"],
                totals["field"],
                str(totals["sum"]),
                totals["count"],
                dumps(totals["values"]),
                str(totals["adjustment"]),
            )
            for (c, p_) in sorted(b.changed_balances)
            for m, totals in b.balances[(c, p_)].items()
        ],
        upsert(
            p,
            "balances",
            ("customer_id", "period", "meter"),
            ("sum", "count", "vals", "adjustment"),
        ),
    )
    cur.write_rows(
        t("compensated"),
        cols("compensated"),
        [(*key, str(b.compensated[key])) for key in sorted(b.changed_compensated)],
        upsert(p, "compensated", ("customer_id", "period", "event_id"), ("quantity",)),
    )


def write_appended(p: Projection, b: BatchState) -> None:
    """The rows a batch adds (plans, deltas, carried rows and ids, invoices), and drafts."""
    cur, t, cols = b.cur, p.t, p.columns
    cur.write_rows(t("plans"), cols("plans"), b.plans)
    cur.write_rows(
        t("deltas"),
        cols("deltas"),
        [
            (
                c,
                p_,
                m,
                pos,
                kind,
                stamp(b.received[pos]),
                d["aggregation"],
                d["field"],
                str(d["sum"]),
                d["count"],
                dumps(d["values"]) if d["values"] else "{}",
                str(d["adjustment"]),
                d.get("peaks", "[]"),
                d["items"],
            )
            for (c, p_, m, pos, kind), d in b.deltas.items()
        ],
    )
    cur.write_rows(t("carried"), cols("carried"), b.carried)
    cur.write_rows(
        t("carried_ids"),
        cols("carried_ids"),
        b.new_carried_ids,
        upsert(p, "carried_ids", ("customer_id", "period", "event_id"), ()),
    )
    invoices = {(r["invoice_id"], r["revision"]): r for r in b.issued}
    # Building a version: each open period is priced once, by settle. Keeping rows across
    # batches: once per checkpoint, by the projection's flush.
    if not p.deferring and not p.keeping:
        for row in drafts(p, b):
            invoices[(row["invoice_id"], row["revision"])] = row
    write_invoices(p, cur, list(invoices.values()))
    latest: dict[str, int] = {}
    for row in b.issued:
        latest[row["invoice_id"]] = max(latest.get(row["invoice_id"], 0), row["revision"])
    supersede(p, b, latest)


def write_invoices(p: Projection, cur: Cursor, rows: list[dict[str, Any]]) -> None:
    names = [name for name, _ in p.columns("invoices")]
    cur.write_rows(
        p.t("invoices"),
        p.columns("invoices"),
        [tuple(row[n] for n in names) for row in rows],
        upsert(p, "invoices", ("invoice_id", "revision"), tuple(names[2:])),
    )


SETTLE_CHUNK = 5000  # open periods priced per transaction when a built version settles


def settle_drafts(p: Projection, cur: Cursor, after: tuple[str, str] | None) -> Any:
    """Price the drafts of the next SETTLE_CHUNK open periods after `after` (customer id,
    period), each once, from the rows as they stand: what a version built with deferred
    drafts needs before it is read. Returns the last key, or None when none were left."""
    where, params = "status = 'open'", []
    if after is not None:
        where += " AND (customer_id > ? OR (customer_id = ? AND period > ?))"
        params = [after[0], after[0], after[1]]
    keys = [
        (r["customer_id"], r["period"])
        for r in cur.all(
            f"SELECT customer_id, period FROM {p.t('periods')} WHERE {where} "
            f"ORDER BY customer_id, period LIMIT {SETTLE_CHUNK}",
            params,
        )
    ]
    if not keys:
        return None
    b = BatchState(p, cur)
    b.touched.update(keys)
    b.load_customers({customer for customer, _ in keys})
    write_invoices(p, cur, drafts(p, b))
    return keys[-1]


def supersede(p: Projection, b: BatchState, latest: dict[str, int]) -> None:
    """Earlier revisions of each invoice the batch issued turn `superseded`."""
    if not latest:
        return
    if b.cur.postgres:
        b.cur.raw.execute(
            f"UPDATE {p.t('invoices')} AS i SET status = 'superseded' FROM "
            "unnest(%s::text[], %s::integer[]) AS u(invoice_id, revision) "
            "WHERE i.invoice_id = u.invoice_id AND i.revision < u.revision",
            [list(latest), list(latest.values())],
        )
        return
    b.cur.executemany(
        f"UPDATE {p.t('invoices')} SET status = 'superseded' WHERE invoice_id = ? AND revision < ?",
        list(latest.items()),
    )


def drafts(p: Any, b: BatchState) -> list[dict[str, Any]]:
    """The draft of every open period the batch touched, priced once each."""
    cur, t = b.cur, p.t
    rows = {(r["customer_id"], r["period"]): r for r in b.periods.values()}
    missing = [key for key in b.touched if key not in rows]
    for row in cur.rows_in(t("periods"), ["customer_id", "period"], missing):
        rows[(row["customer_id"], row["period"])] = row
    unloaded = [key for key in missing if key not in b.balances]
    for key in unloaded:
        b.balances[key] = {}
    for row in cur.rows_in(t("balances"), ["customer_id", "period"], unloaded):
        b.balances[(row["customer_id"], row["period"])][row["meter"]] = totals_from_row(row)
    wanted = []
    for key in sorted(b.touched):
        found, customer = rows.get(key), b.customer(key[0])
        if found is not None and found["status"] == "open" and customer is not None:
            plan = plan_in_force(customer["subscriptions"], key[1])
            wanted.append((key, found, customer, plan))
    charges = plan_charges(p, b, {plan for *_, plan in wanted if plan is not None})
    carried: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in cur.rows_in(t("carried"), ["customer_id", "period"], [k for k, *_ in wanted]):
        entries = carried.setdefault((r["customer_id"], r["period"]), {})
        add_carried(entries, r["from_period"], r["meter"], dec(r["quantity"]), dec(r["amount"]))
    views = []
    for (customer_id, period), row, customer, plan in wanted:
        currency = customer["currency"]
        lines = p.draft_lines(
            period,
            b.balance(customer_id, period),
            charges.get(plan, ()) if plan else (),
            list(carried.get((customer_id, period), {}).values()),
            currency,
        )
        tree = row.get("tree")
        digest = root(tree if tree is not None else json.loads(row["peaks"]))
        view = draft_view(customer_id, period, currency, lines, digest, plan)
        views.append({**view, "lines": dumps(view["lines"]), "position": 0})
    return views


def plan_charges(
    p: Projection, b: BatchState, plans: set[tuple[str, int]]
) -> dict[tuple[str, int], tuple[Charge, ...]]:
    """The charges of each plan version, read with one query."""
    by_uuid = {plan_uuid(plan_id).hex: plan_id for plan_id, _ in plans}
    found = {}
    for r in b.cur.rows_in(p.t("plans"), ["plan_id"], [[u] for u in by_uuid]):
        plan = (by_uuid[r["plan_id"]], int(r["version"]))
        if plan in plans:
            found[plan] = parse_charges(json.loads(r["charges"]))
    return found
