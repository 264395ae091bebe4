"""Plans: immutable published versions of a list of charges."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from billing_domain.ids import plan_uuid
from billing_domain.pricing import Charge, parse_charges


class Plan(Aggregate):
    class Created(Aggregate.Created):
        plan_id: str

    @staticmethod
    def create_id(plan_id: str, **_: Any) -> UUID:
        return plan_uuid(plan_id)

    @event(Created)
    def __init__(self, plan_id: str) -> None:
        self.plan_id = plan_id
        self.versions: list[dict[str, Any]] = []

    @event("VersionPublished")
    def publish(
        self, version: int, currency: str, charges: list[dict[str, Any]], actor: str
    ) -> None:
        self.versions.append({"version": version, "currency": currency, "charges": charges})

    def publish_next(self, currency: str, charges: list[dict[str, Any]], actor: str) -> int:
        version = len(self.versions) + 1
        self.publish(version, currency, charges, actor)
        return version

    def version_data(self, number: int) -> dict[str, Any]:
        return self.versions[number - 1]

    def charges(self, number: int) -> tuple[Charge, ...]:
        return parse_charges(self.version_data(number)["charges"])
