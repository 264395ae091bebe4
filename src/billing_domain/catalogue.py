"""Customers, plans, subscriptions and merges."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eventsourcing.persistence import IntegrityError

from billing_domain.core import (
    ApplicationCore,
    check_identifier,
    period_start,
)
from billing_domain.customer import LATE_USAGE_POLICIES, Customer
from billing_domain.errors import (
    CustomerExists,
    CustomerMerged,
    CustomerNotFound,
    InvalidInput,
    PlanNotFound,
    UnknownCustomer,
    UnknownPlan,
)
from billing_domain.identity import (
    SYSTEM,
    Principal,
)
from billing_domain.ids import (
    customer_uuid,
    period_uuid,
    plan_uuid,
)
from billing_domain.meters import MeterCommands
from billing_domain.period import BillingPeriod
from billing_domain.plan import Plan
from billing_domain.pricing import check_currency, parse_charges
from billing_domain.usage import (
    iso,
)


class CustomerLookup(ApplicationCore):
    def _customer_in_path(self, customer_id: str) -> Customer:
        """The customer a request's path names; unknown is not found, not bad input."""
        customer = self._find(customer_uuid(customer_id), Customer)
        if customer is None:
            raise CustomerNotFound(f"no customer {customer_id!r}")
        return customer


class CatalogueCommands(MeterCommands, CustomerLookup):
    def open_customer(
        self,
        customer_id: str,
        name: str,
        currency: str = "USD",
        late_usage_policy: str = "carry_forward",
        principal: Principal = SYSTEM,
    ) -> Customer:
        """Open a customer account under the caller's stable id."""
        check_identifier(customer_id, "customer_id")
        check_identifier(name, "name")
        check_currency(currency)
        if late_usage_policy not in LATE_USAGE_POLICIES:
            raise InvalidInput(
                f"must be one of {', '.join(LATE_USAGE_POLICIES)}", field="late_usage_policy"
            )
        if self._find(customer_uuid(customer_id), Customer) is not None:
            raise CustomerExists(f"customer {customer_id!r} already exists")
        customer = Customer(
            customer_id=customer_id,
            name=name,
            currency=currency,
            late_usage_policy=late_usage_policy,
            actor=principal.actor,
        )
        try:
            self.save(customer)
        except IntegrityError:
            raise CustomerExists(f"customer {customer_id!r} already exists") from None
        return customer

    def update_customer(
        self,
        customer_id: str,
        *,
        name: str | None = None,
        late_usage_policy: str | None = None,
        principal: Principal = SYSTEM,
    ) -> Customer:
        """Rename a customer or change its late-usage policy; attribution never changes."""
        if name is not None:
            check_identifier(name, "name")
        if late_usage_policy is not None and late_usage_policy not in LATE_USAGE_POLICIES:
            raise InvalidInput(
                f"must be one of {', '.join(LATE_USAGE_POLICIES)}", field="late_usage_policy"
            )

        def attempt() -> Customer:
            customer = self._customer_in_path(customer_id)
            if name is not None and name != customer.name:
                customer.rename(name, principal.actor)
            if late_usage_policy is not None and late_usage_policy != customer.late_usage_policy:
                customer.change_late_usage_policy(late_usage_policy, principal.actor)
            self.save(customer)
            return customer

        return self._retry(attempt)

    def get_customer(self, customer_id: str) -> Customer:
        """A customer account; unknown is not found."""
        return self._customer_in_path(customer_id)

    def publish_plan(
        self,
        plan_id: str,
        currency: str,
        charges: list[dict[str, Any]],
        principal: Principal = SYSTEM,
    ) -> tuple[str, int]:
        """Publish a plan's next version; existing subscriptions keep theirs."""
        check_identifier(plan_id, "plan_id")
        check_currency(currency)
        charges = self._charges_with_meters(charges)
        normalised = [c.to_dict() for c in parse_charges(charges, strict=True)]

        def attempt() -> tuple[str, int]:
            meters = self._meters_of_charges(plan_id, normalised, principal)
            plan = self._find(plan_uuid(plan_id), Plan) or Plan(plan_id=plan_id)
            version = plan.publish_next(currency, normalised, principal.actor)
            try:
                self.save(plan, *meters)
            except IntegrityError:
                self.meter_registry.refresh()
                raise
            return plan_id, version

        return self._retry(attempt)

    def get_plan(self, plan_id: str) -> Plan:
        """A plan with every published version; unknown is not found."""
        plan = self._find(plan_uuid(plan_id), Plan)
        if plan is None:
            raise PlanNotFound(f"no plan {plan_id!r}")
        return plan

    def subscribe(
        self,
        customer_id: str,
        plan_id: str,
        effective_from: str,
        principal: Principal = SYSTEM,
        plan_version: int | None = None,
    ) -> dict[str, Any]:
        """Subscribe a customer to a plan version from a period start (a migration is an event)."""
        self._customer_in_path(customer_id)
        effective_from = period_start(effective_from, "effective_from")
        plan = self._find(plan_uuid(plan_id), Plan)
        if plan is None:
            raise UnknownPlan(f"no plan {plan_id!r}")
        version = plan_version or len(plan.versions)
        if not 1 <= version <= len(plan.versions):
            raise UnknownPlan(f"plan {plan_id!r} has no version {version}", field="plan_version")

        def attempt() -> dict[str, Any]:
            customer = self._customer_in_path(customer_id)
            if plan.version_data(version)["currency"] != customer.currency:
                raise InvalidInput(
                    f"plan {plan_id!r} is priced in {plan.version_data(version)['currency']}, "
                    f"customer {customer_id!r} is billed in {customer.currency}",
                    field="plan_id",
                )
            closed = self._find(period_uuid(customer_id, effective_from), BillingPeriod)
            if closed is not None and closed.is_closed:
                raise InvalidInput(
                    f"period {effective_from} is already closed; "
                    "a subscription cannot change an issued invoice",
                    field="effective_from",
                )
            customer.subscribe(plan_id, version, effective_from, principal.actor)
            self.save(customer)
            return {
                "customer_id": customer_id,
                "plan_id": plan_id,
                "plan_version": version,
                "effective_from": effective_from,
            }

        return self._retry(attempt)

    def merge_customer(
        self, customer_id: str, into: str, effective_at: datetime, principal: Principal = SYSTEM
    ) -> dict[str, Any]:
        """Bill a customer's usage from an instant onwards to another customer."""
        self._customer_in_path(customer_id)
        if not isinstance(effective_at, datetime) or effective_at.tzinfo is None:
            raise InvalidInput("must be an RFC 3339 time with a UTC offset", field="effective_at")
        if into == customer_id:
            raise InvalidInput("a customer cannot be merged into itself", field="into")

        def attempt() -> dict[str, Any]:
            customer = self._customer_in_path(customer_id)
            target = self._find(customer_uuid(into), Customer)
            if target is None:
                raise UnknownCustomer(f"no customer {into!r}", field="into")
            if customer.merged_into is not None:
                raise CustomerMerged(
                    f"customer {customer_id!r} was already merged into {customer.merged_into!r}"
                )
            if target.merged_into is not None:
                raise CustomerMerged(
                    f"customer {into!r} was merged into {target.merged_into!r}", field="into"
                )
            if target.currency != customer.currency:
                raise InvalidInput(
                    "both customers must be billed in the same currency", field="into"
                )
            customer.merge_into(into, effective_at, principal.actor)
            self.save(customer)
            return {"customer_id": customer_id, "into": into, "effective_at": iso(effective_at)}

        return self._retry(attempt)
