"""A customer's billing period (a calendar month, UTC): usage in, invoice revisions out."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from billing_domain.errors import CompensationExceedsUsage
from billing_domain.ids import period_uuid
from billing_domain.invoicing import carried_lines, charge_amount, total_of, usage_lines
from billing_domain.merkle import MERKLE_SCHEME, SUM_SCHEME, append, root
from billing_domain.pricing import parse_charges
from billing_domain.usage import (
    ZERO,
    add_record,
    aggregate_quantity,
    compensate_record,
    copy_totals,
    digest_text,
    new_totals,
    tracked_value,
)
from billing_domain.verification import (
    adjustment_hash,
    compensation_hash,
    usage_hash,
    usage_hashes,
)

CARRIED_FORWARD = "carried_forward"


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
        self.record_count = 0

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

    def _accumulate(self, value: int) -> None:
        # The sum is kept for periods whose snapshot predates the tree (lineage_peaks None).
        self.digest_accumulator = (self.digest_accumulator + value) % (1 << 256)
        if self.lineage_peaks is not None:
            append(self.lineage_peaks, self.items, value)
        self.items += 1

    def _ensure_meter(self, meter: str, aggregation: str, field: str | None) -> None:
        if meter not in self.known:
            self.known[meter] = new_totals(aggregation, field)
            self.billed[meter] = new_totals(aggregation, field)

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
        billed = treatment != CARRIED_FORWARD
        hashes = usage_hashes(records, received_at, emitter, key_id) if billed else None
        for record in records:
            event_id, _submitted, meter, quantity_text, _occurred, properties = record
            quantity = Decimal(quantity_text)
            self._ensure_meter(meter, *meters[meter])
            value = tracked_value(self.known[meter], quantity, properties)
            add_record(self.known[meter], quantity, value)
            if billed:
                add_record(self.billed[meter], quantity, value)
                self._accumulate(next(hashes))  # type: ignore[arg-type]
            else:
                self.carried_ids[event_id] = True
        self.record_count += len(records)

    def record_late_carried(
        self,
        received_at: str,
        emitter: str,
        key_id: str,
        meters: dict[str, list[Any]],
        records: list[list[Any]],
    ) -> list[dict[str, Any]]:
        """Record late usage billed elsewhere; return what it adds to this closed period."""
        before = self._known_snapshot({r[2] for r in records})
        self.record_usage(received_at, emitter, key_id, CARRIED_FORWARD, meters, records)
        sources: dict[str, list[list[Any]]] = {}
        for record in records:
            sources.setdefault(record[2], []).append(
                ["usage", record[0], f"{usage_hash(record, received_at, emitter, key_id):064x}"]
            )
        return self._marginal(before, sources)

    def _known_snapshot(self, meters: set[str]) -> dict[str, dict[str, Any]]:
        return {m: copy_totals(self.known[m]) for m in meters if m in self.known}

    def _marginal(
        self, before: dict[str, dict[str, Any]], sources: dict[str, list[list[Any]]]
    ) -> list[dict[str, Any]]:
        """What the change made to the issued charge: price with it minus price without it."""
        issued = self.revisions[-1]
        charges = {c.meter: c for c in parse_charges(issued["charges"])}
        entries = []
        for meter in sorted(sources):
            after = self.known[meter]
            prior = before.get(meter) or new_totals(after["aggregation"], after["field"])
            charge = charges.get(meter)
            amount = ZERO
            if charge is not None:
                amount = charge_amount(charge, after, issued["currency"]) - charge_amount(
                    charge, prior, issued["currency"]
                )
            entries.append(
                {
                    "from_period": self.period,
                    "meter": meter,
                    "quantity": aggregate_quantity(after) - aggregate_quantity(prior),
                    "amount": amount,
                    "sources": sources[meter],
                }
            )
        return entries

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
        entry = self.carried_in.setdefault(
            f"{from_period}|{meter}",
            {"from_period": from_period, "meter": meter, "quantity": ZERO, "amount": ZERO},
        )
        entry["quantity"] += quantity
        entry["amount"] += amount
        for _kind, _ident, hex_hash in sources:
            self._accumulate(int(hex_hash, 16))

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
        before = self._known_snapshot({meter})
        self._compensate(
            compensation_id,
            event_id,
            submitted_customer_id,
            meter,
            quantity,
            original_quantity,
            properties,
            reason,
            actor,
            received_at,
            treatment,
        )
        if treatment != CARRIED_FORWARD:
            return []
        item = compensation_hash(
            compensation_id,
            event_id,
            submitted_customer_id,
            meter,
            quantity,
            reason,
            received_at,
            actor,
        )
        source = ["compensation", compensation_id, f"{item:064x}"]
        return self._marginal(before, {meter: [source]})

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
        targets = [self.known[meter]]
        in_billed = treatment != CARRIED_FORWARD and event_id not in self.carried_ids
        if in_billed:
            targets.append(self.billed[meter])
        for totals in targets:
            compensate_record(
                totals,
                quantity,
                net_before=net_before,
                value_before=tracked_value(totals, net_before, properties),
                value_after=tracked_value(totals, net_before - quantity, properties),
            )
        self.compensated[event_id] = self.compensated.get(event_id, ZERO) + quantity
        if in_billed:
            self._accumulate(
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
        before = self._known_snapshot({meter})
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
        if treatment != CARRIED_FORWARD:
            return []
        item = adjustment_hash(
            adjustment_id, meter, quantity, occurred_at, reason, received_at, actor
        )
        source = ["adjustment", adjustment_id, f"{item:064x}"]
        return self._marginal(before, {meter: [source]})

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
        self._ensure_meter(meter, aggregation, field)
        self.known[meter]["adjustment"] += quantity
        if treatment != CARRIED_FORWARD:
            self.billed[meter]["adjustment"] += quantity
            self._accumulate(
                adjustment_hash(
                    adjustment_id, meter, quantity, occurred_at, reason, received_at, actor
                )
            )

    # Invoices ------------------------------------------------------------------------------

    def lines(self, charges_data: list[dict[str, Any]], currency: str) -> list[dict[str, Any]]:
        charges = parse_charges(charges_data)
        return usage_lines(self.period, self.billed, charges, currency) + carried_lines(
            self.carried_in.values(), currency
        )

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
        self.revisions.append(
            {
                "revision": revision,
                "plan_id": plan_id,
                "plan_version": plan_version,
                "currency": currency,
                "charges": charges,
                "lines": lines,
                "total": total,
                "lineage_digest": lineage_digest,
                "lineage_scheme": lineage_scheme,
                "items": items,
                "issued_at": closed_at,
            }
        )

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
        self.revisions.append(
            {
                "revision": revision,
                "plan_id": plan_id,
                "plan_version": plan_version,
                "currency": currency,
                "charges": charges,
                "lines": lines,
                "total": total,
                "lineage_digest": lineage_digest,
                "lineage_scheme": lineage_scheme,
                "items": items,
                "issued_at": closed_at,
            }
        )
