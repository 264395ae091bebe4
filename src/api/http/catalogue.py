"""The catalogue: meters, and the lists of customers, plans and plan versions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.http import responses as r
from api.http.auth import requires
from api.http.common import READ, READ_ONE, SECURITY, Cursor, Limit, services
from api.http.errors import error_responses
from billing_domain import bounds as b
from billing_domain.errors import InvalidInput
from billing_domain.identity import Principal
from billing_domain.meter import MeterDefinition
from billing_domain.usage import iso, period_of

_READERS = requires("admin", "finance")
_REGISTER = error_responses(400, 401, 403, 409, 413, 422, 429, 503)


def _bounded(check: Any, **options: Any) -> Any:
    def validate(value: Any, info: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value, info.field_name, **options)
        except InvalidInput as error:
            raise ValueError(error.reason) from None

    return validate


class MeterIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"meter": "api_calls", "name": "API calls", "aggregation": "sum", "unit": "call"}
            ]
        },
    )
    meter: str = Field(min_length=1, max_length=b.MAX_ID_LENGTH)
    name: str = Field(min_length=1, max_length=b.MAX_NAME_LENGTH)
    aggregation: Literal["sum", "count", "max", "unique_count", "latest"]
    field: str | None = Field(
        default=None,
        max_length=b.MAX_PROPERTY_KEY_LENGTH,
        description="the property a dialect reads the quantity from; unique_count counts it",
    )
    unit: str | None = Field(default=None, max_length=b.MAX_UNIT_LENGTH)

    _meter = field_validator("meter")(_bounded(b.check_id))
    _name = field_validator("name")(_bounded(b.check_text))
    _field = field_validator("field")(_bounded(b.check_id, max_length=b.MAX_PROPERTY_KEY_LENGTH))
    _unit = field_validator("unit")(_bounded(b.check_text, max_length=b.MAX_UNIT_LENGTH))


class MeterOut(r.Out):
    meter: str
    name: str
    aggregation: Literal["sum", "count", "max", "unique_count", "latest"]
    field: str | None
    unit: str | None
    registered_by: str = Field(description="`api`, or `plan:<plan_id>` for a plan's charge")

    @classmethod
    def of_definition(cls, meter: MeterDefinition) -> MeterOut:
        return cls.of(meter.to_dict())


class MeterList(r.Page):
    items: list[MeterOut]


class CustomerSummary(r.Out):
    customer_id: str
    name: str
    currency: str
    plan_id: str | None = Field(description="the plan in force this period")
    plan_version: int | None
    merged_into: str | None
    opened_at: r.TimeText


class CustomerList(r.Page):
    items: list[CustomerSummary]


class PlanSummary(r.Out):
    plan_id: str
    versions: int = Field(description="how many versions were published")
    latest_version: int
    currency: str = Field(description="of the latest version")
    meters: list[str] = Field(description="the meters the latest version charges")


class PlanList(r.Page):
    items: list[PlanSummary]


class PlanVersionList(r.Page):
    plan_id: str
    items: list[r.PlanVersionOut]


def customer_summary(customer: Any, period: str) -> dict[str, Any]:
    """A listed customer: who, its currency and the plan in force for `period`."""
    in_force = customer.plan_for(period)
    return {
        "customer_id": customer.customer_id,
        "name": customer.name,
        "currency": customer.currency,
        "plan_id": in_force[0] if in_force else None,
        "plan_version": in_force[1] if in_force else None,
        "merged_into": customer.merged_into,
        "opened_at": iso(customer.created_on),
    }


def plan_summary(plan: Any) -> dict[str, Any]:
    """A listed plan: how many versions, and the latest one's currency and meters."""
    latest = plan.versions[-1]
    return {
        "plan_id": plan.plan_id,
        "versions": len(plan.versions),
        "latest_version": latest["version"],
        "currency": latest["currency"],
        "meters": [c["meter"] for c in latest["charges"]],
    }


