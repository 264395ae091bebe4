"""A customer's billing period (a calendar month, UTC): usage in, invoice revisions out."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from billing_domain.errors import CompensationExceedsUsage
from billing_domain.ids import period_uuid
from billing_domain.invoicing import invoice_lines, total_of
from billing_domain.merkle import MERKLE_SCHEME, SUM_SCHEME, root
from billing_domain.numbers import ZERO
from billing_domain.pricing import parse_charges
from billing_domain.reducer import (
    Treatment,
    add_carried,
    adjustment_delta,
    carried_entries,
    compensation_delta,
    fold,
    grow,
    is_billed,
    late_sources,
    snapshot,
    source_items,
    usage_deltas,
)
from billing_domain.usage import UsageRecord, digest_text, new_totals
from billing_domain.verification import adjustment_hash, compensation_hash, usage_hashes

REVISION_FIELDS = (
    "revision",
    "plan_id",
    "plan_version",
    "currency",
    "charges",
    "lines",
    "total",
    "lineage_digest",
    "lineage_scheme",
    "items",
)


def _shape(
    known: dict[str, dict[str, Any]], meter: str, aggregation: str, field: str | None
) -> tuple[str, str | None]:
    """A meter keeps the aggregation it was first recorded with."""
    totals = known.get(meter)
    return (totals["aggregation"], totals["field"]) if totals else (aggregation, field)


class BillingPeriod(Aggregate):
    # Version 2 keeps the lineage Merkle tree's compact range (`lineage_peaks`).
    class_version = 2

    class Opened(Aggregate.Created):
        customer_id: str
        period: str

    class Closed(Aggregate.Event):
        class_version = 2
        revision: int
        plan_id: str
        plan_version: int
        currency: str
        charges: list[dict[str, Any]]
        lines: list[dict[str, Any]]
        total: str
        lineage_digest: str
        lineage_scheme: str
        items: int
        actor: str
        closed_at: datetime

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 revisions were digested as a sum of item hashes."""
            state["lineage_scheme"] = SUM_SCHEME

    class Restated(Aggregate.Event):
        class_version = 2
        revision: int
        plan_id: str
        plan_version: int
        currency: str
        charges: list[dict[str, Any]]
        lines: list[dict[str, Any]]
        total: str
        lineage_digest: str
        lineage_scheme: str
        items: int
        actor: str
        closed_at: datetime
        reason: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 revisions were digested as a sum of item hashes."""
            state["lineage_scheme"] = SUM_SCHEME

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A snapshot from before the Merkle digest cannot rebuild the tree without its items:
        that period goes on issuing sum-scheme revisions."""
        state["lineage_peaks"] = None

    @staticmethod
    def create_id(customer_id: str, period: str, **_: Any) -> UUID:
        return period_uuid(customer_id, period)

    @event(Opened)
    def __init__(self, customer_id: str, period: str) -> None:
        self.customer_id = customer_id
        self.period = period
        self.status = "open"
        # "billed" is what this period's invoice prices; "known" adds usage carried forward.
        self.billed: dict[str, dict[str, Any]] = {}
        self.known: dict[str, dict[str, Any]] = {}
        self.compensated: dict[str, Decimal] = {}
        self.carried_ids: dict[str, bool] = {}
        self.carried_in: dict[str, dict[str, Any]] = {}
        self.revisions: list[dict[str, Any]] = []
        self.digest_accumulator = 0
        self.items = 0
        self.lineage_peaks: list[str] | None = []

    @property
    def is_closed(self) -> bool:
        return self.status == "closed"

    @property
    def revision(self) -> int:
        return len(self.revisions)

    @property
    def lineage_scheme(self) -> str:
        return SUM_SCHEME if self.lineage_peaks is None else MERKLE_SCHEME

    @property
    def lineage_digest(self) -> str:
        if self.lineage_peaks is None:
            return digest_text(self.digest_accumulator, self.items)
        return root(self.lineage_peaks)

    def _accumulate(self, items: Iterable[int]) -> None:
        # The sum is kept for periods whose snapshot predates the tree (lineage_peaks None).
        self.items, self.digest_accumulator = grow(
            self.lineage_peaks, self.items, self.digest_accumulator, items
        )

    # Usage ------------------------------------------------------------------------------

    @event("UsageRecorded")
    def record_usage(
        self,
        received_at: str,
        emitter: str,
        key_id: str,
        treatment: str,
        meters: dict[str, list[Any]],
        records: list[list[Any]],
    ) -> None:
        """Records [event_id, submitted_customer_id, meter, quantity, occurred_at, properties]."""
        deltas = usage_deltas(records, meters, self.known)
        fold(self.known, deltas)
        if is_billed(treatment):
            fold(self.billed, deltas)
            self._accumulate(usage_hashes(records, received_at, emitter, key_id))
        else:
            for record in records:
                self.carried_ids[UsageRecord._make(record).event_id] = True
        for meter, delta in deltas.items():  # a meter is known to both once recorded
            self.billed.setdefault(meter, new_totals(delta["aggregation"], delta["field"]))

    def record_late_carried(
        self,
        received_at: str,
        emitter: str,
        key_id: str,
        meters: dict[str, list[Any]],
        records: list[list[Any]],
    ) -> list[dict[str, Any]]:
        """Record late usage billed elsewhere; return what it adds to this closed period."""
        before = snapshot(self.known, {r[2] for r in records})
        self.record_usage(received_at, emitter, key_id, Treatment.CARRIED_FORWARD, meters, records)
        sources = late_sources(records, received_at, emitter, key_id)
        return carried_entries(self.period, self.revisions[-1], before, self.known, sources)

    @event("LateUsageCarriedForward")
    def carry_forward(
        self,
        from_period: str,
        meter: str,
        quantity: Decimal,
        amount: Decimal,
        sources: list[list[Any]],
        received_at: str,
    ) -> None:
        add_carried(self.carried_in, from_period, meter, quantity, amount)
        self._accumulate(source_items(sources))

    # Corrections -------------------------------------------------------------------------

    def net_quantity(self, event_id: str, original_quantity: Decimal) -> Decimal:
        return original_quantity - self.compensated.get(event_id, ZERO)

    def compensate(
        self,
        *,
        compensation_id: str,
        event_id: str,
        submitted_customer_id: str,
        meter: str,
        quantity: Decimal,
        original_quantity: Decimal,
        properties: dict[str, Any],
        reason: str,
        actor: str,
        received_at: str,
        treatment: str,
    ) -> list[dict[str, Any]]:
        """Reverse part or all of a recorded usage event; more than is left is refused."""
        remaining = self.net_quantity(event_id, original_quantity)
        if quantity <= 0 or quantity > remaining:
            raise CompensationExceedsUsage(
                f"compensation of {quantity} exceeds the {remaining} left of event {event_id}"
            )
        before = snapshot(self.known, {meter})
        fields = (compensation_id, event_id, submitted_customer_id, meter, quantity)
        self._compensate(
            *fields, original_quantity, properties, reason, actor, received_at, treatment
        )
        if is_billed(treatment):
            return []
        item = compensation_hash(*fields, reason, received_at, actor)
        sources = {meter: [["compensation", compensation_id, f"{item:064x}"]]}
        return carried_entries(self.period, self.revisions[-1], before, self.known, sources)

    @event("UsageCompensated")
    def _compensate(
        self,
        compensation_id: str,
        event_id: str,
        submitted_customer_id: str,
        meter: str,
        quantity: Decimal,
        original_quantity: Decimal,
        properties: dict[str, Any],
        reason: str,
        actor: str,
        received_at: str,
        treatment: str,
    ) -> None:
        net_before = self.net_quantity(event_id, original_quantity)
        delta = {meter: compensation_delta(self.known[meter], quantity, net_before, properties)}
        fold(self.known, delta)
        self.compensated[event_id] = self.compensated.get(event_id, ZERO) + quantity
        if is_billed(treatment) and event_id not in self.carried_ids:
            fold(self.billed, delta)
            self._accumulate(
                [
                    compensation_hash(
                        compensation_id,
                        event_id,
                        submitted_customer_id,
                        meter,
                        quantity,
                        reason,
                        received_at,
                        actor,
                    )
                ]
            )

    def adjust(
        self,
        *,
        adjustment_id: str,
        meter: str,
        quantity: Decimal,
        occurred_at: datetime,
        reason: str,
        actor: str,
        received_at: str,
        treatment: str,
        aggregation: str,
        field: str | None,
    ) -> list[dict[str, Any]]:
        """A manual signed correction of a meter's aggregate."""
        before = snapshot(self.known, {meter})
        self._adjust(
            adjustment_id,
            meter,
            quantity,
            occurred_at,
            reason,
            actor,
            received_at,
            treatment,
            aggregation,
            field,
        )
        if is_billed(treatment):
            return []
        item = adjustment_hash(
            adjustment_id, meter, quantity, occurred_at, reason, received_at, actor
        )
        sources = {meter: [["adjustment", adjustment_id, f"{item:064x}"]]}
        return carried_entries(self.period, self.revisions[-1], before, self.known, sources)

    @event("UsageAdjusted")
    def _adjust(
        self,
        adjustment_id: str,
        meter: str,
        quantity: Decimal,
        occurred_at: datetime,
        reason: str,
        actor: str,
        received_at: str,
        treatment: str,
        aggregation: str,
        field: str | None,
    ) -> None:
        delta = {meter: adjustment_delta(*_shape(self.known, meter, aggregation, field), quantity)}
        fold(self.known, delta)
        self.billed.setdefault(meter, new_totals(*_shape(self.known, meter, aggregation, field)))
        if is_billed(treatment):
            fold(self.billed, delta)
            self._accumulate(
                [
                    adjustment_hash(
                        adjustment_id, meter, quantity, occurred_at, reason, received_at, actor
                    )
                ]
            )

    # Invoices ------------------------------------------------------------------------------

    def lines(self, charges_data: list[dict[str, Any]], currency: str) -> list[dict[str, Any]]:
        charges = parse_charges(charges_data)
        return invoice_lines(self.period, self.billed, charges, self.carried_in.values(), currency)

    def close(
        self,
        *,
        plan_id: str,
        plan_version: int,
        currency: str,
        charges: list[dict[str, Any]],
        actor: str,
        closed_at: datetime,
    ) -> bool:
        """Finalise the period and issue revision 1; closing a closed period changes nothing."""
        if self.is_closed:
            return False
        lines = self.lines(charges, currency)
        self._close(
            1,
            plan_id,
            plan_version,
            currency,
            charges,
            lines,
            total_of(lines),
            self.lineage_digest,
            self.lineage_scheme,
            self.items,
            actor,
            closed_at,
        )
        return True

    @event(Closed)
    def _close(
        self,
        revision: int,
        plan_id: str,
        plan_version: int,
        currency: str,
        charges: list[dict[str, Any]],
        lines: list[dict[str, Any]],
        total: str,
        lineage_digest: str,
        lineage_scheme: str,
        items: int,
        actor: str,
        closed_at: datetime,
    ) -> None:
        self.status = "closed"
        self._issued(locals())

    def restate(self, *, actor: str, restated_at: datetime, reason: str) -> None:
        """Issue the next revision, pricing the whole period again under its issued plan."""
        issued = self.revisions[-1]
        lines = self.lines(issued["charges"], issued["currency"])
        self._restate(
            self.revision + 1,
            issued["plan_id"],
            issued["plan_version"],
            issued["currency"],
            issued["charges"],
            lines,
            total_of(lines),
            self.lineage_digest,
            self.lineage_scheme,
            self.items,
            actor,
            restated_at,
            reason,
        )

    @event(Restated)
    def _restate(
        self,
        revision: int,
        plan_id: str,
        plan_version: int,
        currency: str,
        charges: list[dict[str, Any]],
        lines: list[dict[str, Any]],
        total: str,
        lineage_digest: str,
        lineage_scheme: str,
        items: int,
        actor: str,
        closed_at: datetime,
        reason: str,
    ) -> None:
        self._issued(locals())

    def _issued(self, fields: dict[str, Any]) -> None:
        revision = {name: fields[name] for name in REVISION_FIELDS}
        revision["issued_at"] = fields["closed_at"]
        self.revisions.append(revision)
