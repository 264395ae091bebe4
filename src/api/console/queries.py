"""Console reads the read models' public methods do not offer: paged, sorted and searched
lists over the live versions' tables (customers, invoices, audit entries). Read-only.

Table names come from the live version of each projection at the time of the query, so a
rebuild switching reads moves these queries with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api.bootstrap import Services
from billing_domain.ids import plan_uuid
from billing_domain.usage import period_bounds
from projections.series_reads import SeriesReads
from projections.store import Cursor

NAMED_ACTIONS = ("customer.opened", "customer.renamed")
POLICY_ACTIONS = ("customer.opened", "customer.policy_changed")


def live_table(services: Services, name: str, table: str) -> str:
    runner = services.read_models.runner
    return str(runner.projection(runner.live(name)).t(table))


def _json_text(cur: Cursor, column: str, key: str) -> str:
    if cur.postgres:
        return f"(CAST({column} AS jsonb) ->> '{key}')"
    return f"json_extract({column}, '$.{key}')"


def _latest_detail_cte(cur: Cursor, entries: str, actions: tuple[str, ...], key: str) -> str:
    """customer_id -> the newest `key` of the customer's audit entries of these actions."""
    value = _json_text(cur, "e.detail", key)
    listed = ", ".join(f"'{a}'" for a in actions)
    # CAST: a column of TEXT affinity, so SQLite can join it to customer_id through an
    # automatic index (without it, every customer scanned every name: 3.5 s at 10,000)
    return (
        f"SELECT customer_id, v FROM (SELECT CAST(substr(e.subject, 10) AS TEXT) AS customer_id, "
        f"{value} AS v, ROW_NUMBER() OVER (PARTITION BY e.subject ORDER BY e.position DESC) "
        f"AS rn FROM {entries} e WHERE e.action IN ({listed}) "
        "AND substr(e.subject, 1, 9) = 'customer:' "
        f"AND {value} IS NOT NULL) ranked WHERE rn = 1"
    )


def _latest_detail(
    cur: Cursor, entries: str, actions: tuple[str, ...], key: str, customer_id: str
) -> str | None:
    """The newest `key` of one customer's audit entries of these actions."""
    value = _json_text(cur, "e.detail", key)
    listed = ", ".join(f"'{a}'" for a in actions)
    row = cur.one(
        f"SELECT {value} AS v FROM {entries} e WHERE e.subject = ? AND e.action IN ({listed}) "
        f"AND {value} IS NOT NULL ORDER BY e.position DESC LIMIT 1",
        [f"customer:{customer_id}"],
    )
    return None if row is None else str(row["v"])


def _names_of(cur: Cursor, entries: str, customer_ids: list[str]) -> dict[str, str]:
    """The latest name of each of these customers (a page of them) from the audit view."""
    if not customer_ids:
        return {}
    value = _json_text(cur, "e.detail", "name")
    listed = ", ".join(f"'{a}'" for a in NAMED_ACTIONS)
    rows = cur.all(
        f"SELECT e.subject, {value} AS v FROM {entries} e "
        f"WHERE e.subject IN ({', '.join('?' for _ in customer_ids)}) "
        f"AND e.action IN ({listed}) AND {value} IS NOT NULL ORDER BY e.position",
        [f"customer:{c}" for c in customer_ids],
    )
    return {str(r["subject"])[len("customer:") :]: str(r["v"]) for r in rows}  # newest wins


def _latest_revision(t: Tables) -> str:
    """i is its invoice's latest revision. The invoices projection marks every earlier
    revision `superseded` in the transaction that writes a later one
    (`projections.invoice_writes.supersede`), so that is a filter on the row itself: no
    anti-join to read every other revision of the table."""
    return "i.status <> 'superseded'"


