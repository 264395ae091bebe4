"""Periods and invoices: closing, invoices and their revisions, lineage and its proofs."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import Parameter

from api.http import responses as r
from api.http.auth import requires
from api.http.common import (
    READ,
    READ_ONE,
    SECURITY,
    AsOf,
    Consistency,
    Cursor,
    Limit,
    fresh,
    services,
    time_param,
)
from api.http.errors import error_responses
from billing_domain.application import check_period
from billing_domain.errors import NotFound
from billing_domain.identity import Principal
from projections.lineage import inclusion_proof

_READERS = requires("admin", "finance")


def _no_invoice(invoice_id: str) -> NotFound:
    return NotFound(f"no invoice {invoice_id!r}", field="invoice_id")


class InvoiceController(Controller):
    path = "/v1"
    tags = ["invoices"]  # noqa: RUF012
    security = SECURITY

    @post(
        "/customers/{customer_id:str}/periods/{period:str}/close",
        status_code=200,
        sync_to_thread=True,
        guards=[requires("admin", "operator")],
        responses=error_responses(401, 403, 404, 409, 422, 429, 503),
        summary="Close a period and issue its invoice",
    )
    def close_period(
        self, request: Request[Any, Any, Any], customer_id: str, period: str, caller: Principal
    ) -> r.InvoiceOut:
        """Revision 1 is issued; closing twice changes nothing."""
        return r.InvoiceOut.of(services(request).app.close_period(customer_id, period, caller))

    @get(
        "/invoices",
        sync_to_thread=True,
        guards=[_READERS],
        responses=READ,
        summary="Invoices: drafts, issued and superseded revisions",
    )
    def list_invoices(
        self,
        request: Request[Any, Any, Any],
        caller: Principal,
        customer_id: str | None = None,
        period: Annotated[str | None, Parameter(description="YYYY-MM")] = None,
        cursor: Annotated[str | None, Cursor] = None,
        limit: Annotated[int, Limit] = 100,
        as_of: Annotated[str | None, AsOf] = None,
        consistency: Annotated[str | None, Consistency] = None,
    ) -> r.InvoiceList:
        """`{items, next_cursor}`, newest first within a customer."""
        if period is not None:
            check_period(period)
        moment = time_param(as_of, "as_of")
        fresh(request, consistency)
        return r.InvoiceList.of(
            services(request).read_models.invoices(
                customer_id=customer_id, period=period, cursor=cursor, limit=limit, as_of=moment
            )
        )

    @get(
        "/invoices/{invoice_id:str}",
        sync_to_thread=True,
        guards=[_READERS],
        responses=READ_ONE,
        summary="One invoice with its lines",
    )
    def get_invoice(
        self,
        request: Request[Any, Any, Any],
        invoice_id: str,
        caller: Principal,
        revision: Annotated[int | None, Parameter(ge=1)] = None,
        as_of: Annotated[str | None, AsOf] = None,
        consistency: Annotated[str | None, Consistency] = None,
    ) -> r.TrackedInvoiceOut:
        """The latest revision unless `revision` is given; a draft for an open period."""
        moment = time_param(as_of, "as_of")
        fresh(request, consistency)
        found = services(request).read_models.invoice(invoice_id, revision=revision, as_of=moment)
        if found is None:
            raise _no_invoice(invoice_id)
        return r.TrackedInvoiceOut.of(found)

    @get(
        "/invoices/{invoice_id:str}/revisions",
        sync_to_thread=True,
        guards=[_READERS],
        responses=READ_ONE,
        summary="Every revision with its total and delta",
    )
    def invoice_revisions(
        self,
        request: Request[Any, Any, Any],
        invoice_id: str,
        caller: Principal,
        consistency: Annotated[str | None, Consistency] = None,
    ) -> r.RevisionList:
        """Delta is the change in total from the revision before."""
        fresh(request, consistency)
        found = services(request).read_models.revisions(invoice_id)
        if found is None:
            raise _no_invoice(invoice_id)
        return r.RevisionList.of({"items": found, "next_cursor": None})

    @get(
        "/invoices/{invoice_id:str}/lineage",
        sync_to_thread=True,
        guards=[_READERS],
        responses=READ_ONE,
        summary="The source records of one invoice line, paged",
    )
    def invoice_lineage(
        self,
        request: Request[Any, Any, Any],
        invoice_id: str,
        line: Annotated[int, Parameter(ge=0, description="the line's position, from 0")],
        caller: Principal,
        cursor: Annotated[str | None, Cursor] = None,
        limit: Annotated[int, Limit] = 100,
        consistency: Annotated[str | None, Consistency] = None,
    ) -> r.LineageOut:
        """Usage events, compensations and adjustments with signed quantities."""
        fresh(request, consistency)
        found = services(request).read_models.lineage(invoice_id, line, cursor=cursor, limit=limit)
        if found is None:
            raise NotFound(f"no line {line} on invoice {invoice_id!r}", field="line")
        return r.LineageOut.of(found)

    @get(
        "/invoices/{invoice_id:str}/lineage/proof",
        sync_to_thread=True,
        guards=[_READERS],
        responses=error_responses(401, 403, 404, 409, 422, 429, 503),
        summary="Inclusion proof of one source record in a revision's lineage digest",
    )
    def invoice_lineage_proof(
        self,
        request: Request[Any, Any, Any],
        invoice_id: str,
        event_id: str,
        caller: Principal,
        revision: Annotated[int | None, Parameter(ge=1)] = None,
    ) -> r.ProofOut:
        """The record's leaf and audit path to the Merkle root (409 for sum-scheme revisions)."""
        invoice = services(request).read_models.invoice(invoice_id)
        if invoice is None:
            raise _no_invoice(invoice_id)
        return r.ProofOut.of(
            inclusion_proof(
                services(request).app,
                invoice["customer_id"],
                invoice["period"],
                invoice_id,
                event_id,
                revision,
            )
        )
