"""Customers, plans and subscriptions."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, patch, post, put

from api.http import responses as r
from api.http import schemas as s
from api.http.auth import requires
from api.http.common import READ_ONE, SECURITY, WRITE, WRITE_ON, services
from billing_domain.identity import Principal
from billing_domain.usage import iso


def _customer(customer: Any) -> r.CustomerOut:
    return r.CustomerOut(
        customer_id=customer.customer_id,
        name=customer.name,
        currency=customer.currency,
        late_usage_policy=customer.late_usage_policy,
        subscriptions=[r.Subscription.of(x) for x in customer.subscriptions],
        merged_into=customer.merged_into,
        merged_at=iso(customer.merged_at) if customer.merged_at else None,
        external_ids=[r.ExternalIdOut(**x) for x in getattr(customer, "external_ids", [])],
    )


class CustomerController(Controller):
    path = "/v1/customers"
    tags = ["customers"]  # noqa: RUF012
    security = SECURITY

    @post(
        "/",
        status_code=201,
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE,
        summary="Open a customer account",
    )
    def open_customer(
        self, request: Request[Any, Any, Any], data: s.CustomerIn, caller: Principal
    ) -> r.CustomerOut:
        """409 when the customer_id exists."""
        return _customer(
            services(request).app.open_customer(
                data.customer_id, data.name, data.currency, data.late_usage_policy, caller
            )
        )

    @patch(
        "/{customer_id:str}",
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE_ON,
        summary="Rename or change the late-usage policy",
    )
    def update_customer(
        self,
        request: Request[Any, Any, Any],
        customer_id: str,
        data: s.CustomerPatch,
        caller: Principal,
    ) -> r.CustomerOut:
        """Attribution never changes: usage stays on the customer_id."""
        return _customer(
            services(request).app.update_customer(
                customer_id,
                name=data.name,
                late_usage_policy=data.late_usage_policy,
                principal=caller,
            )
        )

    @get(
        "/{customer_id:str}",
        sync_to_thread=True,
        guards=[requires("admin", "finance")],
        responses=READ_ONE,
        summary="A customer account",
    )
    def get_customer(
        self, request: Request[Any, Any, Any], customer_id: str, caller: Principal
    ) -> r.CustomerOut:
        """The account with its subscriptions and merge."""
        return _customer(services(request).app.get_customer(customer_id))

    @post(
        "/{customer_id:str}/external_ids",
        status_code=201,
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE_ON,
        summary="Let another billing system's id name this customer",
    )
    def add_external_id(
        self,
        request: Request[Any, Any, Any],
        customer_id: str,
        data: s.ExternalIdIn,
        caller: Principal,
    ) -> r.CustomerOut:
        """201 with the customer; the same id again changes nothing; 409 when another customer
        holds it."""
        customer, _ = services(request).app.add_external_id(
            customer_id, data.system, data.id, caller
        )
        return _customer(customer)

    @put(
        "/{customer_id:str}/subscription",
        status_code=200,
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE_ON,
        summary="Subscribe or migrate to a plan",
    )
    def subscribe(
        self,
        request: Request[Any, Any, Any],
        customer_id: str,
        data: s.SubscriptionIn,
        caller: Principal,
    ) -> r.SubscriptionOut:
        """From a period start; a migration is an event and never re-attributes usage."""
        return r.SubscriptionOut.of(
            services(request).app.subscribe(
                customer_id,
                data.plan_id,
                data.effective_from,
                caller,
                plan_version=data.plan_version,
            )
        )

    @post(
        "/{customer_id:str}/merge",
        status_code=200,
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE_ON,
        summary="Merge a customer into another",
    )
    def merge(
        self, request: Request[Any, Any, Any], customer_id: str, data: s.MergeIn, caller: Principal
    ) -> r.MergeOut:
        """Usage at or after effective_at is billed to `into`; both ids stay on every record."""
        return r.MergeOut.of(
            services(request).app.merge_customer(customer_id, data.into, data.effective_at, caller)
        )


class PlanController(Controller):
    path = "/v1/plans"
    tags = ["plans"]  # noqa: RUF012
    security = SECURITY

    @post(
        "/",
        status_code=201,
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE,
        summary="Publish a plan (again: a new version)",
    )
    def publish_plan(
        self, request: Request[Any, Any, Any], data: s.PlanIn, caller: Principal
    ) -> r.PublishedPlanOut:
        """Existing subscriptions keep the version they were given."""
        app = services(request).app
        plan_id, version = app.publish_plan(data.plan_id, data.currency, data.charges, caller)
        published = app.get_plan(plan_id).version_data(version)
        return r.PublishedPlanOut.of({"plan_id": plan_id, "version": version, **published})

    @get(
        "/{plan_id:str}",
        sync_to_thread=True,
        guards=[requires("admin", "finance")],
        responses=READ_ONE,
        summary="A plan with every published version",
    )
    def get_plan(
        self, request: Request[Any, Any, Any], plan_id: str, caller: Principal
    ) -> r.PlanOut:
        """Versions in publication order."""
        plan = services(request).app.get_plan(plan_id)
        return r.PlanOut.of({"plan_id": plan.plan_id, "versions": plan.versions})
