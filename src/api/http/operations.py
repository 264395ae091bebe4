"""Operations: health, reconciliation, projections (status, rebuild, quarantine) and audit."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from api.http import responses as r
from api.http.auth import requires
from api.http.common import (
    READ,
    SECURITY,
    Consistency,
    Cursor,
    Limit,
    fresh,
    services,
    time_param,
)
from api.http.errors import error_responses
from billing_domain.application import check_period
from billing_domain.identity import Principal
from projections.reconciliation import reconcile

_OPERATORS = requires("admin", "operator")
MAX_POSITION = 2**63 - 1  # a position in the event log is a signed 64-bit integer


@get(
    "/health",
    tags=["operations"],
    sync_to_thread=True,
    summary="Store and projections health",
    responses={
        503: ResponseSpec(
            data_container=r.HealthOut,
            description="down: the store does not answer",
            generate_examples=False,
        )
    },
)
def health(request: Request[Any, Any, Any]) -> Response[r.HealthOut]:
    """No key needed. `ok`; `degraded` (200) with `reasons` when a projection has quarantined
    notifications, lags too far or its runner failed; `down` (503) when the store does not
    answer within a short timeout."""
    report = r.HealthOut.of(services(request).read_models.health())
    return Response(report, status_code=503 if report.status == "down" else 200)


class OperationsController(Controller):
    path = "/v1"
    tags = ["operations"]  # noqa: RUF012
    security = SECURITY

    @get(
        "/reconciliation",
        sync_to_thread=True,
        guards=[requires("admin", "operator", "finance")],
        responses=READ,
        summary="Raw events, replay, projections and issued invoices compared",
    )
    def reconciliation(
        self,
        request: Request[Any, Any, Any],
        period: str,
        caller: Principal,
        customer_id: str | None = None,
    ) -> r.ReconciliationOut:
        """`ok` is false when anything disagrees; every mismatch is listed with its cause
        (tampering, partial_write, duplicate_event_id, clock_drift, schema_drift, logic_drift,
        projection_behind, unexplained), and `meters` compares each customer's meters across
        the raw events, the replay, the read models and the issued invoice."""
        check_period(period)
        report = reconcile(services(request), period=period, customer_id=customer_id)
        services(request).app.note_reconciliation(report, period, customer_id, caller)
        return r.ReconciliationOut.of(report)

    @get(
        "/projections",
        sync_to_thread=True,
        guards=[_OPERATORS],
        responses=error_responses(401, 403, 429, 503),
        summary="Projection versions, positions and lags",
    )
    def projections_status(
        self, request: Request[Any, Any, Any], caller: Principal
    ) -> r.ProjectionList:
        """Each projection's name, version, position and lag."""
        items = services(request).read_models.status()
        return r.ProjectionList.of({"items": items, "next_cursor": None})

    @post(
        "/projections/{name:str}/rebuild",
        status_code=202,
        sync_to_thread=True,
        guards=[_OPERATORS],
        responses=error_responses(401, 403, 404, 429, 503),
        summary="Rebuild a projection from the log",
    )
    def rebuild(
        self, request: Request[Any, Any, Any], name: str, caller: Principal
    ) -> r.RebuildOut:
        """Builds the next version beside the live one, then switches reads to it."""
        return r.RebuildOut.of(services(request).read_models.start_rebuild(name))

    @get(
        "/projections/{name:str}/quarantine",
        sync_to_thread=True,
        guards=[requires("admin", "operator", "finance")],
        responses=error_responses(401, 403, 404, 429, 503),
        summary="Stored events a projection could not apply",
    )
    def projection_quarantine(
        self, request: Request[Any, Any, Any], name: str, caller: Principal
    ) -> r.QuarantineList:
        """The notifications a projection set aside, oldest first, with the error of each."""
        items = services(request).read_models.quarantined(name)
        return r.QuarantineList.of({"items": items, "next_cursor": None})

    @post(
        "/projections/{name:str}/quarantine/{notification_id:int}/retry",
        status_code=200,
        sync_to_thread=True,
        guards=[_OPERATORS],
        responses=error_responses(401, 403, 404, 409, 422, 429, 503),
        summary="Apply a quarantined event again",
    )
    def retry_quarantined(
        self,
        request: Request[Any, Any, Any],
        name: str,
        notification_id: Annotated[int, Parameter(ge=1, le=MAX_POSITION)],
        caller: Principal,
    ) -> r.RetryOut:
        """Applied: 200 and it leaves the quarantine. Fails again: 409 and it stays, with the
        new error."""
        return r.RetryOut.of(services(request).read_models.retry(name, notification_id))

    @get(
        "/audit",
        sync_to_thread=True,
        guards=[requires("admin", "finance")],
        responses=READ,
        summary="Who did what, from the log",
    )
    def audit(
        self,
        request: Request[Any, Any, Any],
        caller: Principal,
        since: str | None = None,
        until: str | None = None,
        actor: str | None = None,
        cursor: Annotated[str | None, Cursor] = None,
        limit: Annotated[int, Limit] = 100,
        consistency: Annotated[str | None, Consistency] = None,
    ) -> r.AuditList:
        """Keys, grants, plans, subscriptions, merges, corrections, closes, refusals."""
        start, end = time_param(since, "since"), time_param(until, "until")
        fresh(request, consistency)
        return r.AuditList.of(
            services(request).read_models.audit(
                since=start, until=end, actor=actor, cursor=cursor, limit=limit
            )
        )