class MeterController(Controller):
    path = "/v1/meters"
    tags = ["meters"]  # noqa: RUF012
    security = SECURITY

    @post(
        "/",
        sync_to_thread=True,
        guards=[requires("admin")],
        responses={
            200: ResponseSpec(
                data_container=MeterOut,
                description="registered before with the same aggregation and field: the "
                "meter as recorded",
                generate_examples=False,
            ),
            **_REGISTER,
        },
        summary="Register a meter (again with the same definition: 200)",
        status_code=201,
    )
    def register_meter(
        self, request: Request[Any, Any, Any], data: MeterIn, caller: Principal
    ) -> Response[MeterOut]:
        """201 when registered; 200 with the meter as recorded when the same aggregation and
        field were registered before; 409 naming `aggregation` or `field` when they differ."""
        meter, created = services(request).app.register_meter(
            data.meter, data.name, data.aggregation, data.field, data.unit, caller
        )
        return Response(MeterOut.of_definition(meter), status_code=201 if created else 200)

    @get(
        "/",
        sync_to_thread=True,
        guards=[_READERS],
        responses=READ,
        summary="Registered meters, by id",
    )
    def list_meters(
        self,
        request: Request[Any, Any, Any],
        caller: Principal,
        cursor: Annotated[str | None, Cursor] = None,
        limit: Annotated[int, Limit] = 100,
    ) -> MeterList:
        """`{items, next_cursor}`; meters registered by a plan's charges included."""
        if cursor is not None:
            b.check_id(cursor, "cursor")
        found = services(request).app.meters(after=cursor, limit=limit + 1)
        more = len(found) > limit
        items = found[:limit]
        return MeterList(
            items=[MeterOut.of_definition(m) for m in items],
            next_cursor=items[-1].meter if more else None,
        )

    @get(
        "/{meter:str}",
        sync_to_thread=True,
        guards=[_READERS],
        responses=READ_ONE,
        summary="A meter",
    )
    def get_meter(self, request: Request[Any, Any, Any], meter: str, caller: Principal) -> MeterOut:
        """404 for a meter never registered."""
        return MeterOut.of_definition(services(request).app.meter(meter))


@get(
    "/v1/customers",
    guards=[_READERS],
    security=SECURITY,
    sync_to_thread=True,
    responses=READ,
    summary="Customers, in the order they were opened",
    tags=["customers"],
)
def list_customers(
    request: Request[Any, Any, Any],
    caller: Principal,
    q: Annotated[
        str | None, Parameter(description="a part of the customer id or name, any case")
    ] = None,
    plan_id: Annotated[
        str | None, Parameter(description="customers on this plan this period")
    ] = None,
    cursor: Annotated[str | None, Cursor] = None,
    limit: Annotated[int, Limit] = 100,
) -> CustomerList:
    """`{items, next_cursor}`, read from the log."""
    app = services(request).app
    page = app.list_customers(q=q, plan_id=plan_id, cursor=cursor, limit=limit)
    current = period_of(app.clock())
    items = [CustomerSummary.of(customer_summary(c, current)) for c in page.items]
    return CustomerList(items=items, next_cursor=page.next_cursor)


@get(
    "/v1/plans",
    guards=[_READERS],
    security=SECURITY,
    sync_to_thread=True,
    responses=READ,
    summary="Plans, in the order they were first published",
    tags=["plans"],
)
def list_plans(
    request: Request[Any, Any, Any],
    caller: Principal,
    cursor: Annotated[str | None, Cursor] = None,
    limit: Annotated[int, Limit] = 100,
) -> PlanList:
    """`{items, next_cursor}`, each plan with its latest version's currency and meters."""
    page = services(request).app.list_plans(cursor=cursor, limit=limit)
    items = [PlanSummary.of(plan_summary(p)) for p in page.items]
    return PlanList(items=items, next_cursor=page.next_cursor)


@get(
    "/v1/plans/{plan_id:str}/versions",
    guards=[_READERS],
    security=SECURITY,
    sync_to_thread=True,
    responses=READ_ONE,
    summary="A plan's published versions, in order",
    tags=["plans"],
)
def plan_versions(
    request: Request[Any, Any, Any],
    plan_id: str,
    caller: Principal,
    cursor: Annotated[str | None, Cursor] = None,
    limit: Annotated[int, Limit] = 100,
) -> PlanVersionList:
    """`{plan_id, items, next_cursor}`; 404 for an unknown plan."""
    page = services(request).app.plan_versions(plan_id, cursor=cursor, limit=limit)
    return PlanVersionList(
        plan_id=plan_id,
        items=[r.PlanVersionOut.of(v) for v in page.items],
        next_cursor=page.next_cursor,
    )


# Registered after the customer and plan controllers: GET shares their paths (litestar merges
# a function handler into a controller's route registered before it).
CATALOGUE_ROUTES = (MeterController, list_customers, list_plans, plan_versions)
