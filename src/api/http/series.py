"""Usage over time: a customer's meter per hour, day or month, from the series projection."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import Parameter, QueryParameter
from pydantic import Field

from api.http import responses as r
from api.http.auth import requires
from api.http.common import READ_ONE, SECURITY, AsOf, Consistency, fresh, services, time_param
from billing_domain.identity import Principal
from billing_domain.usage import period_bounds, period_of
from projections.series_reads import MAX_GROUPS, MAX_LIMIT, MAX_WINDOWS, SeriesReads, check


class SeriesItem(r.Sparse):
    window_start: r.TimeText
    window_end: r.TimeText = Field(description="exclusive")
    value: r.DecimalText = Field(description="the meter's aggregation over the window")
    group: dict[str, Any] | None = Field(
        default=None, description="with group_by: {property: value} of this item"
    )


class SeriesOut(r.Page):
    customer_id: str
    meter: str
    aggregation: str
    window: str
    range_start: r.TimeText = Field(description="`from`, aligned down to a window's start")
    range_end: r.TimeText = Field(description="`to` (exclusive), aligned up to a window's end")
    group_by: str | None
    as_of: r.TimeText | None
    items: list[SeriesItem]
    position: int = Field(description="the read model's position in the event log")


class SeriesController(Controller):
    path = "/v1"
    tags = ["usage"]  # noqa: RUF012
    security = SECURITY

    @get(
        "/customers/{customer_id:str}/usage/series",
        sync_to_thread=True,
        guards=[requires("admin", "finance")],
        responses=READ_ONE,
        summary="A customer's usage of a meter per hour, day or month",
        description=f"At most {MAX_WINDOWS} windows in the range, {MAX_LIMIT} a page, and "
        f"{MAX_GROUPS} values of a grouped property; `from` is aligned down and `to` up to "
        "whole windows (UTC). Without `group_by` every window is listed (value 0 when "
        "nothing was recorded); with it, each window and value that has usage.",
    )
    def series(
        self,
        request: Request[Any, Any, Any],
        customer_id: str,
        meter: str,
        caller: Principal,
        from_: Annotated[
            str | None,
            QueryParameter(name="from", description="RFC 3339; default: this period's start"),
        ] = None,
        to: Annotated[
            str | None, Parameter(description="RFC 3339, exclusive; default: this period's end")
        ] = None,
        window: Annotated[str, Parameter(description="hour, day or month")] = "day",
        group_by: Annotated[
            str | None, Parameter(description="a record property to group the usage by")
        ] = None,
        as_of: Annotated[str | None, AsOf] = None,
        cursor: Annotated[str | None, Parameter(description="next_cursor of the page before")] = (
            None
        ),
        limit: Annotated[
            int, Parameter(description=f"windows (or items) a page, 1 to {MAX_LIMIT}")
        ] = MAX_LIMIT,
        consistency: Annotated[str | None, Consistency] = None,
    ) -> SeriesOut:
        """`{meter, window, items: [{window_start, window_end, value, group?}], next_cursor}`;
        compensations and adjustments applied, a merged customer's usage under the survivor."""
        app = services(request).app
        start, end = time_param(from_, "from"), time_param(to, "to")
        moment = time_param(as_of, "as_of")
        this_period = period_bounds(period_of(app.clock()))
        start, end = start or this_period[0], end or this_period[1]
        check(start, end, window, group_by, limit)
        app.get_customer(customer_id)
        definition = app.meter(meter)
        fresh(request, consistency)
        answer = SeriesReads(services(request).read_models).series(
            customer_id,
            meter,
            start,
            end,
            window,
            group_by,
            moment,
            cursor,
            limit,
        )
        return SeriesOut.of({**answer, "aggregation": definition.aggregation})