def _escaped(text: str) -> str:
    """Text matched literally by LIKE ... ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _numeric(expression: str) -> str:
    return f"CAST({expression} AS NUMERIC)"


@dataclass
class Tables:
    customers: str
    invoices: str
    deltas: str
    balances: str
    plans: str
    entries: str

    @staticmethod
    def of(services: Services) -> Tables:
        return Tables(
            customers=live_table(services, "invoices", "customers"),
            invoices=live_table(services, "invoices", "invoices"),
            deltas=live_table(services, "invoices", "deltas"),
            balances=live_table(services, "invoices", "balances"),
            plans=live_table(services, "invoices", "plans"),
            entries=live_table(services, "audit", "entries"),
        )


OVERVIEW_SORTS = ("customer", "name", "currency", "amount", "last_event")


def meters(services: Services) -> list[str]:
    """Every meter a published plan charges, in name order (the overview's usage columns)."""
    found: set[str] = set()
    plans = live_table(services, "invoices", "plans")
    with services.read_models.store.read() as cur:
        for row in cur.all(f"SELECT charges FROM {plans}"):
            found.update(c["meter"] for c in json.loads(row["charges"]))
    return sorted(found)


def overview(
    services: Services,
    period: str,
    *,
    search: str | None,
    sort: str,
    descending: bool,
    offset: int,
    limit: int,
    as_of: str | None,
) -> tuple[list[dict[str, Any]], int]:
    """One page of customers with the period's draft (or latest) invoice row, their name and
    last event time; and how many customers match the search."""
    t = Tables.of(services)
    with services.read_models.store.read() as cur:
        # every customer's name only to search or sort by it; else the page's names, after
        need_names = bool(search) or sort == "name"
        names = _latest_detail_cte(cur, t.entries, NAMED_ACTIONS, "name")
        seen = "d.received_at <= ?" if as_of else "1 = 1"
        base = (
            f"FROM {t.customers} c "
            + (f"LEFT JOIN ({names}) n ON n.customer_id = c.customer_id " if need_names else "")
            + f"LEFT JOIN {t.invoices} i ON i.customer_id = c.customer_id AND i.period = ? "
            f"AND {_latest_revision(t)} "
        )
        params: list[Any] = [period]
        meter_sort = sort.startswith("meter:")
        if meter_sort:
            base += (
                f"LEFT JOIN {t.balances} b ON b.customer_id = c.customer_id AND b.period = ? "
                "AND b.meter = ? "
            )
            params += [period, sort[len("meter:") :]]
        if sort == "last_event":  # every customer's: one grouped read, not one per customer
            base += (
                f"LEFT JOIN (SELECT d.customer_id, MAX(d.received_at) AS last "
                f"FROM {t.deltas} d WHERE d.period = ? AND {seen} GROUP BY d.customer_id) le "
                "ON le.customer_id = c.customer_id "
            )
            params += [period, *([as_of] if as_of else [])]
        where = ""
        if search:
            where = (
                "WHERE (LOWER(c.customer_id) LIKE ? ESCAPE '\\' OR LOWER(n.v) LIKE ? ESCAPE '\\') "
            )
            pattern = "%" + _escaped(search.lower()) + "%"
            params += [pattern, pattern]
        if search:
            count = cur.one(f"SELECT COUNT(*) AS n {base}{where}", params)
        else:  # every customer: no join to count
            count = cur.one(f"SELECT COUNT(*) AS n FROM {t.customers}")
        last_event = (
            f"(SELECT MAX(d.received_at) FROM {t.deltas} d WHERE "
            f"d.customer_id = c.customer_id AND d.period = ? AND {seen})"
        )
        last_params: list[Any] = [period, *([as_of] if as_of else [])]
        if sort == "last_event":
            last_event, last_params = "le.last", []
        key = {
            "customer": "c.customer_id",
            "name": "LOWER(n.v)",
            "currency": "c.currency",
            "amount": _numeric("i.total"),
            "last_event": "le.last",
        }.get(sort)
        if meter_sort:
            key = (
                f"CASE b.aggregation WHEN 'count' THEN {_numeric('b.count')} "
                f"ELSE {_numeric('b.sum')} END + {_numeric('b.adjustment')}"
            )
        elif key is None:
            key = "c.customer_id"
        direction = "DESC" if descending else "ASC"
        order = f"({key}) IS NULL, {key} {direction}, c.customer_id {direction}"
        if sort == "customer":  # never null: the primary key's order
            order = f"c.customer_id {direction}"
        rows = cur.all(
            f"SELECT c.customer_id, c.currency, c.subscriptions, "
            f"{'n.v' if need_names else 'NULL'} AS name, i.invoice_id, i.revision, i.status, "
            f"i.total, i.lines, {last_event} AS last_event {base}{where}"
            f"ORDER BY {order} LIMIT ? OFFSET ?",
            [*last_params, *params, limit, offset],
        )
        if not need_names:
            found = _names_of(cur, t.entries, [r["customer_id"] for r in rows])
            for r in rows:
                r["name"] = found.get(r["customer_id"])
    return rows, int(count["n"]) if count else 0


def customer(services: Services, customer_id: str) -> dict[str, Any] | None:
    """The customer as the read models hold it: currency, subscriptions (with each plan
    version's charges), and from the audit view its name and late-usage policy."""
    t = Tables.of(services)
    with services.read_models.store.read() as cur:
        row = cur.one(f"SELECT * FROM {t.customers} WHERE customer_id = ?", [customer_id])
        if row is None:
            return None
        name = _latest_detail(cur, t.entries, NAMED_ACTIONS, "name", customer_id)
        policy = _latest_detail(cur, t.entries, POLICY_ACTIONS, "late_usage_policy", customer_id)
        subscriptions = json.loads(row["subscriptions"])
        for sub in subscriptions:
            plan = cur.one(
                f"SELECT currency, charges FROM {t.plans} WHERE plan_id = ? AND version = ?",
                [plan_uuid(sub["plan_id"]).hex, sub["plan_version"]],
            )
            sub["charges"] = json.loads(plan["charges"]) if plan else []
    return {
        "customer_id": row["customer_id"],
        "currency": row["currency"],
        "name": name,
        "late_usage_policy": policy,
        "subscriptions": subscriptions,
    }


INVOICE_SORTS = ("customer", "period", "revision", "status", "total", "issued_at")
STATUSES = ("draft", "issued", "superseded")


def _invoice_filter(
    t: Tables, customer_id: str | None, period: str | None, status: str | None
) -> tuple[str, list[Any]]:
    where, params = ["1 = 1"], list[Any]()
    if customer_id:
        where.append("i.customer_id = ?")
        params.append(customer_id)
    if period:
        where.append("i.period = ?")
        params.append(period)
    if status:
        where.append("i.status = ?")
        params.append(status)
    else:
        where.append(_latest_revision(t))
    return " AND ".join(where), params


def _invoice_key(sort: str) -> str:
    return {
        "customer": "i.customer_id",
        "period": "i.period",
        "revision": "i.revision",
        "status": "i.status",
        "total": _numeric("i.total"),
        "issued_at": "i.issued_at",
    }.get(sort, "i.customer_id")


def _invoice_order(sort: str, key: str, direction: str) -> str:
    """Nulls last, then customer, period, revision; only issue times can be null, so the other
    keys sort without the null test (the customer sort then follows the (customer_id, period,
    revision) index, which a far page needs)."""
    nulls = f"({key}) IS NULL, " if sort == "issued_at" else ""
    return f"{nulls}{key} {direction}, i.customer_id, i.period, i.revision"


INVOICE_COLUMNS = (
    "i.invoice_id, i.customer_id, i.period, i.revision, i.status, i.total, i.currency, i.issued_at"
)


def invoices(
    services: Services,
    *,
    customer_id: str | None,
    period: str | None,
    status: str | None,
    sort: str,
    descending: bool,
    offset: int,
    limit: int,
) -> tuple[list[dict[str, Any]], int]:
    """One page of invoices: each invoice's latest revision, or with `status` the revisions in
    that status (so `superseded` lists the revisions a later one replaced)."""
    t = Tables.of(services)
    sql_where, params = _invoice_filter(t, customer_id, period, status)
    key = _invoice_key(sort)
    direction = "DESC" if descending else "ASC"
    with services.read_models.store.read() as cur:
        count = cur.one(f"SELECT COUNT(*) AS n FROM {t.invoices} i WHERE {sql_where}", params)
        rows = cur.all(
            f"SELECT {INVOICE_COLUMNS} FROM {t.invoices} i WHERE {sql_where} "
            f"ORDER BY {_invoice_order(sort, key, direction)} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
    return [{**r, "revision": int(r["revision"])} for r in rows], int(count["n"]) if count else 0


def all_invoices(
    services: Services,
    *,
    customer_id: str | None,
    period: str | None,
    status: str | None,
    sort: str,
    descending: bool,
    chunk: int = 1000,
) -> Iterator[list[dict[str, Any]]]:
    """Every invoice row `invoices` would list for the same filters, in the same order, in
    chunks of `chunk` rows: each chunk is one short read that resumes after the last row of
    the one before (keyset paging on the sort key and customer, period, revision), so memory
    and each query stay bounded however many rows match."""
    t = Tables.of(services)
    sql_where, params = _invoice_filter(t, customer_id, period, status)
    key = _invoice_key(sort)
    direction, op = ("DESC", "<") if descending else ("ASC", ">")
    after: dict[str, Any] | None = None
    tail = "(i.customer_id, i.period, i.revision) > (?, ?, ?)"
    while True:
        resume, resume_params = "", list[Any]()
        if after is not None:
            last = [after["customer_id"], after["period"], after["revision"]]
            if after["sort_key"] is None:
                resume = f"AND ({key}) IS NULL AND {tail} "
                resume_params = last
            else:
                resume = f"AND (({key}) IS NULL OR {key} {op} ? OR ({key} = ? AND {tail})) "
                resume_params = [after["sort_key"], after["sort_key"], *last]
        with services.read_models.store.read() as cur:
            rows = cur.all(
                f"SELECT {INVOICE_COLUMNS}, {key} AS sort_key FROM {t.invoices} i "
                f"WHERE {sql_where} {resume}"
                f"ORDER BY {_invoice_order(sort, key, direction)} LIMIT ?",
                [*params, *resume_params, chunk],
            )
        if not rows:
            return
        after = rows[-1]
        yield [
            {k: v for k, v in r.items() if k != "sort_key"} | {"revision": int(r["revision"])}
            for r in rows
        ]
        if len(rows) < chunk:
            return


def audit(
    services: Services,
    *,
    actor: str | None,
    action: str | None,
    since: str | None,
    until: str | None,
    before: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Audit entries newest first, filtered; the position to page on from, if more."""
    t = Tables.of(services)
    where, params = ["1 = 1"], list[Any]()
    if actor:
        where.append("(actor = ? OR emitter = ? OR key_id = ?)")
        params += [actor, actor, actor]
    if action:
        if action.endswith(".*"):
            where.append("action LIKE ?")
            params.append(action[:-1] + "%")
        else:
            where.append("action = ?")
            params.append(action)
    if since:
        where.append("at >= ?")
        params.append(since)
    if until:
        where.append("at <= ?")
        params.append(until)
    if before is not None:
        where.append("position < ?")
        params.append(before)
    with services.read_models.store.read() as cur:
        rows = cur.all(
            f"SELECT * FROM {t.entries} WHERE {' AND '.join(where)} ORDER BY position DESC LIMIT ?",
            [*params, limit + 1],
        )
    items = [{**r, "position": int(r["position"]), "detail": json.loads(r["detail"])} for r in rows]
    more = items[limit - 1]["position"] if len(items) > limit else None
    return items[:limit], more


def audit_actions(services: Services) -> list[str]:
    entries = live_table(services, "audit", "entries")
    with services.read_models.store.read() as cur:
        rows = cur.all(f"SELECT DISTINCT action FROM {entries}")
    return sorted(r["action"] for r in rows)


def daily_usage(
    services: Services, period: str, as_of: datetime | None, customer_id: str | None = None
) -> dict[str, Any]:
    """A chart of the period's usage per UTC day and meter (of one customer, or of every
    customer together), from the series read model: day labels and a dataset per meter."""
    start, end = period_bounds(period)
    charts = SeriesReads(services.read_models).daily(start, end, as_of, customer_id)
    days = [p["day"] for p in next(iter(charts.values()), [])]
    return {
        "labels": days,
        "datasets": [
            {"label": meter, "values": [p["value"] for p in points]}
            for meter, points in charts.items()
        ],
    }
