"""Read pages: the overview, a customer, the invoices list (and its CSV), an invoice with its
revisions, lineage drill-down and verification."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
from litestar import Request, get, post
from litestar.response import Stream, Template

from api.console import queries
from api.console.signin import check_csrf, current
from api.console.view import (
    HEADERS,
    PAGE_SIZES,
    Page,
    check_role,
    fresh,
    is_htmx,
    open_page,
    path,
    whole,
)
from billing_domain.application import check_period
from billing_domain.errors import InvalidInput, NotFound
from billing_domain.ids import invoice_id as invoice_id_of
from billing_domain.usage import period_of
from projections.reconciliation import reconcile

OVERVIEW_SIZE = 50
LINEAGE_PAGE = 50
CSV_CHUNK = 1000  # invoice rows per read of the CSV export
LINEAGE_SUM_LIMIT = 100_000  # records summed for a line's check; beyond, the page says so


def _period(page: Page, text: str | None = None) -> str:
    if text:
        check_period(text)
        return text
    return period_of(page.as_of or datetime.now(UTC))


def _direction(text: str | None) -> bool:
    if text not in (None, "", "asc", "desc"):
        raise InvalidInput("must be asc or desc", field="dir")
    return text == "desc"


def _plan_label(subscriptions: list[dict[str, Any]], period: str) -> str | None:
    """The plan of a period as the read model's subscriptions say: the latest one starting by
    the period (the customer aggregate's rule)."""
    chosen = None
    for subscription in subscriptions:
        if subscription["effective_from"] <= period:
            chosen = subscription
    return None if chosen is None else f"{chosen['plan_id']} v{chosen['plan_version']}"


def _decimal_sum(values: list[str]) -> str:
    return str(sum((Decimal(v) for v in values), Decimal(0)))


# Overview -----------------------------------------------------------------------------------


@get("/", sync_to_thread=True, name="console:overview")
def overview(request: Request[Any, Any, Any]) -> Template:
    """The current period per customer: usage per meter, running amount, last event."""
    page = open_page(request)
    q = request.query_params
    search = (q.get("q") or "").strip()[:200] or None
    sort = q.get("sort") or "customer"
    meters = queries.meters(page.services)
    if sort not in queries.OVERVIEW_SORTS and sort.removeprefix("meter:") not in meters:
        raise InvalidInput("is not a column of this table", field="sort")
    descending = _direction(q.get("dir"))
    size = whole(q.get("size"), "size", OVERVIEW_SIZE, 1, 500)
    number = whole(q.get("page"), "page", 1, 1, 10**9)
    period = _period(page)
    fresh(page.services)
    rows, total = queries.overview(
        page.services,
        period,
        search=search,
        sort=sort,
        descending=descending,
        offset=(number - 1) * size,
        limit=size,
        as_of=page.as_of_stamp,
    )
    customers = [_overview_row(page, row, period) for row in rows]
    totals = {
        m: _decimal_sum([c["usage"][m]["quantity"] for c in customers if m in c["usage"]])
        for m in meters
    }
    pages = max((total + size - 1) // size, 1)
    page.context.update(
        period=period,
        meters=meters,
        customers=customers,
        total=total,
        number=number,
        pages=pages,
        size=size,
        sort=sort,
        descending=descending,
        search=search or "",
        chart={"labels": list(totals), "values": list(totals.values())},
        daily=queries.daily_usage(page.services, period, page.as_of),
    )
    if is_htmx(request) and request.headers.get("hx-target") == "overview-table":
        return page.render("_overview_table.html")
    return page.render("overview.html")


def _overview_row(page: Page, row: dict[str, Any], period: str) -> dict[str, Any]:
    lines: list[dict[str, Any]] = json.loads(row["lines"]) if row["lines"] else []
    total, status = row["total"], row["status"]
    if page.as_of is not None:
        known = page.services.read_models.invoice(
            invoice_id_of(row["customer_id"], period), as_of=page.as_of
        )
        lines = known["lines"] if known else []
        total = known["total"] if known else None
        status = known["status"] if known else None
    usage = {
        line["meter"]: {"quantity": line["quantity"], "amount": line["amount"]}
        for line in lines
        if line["kind"] == "usage"
    }
    return {
        "customer_id": row["customer_id"],
        "name": row["name"],
        "currency": row["currency"],
        "plan": _plan_label(json.loads(row["subscriptions"]), period),
        "usage": usage,
        "carried": [line for line in lines if line["kind"] != "usage"],
        "total": total,
        "status": status,
        "last_event": row["last_event"],
    }


# A customer ---------------------------------------------------------------------------------


@get("/customers/{customer_id:str}", sync_to_thread=True, name="console:customer")
def customer(request: Request[Any, Any, Any], customer_id: str) -> Template:
    """Plan and subscriptions, this period's balances per meter, every invoice and revision."""
    page = open_page(request)
    period = _period(page, request.query_params.get("period"))
    fresh(page.services)
    models = page.services.read_models
    found = queries.customer(page.services, customer_id)
    if found is None:
        raise NotFound(f"no customer {customer_id!r} in the read models", field="customer_id")
    usage = models.usage(customer_id, period, as_of=page.as_of)
    listed = models.invoices(customer_id=customer_id, limit=1000, as_of=page.as_of)["items"]
    invoices: dict[str, dict[str, Any]] = {}
    for item in listed:
        invoices[item["invoice_id"]] = item  # rows come in revision order: the last one wins
    history = []
    for item in sorted(invoices.values(), key=lambda i: i["period"], reverse=True):
        revisions = [
            r
            for r in models.revisions(item["invoice_id"]) or []
            if page.as_of_stamp is None
            or r["status"] == "draft"
            or (r["issued_at"] or "") <= page.as_of_stamp
        ]
        history.append({**item, "revisions": revisions})
    page.context.update(
        customer=found,
        period=period,
        plan=_plan_label(found["subscriptions"], period),
        usage=usage,
        invoices=history,
        chart={
            "labels": [i["meter"] for i in usage["items"]],
            "values": [i["quantity"] for i in usage["items"]],
        },
        daily=queries.daily_usage(page.services, period, page.as_of, customer_id),
    )
    return page.render("customer.html")


# Invoices -----------------------------------------------------------------------------------

CSV_COLUMNS = (
    "invoice_id",
    "customer_id",
    "period",
    "revision",
    "status",
    "total",
    "currency",
    "issued_at",
)


@dataclass
class InvoiceQuery:
    customer_id: str | None
    period: str | None
    status: str | None
    sort: str
    descending: bool
    size: int
    number: int

    @staticmethod
    def of(page: Page) -> InvoiceQuery:
        """The invoices page's filters, sort and paging, each checked before any read."""
        q = page.request.query_params
        period = (q.get("period") or "").strip() or None
        if period:
            check_period(period)
        status = q.get("status") or None
        if status is not None and status not in queries.STATUSES:
            raise InvalidInput(f"must be one of {', '.join(queries.STATUSES)}", field="status")
        sort = q.get("sort") or "customer"
        if sort not in queries.INVOICE_SORTS:
            raise InvalidInput("is not a column of this table", field="sort")
        return InvoiceQuery(
            customer_id=(q.get("customer_id") or "").strip()[:256] or None,
            period=period,
            status=status,
            sort=sort,
            descending=_direction(q.get("dir")),
            size=whole(q.get("size"), "size", 50, 1, 1000),
            number=whole(q.get("page"), "page", 1, 1, 10**9),
        )

    @property
    def filters(self) -> dict[str, Any]:
        return {"customer_id": self.customer_id, "period": self.period, "status": self.status}


def _invoice_list(page: Page) -> dict[str, Any]:
    query = InvoiceQuery.of(page)
    size, number = query.size, query.number
    fresh(page.services)
    rows, total = queries.invoices(
        page.services,
        **query.filters,
        sort=query.sort,
        descending=query.descending,
        offset=(number - 1) * size,
        limit=size,
    )
    if page.as_of is not None:
        rows = [r for r in (_as_of(page, r) for r in rows) if r is not None]
    return {
        "invoices": rows,
        "filters": {
            "customer_id": query.customer_id or "",
            "period": query.period or "",
            "status": query.status or "",
            "sort": query.sort,
            "dir": "desc" if query.descending else "asc",
            "size": size,
        },
        "total": total,
        "number": number,
        "pages": max((total + size - 1) // size, 1),
        "sort": query.sort,
        "descending": query.descending,
        "sizes": PAGE_SIZES,
        "statuses": queries.STATUSES,
    }


def _as_of(page: Page, row: dict[str, Any]) -> dict[str, Any] | None:
    """The row as it was known at as_of, or None when it was not known yet."""
    view = page.services.read_models.invoice(
        row["invoice_id"], revision=row["revision"], as_of=page.as_of
    )
    if view is None:
        return None
    return {**row, **{k: view[k] for k in ("status", "total", "issued_at")}}


@get("/invoices", sync_to_thread=True, name="console:invoices")
def invoices(request: Request[Any, Any, Any]) -> Template:
    """All invoices, filtered by period, status and customer, sorted, paged."""
    page = open_page(request)
    page.context.update(_invoice_list(page))
    if is_htmx(request) and request.headers.get("hx-target") == "invoices-table":
        return page.render("_invoices_table.html")
    return page.render("invoices.html")


@get("/invoices.csv", sync_to_thread=True, name="console:invoices_csv")
def invoices_csv(request: Request[Any, Any, Any]) -> Stream:
    """Every invoice matching the page's filters, in the page's sort order, with the page's
    columns: not only the page shown. Streamed in chunks of CSV_CHUNK rows read one after the
    other (keyset paging), so memory stays bounded and there is no row limit; amounts are the
    invoices' own text, never converted."""
    page = open_page(request)
    query = InvoiceQuery.of(page)
    fresh(page.services)
    chunks = queries.all_invoices(
        page.services,
        **query.filters,
        sort=query.sort,
        descending=query.descending,
        chunk=CSV_CHUNK,
    )

    def lines() -> Iterator[bytes]:
        yield _csv_lines([CSV_COLUMNS])
        for rows in chunks:
            if page.as_of is not None:
                rows = [r for r in (_as_of(page, r) for r in rows) if r is not None]
            yield _csv_lines(
                [_cell("" if row[c] is None else row[c]) for c in CSV_COLUMNS] for row in rows
            )

    stamp = (page.as_of_text or "now").replace(":", "")
    return Stream(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={
            **HEADERS,
            "Content-Disposition": f'attachment; filename="invoices-{stamp}.csv"',
        },
    )


def _csv_lines(rows: Iterable[Iterable[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


def _cell(value: Any) -> str:
    text = str(value)
    # A cell a spreadsheet would run as a formula is quoted as text.
    return "'" + text if text[:1] in ("=", "+", "@", "\t", "\r") else text


# An invoice ---------------------------------------------------------------------------------


@get("/invoices/{invoice_id:str}", sync_to_thread=True, name="console:invoice")
def invoice(request: Request[Any, Any, Any], invoice_id: str) -> Template:
    """Lines, totals, revisions with deltas, the lineage digest; drill-down per line."""
    page = open_page(request)
    revision_text = request.query_params.get("revision")
    revision = None if not revision_text else whole(revision_text, "revision", 1, 1, 10**6)
    fresh(page.services)
    models = page.services.read_models
    found = models.invoice(invoice_id, revision=revision, as_of=page.as_of)
    if found is None:
        raise NotFound(f"no invoice {invoice_id!r} known at this time", field="invoice_id")
    latest = models.invoice(invoice_id)
    revisions = [
        r
        for r in models.revisions(invoice_id) or []
        if page.as_of_stamp is None
        or r["status"] == "draft"
        or (r["issued_at"] or "") <= page.as_of_stamp
    ]
    lines = []
    for index, line in enumerate(found["lines"]):
        same = latest is not None and index < len(latest["lines"])
        same = same and _same_line(latest["lines"][index], line)
        lines.append({**line, "index": index, "drill": same})
    page.context.update(invoice=found, lines=lines, revisions=revisions, latest=latest)
    return page.render("invoice.html")


def _same_line(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("kind", "meter", "usage_period"))


def _received_by(item: dict[str, Any], moment: datetime | None) -> bool:
    if moment is None:
        return True
    received = datetime.fromisoformat(str(item["received_at"]).replace("Z", "+00:00"))
    return received <= moment


@get("/invoices/{invoice_id:str}/lines/{line:int}", sync_to_thread=True, name="console:lineage")
def lineage(request: Request[Any, Any, Any], invoice_id: str, line: int) -> Template:
    """One page of a line's source records, with the sum of every record of the line."""
    page = open_page(request)
    cursor = request.query_params.get("cursor") or None
    models = page.services.read_models
    found = models.lineage(invoice_id, line, cursor=cursor, limit=LINEAGE_PAGE)
    if found is None:
        raise NotFound(f"no line {line} on invoice {invoice_id!r}", field="line")
    items = [i for i in found["items"] if _received_by(i, page.as_of)]
    everything, count, complete = Decimal(0), 0, True
    after: str | None = None
    while True:
        chunk = models.lineage(invoice_id, line, cursor=after, limit=1000)
        for item in chunk["items"] if chunk else []:
            if _received_by(item, page.as_of):
                everything += Decimal(item["quantity"])
                count += 1
        after = chunk["next_cursor"] if chunk else None
        if after is None:
            break
        if count >= LINEAGE_SUM_LIMIT:
            complete = False
            break
    page.context.update(
        invoice_id=invoice_id,
        line=line,
        items=items,
        page_sum=_decimal_sum([i["quantity"] for i in items]),
        all_sum=str(everything),
        all_count=count,
        complete=complete,
        next_cursor=found["next_cursor"],
        cursor=cursor,
        base=path("invoices", invoice_id, "lines", str(line)),
    )
    return page.render("_lineage.html")


@post("/invoices/{invoice_id:str}/verify", name="console:verify", status_code=200)
async def verify(request: Request[Any, Any, Any], invoice_id: str) -> Template:
    """Recompute the period's digests and compare log, replay, read models and invoice."""
    session = current(request)
    check_csrf(request, session, await request.form())
    check_role(request, session)
    page = open_page(request)
    found = page.services.read_models.invoice(invoice_id)
    if found is None:
        raise NotFound(f"no invoice {invoice_id!r}", field="invoice_id")
    report = await anyio.to_thread.run_sync(
        lambda: reconcile(page.services, period=found["period"], customer_id=found["customer_id"])
    )
    return page.render("_verify.html", invoice=found, report=report)
