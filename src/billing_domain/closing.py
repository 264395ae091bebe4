"""Closing periods and reading invoices, issued or draft."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from billing_domain.catalogue import CustomerLookup
from billing_domain.core import (
    check_identifier,
    check_period,
)
from billing_domain.customer import Customer
from billing_domain.errors import (
    PeriodNotEnded,
)
from billing_domain.identity import (
    SYSTEM,
    Principal,
)
from billing_domain.ids import period_uuid
from billing_domain.invoicing import draft_view, issued_view
from billing_domain.period import BillingPeriod
from billing_domain.usage import (
    iso,
    next_period,
    period_bounds,
)


class PeriodCommands(CustomerLookup):
    def close_period(
        self, customer_id: str, period: str, principal: Principal = SYSTEM
    ) -> dict[str, Any]:
        """Finalise a period and issue its invoice (revision 1); closing twice changes nothing."""
        self._customer_in_path(customer_id)
        check_period(period)
        now = self.clock()
        if period_bounds(period)[1] > now:
            raise PeriodNotEnded(f"period {period} has not ended yet")

        def attempt() -> dict[str, Any]:
            customer = self._customer_in_path(customer_id)
            pending: dict[UUID, Aggregate] = {}
            aggregate = self._period_for_write(customer_id, period, pending)
            subscribed = customer.plan_for(period)
            charges = [c.to_dict() for c in self._plan_charges(*subscribed)] if subscribed else []
            if aggregate.close(
                plan_id=subscribed[0] if subscribed else "",
                plan_version=subscribed[1] if subscribed else 0,
                currency=customer.currency,
                charges=charges,
                actor=principal.actor,
                closed_at=now,
            ):
                self.save(aggregate)
            return self.invoice(customer_id, period)

        return self._retry(attempt)

    def close_periods(
        self, customer_ids: Iterable[str], before: str, principal: Principal = SYSTEM
    ) -> list[dict[str, Any]]:
        """Close every ended period before `before` that has usage and is still open."""
        closed = []
        for customer_id in customer_ids:
            customer = self._customer(customer_id)
            starts = [s["effective_from"] for s in customer.subscriptions]
            if not starts:
                continue
            period = min(starts)
            while period < before:
                existing = self._find(period_uuid(customer_id, period), BillingPeriod)
                if existing is None or not existing.is_closed:
                    closed.append(self.close_period(customer_id, period, principal))
                period = next_period(period)
        return closed

    def customer_ids(self) -> list[str]:
        """Every customer id, in the order the accounts were opened (read from the log)."""
        topic = f"{Customer.Opened.__module__}:{Customer.Opened.__qualname__}"
        ids: list[str] = []
        start = 1
        while True:
            page = self.recorder.select_notifications(start, 500, topics=[topic])
            ids += [
                self.mapper.to_domain_event(n).customer_id  # type: ignore[attr-defined]
                for n in page
            ]
            if len(page) < 500:
                return ids
            start = page[-1].id + 1

    def billing_period(self, customer_id: str, period: str) -> BillingPeriod | None:
        return self._find(
            period_uuid(check_identifier(customer_id, "customer_id"), check_period(period)),
            BillingPeriod,
        )

    def invoice(self, customer_id: str, period: str, revision: int | None = None) -> dict[str, Any]:
        """An issued revision (the latest by default), or the draft of an open period."""
        customer = self._customer_in_path(customer_id)
        aggregate = self.billing_period(customer_id, period)
        if aggregate is not None and aggregate.revisions:
            number = revision or aggregate.revision
            issued = aggregate.revisions[number - 1]
            status = "issued" if number == aggregate.revision else "superseded"
            return issued_view(
                customer_id, period, issued, status=status, issued_at=iso(issued["issued_at"])
            )
        subscribed = customer.plan_for(period)
        charges = [c.to_dict() for c in self._plan_charges(*subscribed)] if subscribed else []
        if aggregate is None:
            aggregate = BillingPeriod(customer_id=customer_id, period=period)
        lines = aggregate.lines(charges, customer.currency)
        return draft_view(
            customer_id, period, customer.currency, lines, aggregate.lineage_digest, subscribed
        )
