"""The customer account: identity, late-usage policy, subscriptions and merges."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from billing_domain.ids import customer_uuid
from billing_domain.invoicing import plan_in_force
from billing_domain.reducer import LatePolicy

LATE_USAGE_POLICIES = tuple(LatePolicy)


class Customer(Aggregate):
    class Opened(Aggregate.Created):
        class_version = 2
        customer_id: str
        name: str
        currency: str
        late_usage_policy: str
        actor: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 had no late-usage policy: those accounts carried late usage forward."""
            state["late_usage_policy"] = LatePolicy.CARRY_FORWARD.value

    @staticmethod
    def create_id(customer_id: str, **_: Any) -> UUID:
        return customer_uuid(customer_id)

    @event(Opened)
    def __init__(
        self, customer_id: str, name: str, currency: str, late_usage_policy: str, actor: str
    ) -> None:
        self.customer_id = customer_id
        self.name = name
        self.currency = currency
        self.late_usage_policy = late_usage_policy
        self.subscriptions: list[dict[str, Any]] = []
        self.merged_into: str | None = None
        self.merged_at: datetime | None = None
        self.external_ids: list[dict[str, str]] = []

    @event("Renamed")
    def rename(self, name: str, actor: str) -> None:
        self.name = name

    @event("LateUsagePolicyChanged")
    def change_late_usage_policy(self, late_usage_policy: str, actor: str) -> None:
        self.late_usage_policy = late_usage_policy

    @event("Subscribed")
    def subscribe(self, plan_id: str, plan_version: int, effective_from: str, actor: str) -> None:
        self.subscriptions.append(
            {"plan_id": plan_id, "plan_version": plan_version, "effective_from": effective_from}
        )

    @event("Merged")
    def merge_into(self, into: str, effective_at: datetime, actor: str) -> None:
        self.merged_into = into
        self.merged_at = effective_at

    @event("ExternalIdAdded")
    def add_external_id(self, system: str, external_id: str, actor: str) -> None:
        # Customers opened before external ids existed gain the list with their first one.
        self.external_ids = [
            *getattr(self, "external_ids", []),
            {"system": system, "id": external_id},
        ]

    def holds_external_id(self, system: str, external_id: str) -> bool:
        return {"system": system, "id": external_id} in getattr(self, "external_ids", [])

    def plan_for(self, period: str) -> tuple[str, int] | None:
        """The plan version in force for a period: the latest subscription starting by then."""
        return plan_in_force(self.subscriptions, period)

    def billed_to(self, occurred_at: datetime) -> str | None:
        """The customer that a usage of this account is billed to, if it was merged away."""
        if (
            self.merged_into is not None
            and self.merged_at is not None
            and occurred_at >= self.merged_at
        ):
            return self.merged_into
        return None
