"""External ids: the ids other billing systems (Stripe, Lago, OpenMeter) know a customer by.

An id is reserved by an aggregate whose id derives from (system, id), saved in the same
transaction as the customer's event: the store refuses a second reservation, so two customers
never hold one external id, even when two requests race.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from billing_domain.bounds import check_id
from billing_domain.catalogue import CustomerLookup
from billing_domain.customer import Customer
from billing_domain.errors import ExternalIdTaken, InvalidInput
from billing_domain.identity import SYSTEM, Principal
from billing_domain.ids import external_id_uuid

EXTERNAL_SYSTEMS = ("stripe", "lago", "openmeter")


class ExternalId(Aggregate):
    class Reserved(Aggregate.Created):
        system: str
        external_id: str
        customer_id: str
        actor: str

    @staticmethod
    def create_id(system: str, external_id: str, **_: Any) -> UUID:
        return external_id_uuid(system, external_id)

    @event(Reserved)
    def __init__(self, system: str, external_id: str, customer_id: str, actor: str) -> None:
        self.system = system
        self.external_id = external_id
        self.customer_id = customer_id


def check_system(system: Any) -> str:
    if system not in EXTERNAL_SYSTEMS:
        raise InvalidInput(f"must be one of {', '.join(EXTERNAL_SYSTEMS)}", field="system")
    return str(system)


class ExternalIdCommands(CustomerLookup):
    def add_external_id(
        self, customer_id: str, system: str, external_id: str, principal: Principal = SYSTEM
    ) -> tuple[Customer, bool]:
        """Let another system's id name a customer; the same pair again changes nothing
        (False), an id another customer holds is a conflict."""
        check_system(system)
        check_id(external_id, "id")

        def attempt() -> tuple[Customer, bool]:
            customer = self._customer_in_path(customer_id)
            held = self._find(external_id_uuid(system, external_id), ExternalId)
            if held is not None:
                if held.customer_id == customer_id:
                    return customer, False
                raise ExternalIdTaken(
                    f"{system} id {external_id!r} is held by customer {held.customer_id!r}"
                )
            customer.add_external_id(system, external_id, principal.actor)
            reservation = ExternalId(
                system=system,
                external_id=external_id,
                customer_id=customer_id,
                actor=principal.actor,
            )
            self.save(customer, reservation)
            return customer, True

        return self._retry(attempt)

    def resolve_customer(self, system: str, reference: str) -> str:
        """The customer another system's id names: the one it is mapped to, else the
        reference itself as a customer_id (ingest then checks the grant before refusing an
        unknown customer, so a caller without one learns nothing of who is a customer)."""
        if not isinstance(reference, str) or not reference:
            return reference
        held = self._find(external_id_uuid(system, reference), ExternalId)
        return held.customer_id if held is not None else reference
