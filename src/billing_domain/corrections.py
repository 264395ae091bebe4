"""Compensations and manual adjustments: corrections as new events, never edits."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from billing_domain.bounds import bounded_decimal
from billing_domain.catalogue import CustomerLookup
from billing_domain.core import (
    _hash_json,
    check_identifier,
)
from billing_domain.errors import (
    CompensationExceedsUsage,
    IdempotencyConflict,
    InvalidInput,
    NotAuthorised,
    UnknownUsageEvent,
)
from billing_domain.identity import (
    SYSTEM,
    Principal,
)
from billing_domain.period import BillingPeriod
from billing_domain.ports import KeyRow
from billing_domain.reducer import Treatment
from billing_domain.usage import (
    UsageRecord,
    decimal_text,
    iso,
    period_of,
)


class CorrectionCommands(CustomerLookup):
    def recorded_usage(self, customer_id: str, event_id: str) -> tuple[KeyRow, UsageRecord]:
        """The key row and the stored record of a usage event."""
        row = self.key_store.select_keys("usage", [(customer_id, event_id)]).get(
            (customer_id, event_id)
        )
        if row is None:
            raise UnknownUsageEvent(f"no usage event {event_id!r} for customer {customer_id!r}")
        for stored in self.events.get(
            row.originator_id, gt=row.originator_version - 1, lte=row.originator_version
        ):
            for record in map(UsageRecord._make, getattr(stored, "records", ())):
                if record.event_id == event_id and record.customer_id == customer_id:
                    return row, record
        raise UnknownUsageEvent(f"usage event {event_id!r} is indexed but not in the log")

    def _idempotent(self, kind: str, customer_id: str, key: str, digest: str) -> KeyRow | None:
        row: KeyRow | None = self.key_store.select_keys(kind, [(customer_id, key)]).get(
            (customer_id, key)
        )
        if row is not None and row.payload_hash != digest:
            raise IdempotencyConflict(
                f"{kind} {key!r} was recorded before with another payload", field=f"{kind}_id"
            )
        return row

    def compensate(
        self,
        customer_id: str,
        event_id: str,
        compensation_id: str,
        quantity: Decimal | None,
        reason: str,
        principal: Principal = SYSTEM,
    ) -> dict[str, Any]:
        """Reverse all or part of a recorded usage event, as a new event."""
        check_identifier(compensation_id, "compensation_id")
        check_identifier(reason, "reason", max_length=1000)
        if quantity is not None:
            if not isinstance(quantity, Decimal):
                raise InvalidInput("must be a decimal number", field="quantity")
            quantity = bounded_decimal(quantity, "quantity")
            if quantity <= 0:
                raise InvalidInput("must be a positive decimal number", field="quantity")
        digest = _hash_json(event_id, None if quantity is None else decimal_text(quantity), reason)
        now = self.clock()

        def refuse(meter: str | None) -> NotAuthorised:
            refusal = NotAuthorised(
                f"{principal.emitter!r} has no grant for customer {customer_id!r}"
                + (f" and meter {meter!r}" if meter else "")
            )
            self.refusals.record(
                principal,
                "usage.compensate",
                refusal.reason,
                {"customer_id": customer_id, "event_id": event_id, "meter": meter},
                now,
            )
            return refusal

        # Before any lookup: a caller without a grant learns nothing of customers or events.
        if not principal.may_ingest_for(customer_id, now):
            raise refuse(None)

        def attempt() -> dict[str, Any]:
            done = self._idempotent("compensation", customer_id, compensation_id, digest)
            if done is not None:
                return self._correction_view(
                    "compensation", compensation_id, done, "duplicate", event_id=event_id
                )
            row, record = self.recorded_usage(customer_id, event_id)
            if not principal.may_ingest(customer_id, record.meter, now):
                raise refuse(record.meter)
            pending: dict[UUID, Aggregate] = {}
            period = self._find(row.originator_id, BillingPeriod)
            assert period is not None
            pending[period.id] = period
            if period.known.get(record.meter, {}).get("aggregation") == "latest":
                raise InvalidInput(
                    "a latest meter's reading is corrected by a newer reading or an "
                    "adjustment, not compensated",
                    field="event_id",
                )
            original = Decimal(record.quantity)
            amount = quantity if quantity is not None else period.net_quantity(event_id, original)
            if amount <= 0:
                raise CompensationExceedsUsage(f"event {event_id!r} is already fully compensated")
            treatment = self._late_treatment(period)
            entries = period.compensate(
                compensation_id=compensation_id,
                event_id=event_id,
                submitted_customer_id=customer_id,
                meter=record.meter,
                quantity=amount,
                original_quantity=original,
                properties=record.properties,
                reason=reason,
                actor=principal.actor,
                received_at=iso(now),
                treatment=treatment,
            )
            self._apply_late(period, treatment, entries, now, principal, pending, "compensation")
            key = KeyRow(
                customer_id,
                "compensation",
                compensation_id,
                digest,
                period.id,
                period.version,
                record.meter,
                decimal_text(amount),
            )
            self.save(*pending.values(), keys=[key])
            return self._correction_view(
                "compensation",
                compensation_id,
                key,
                "accepted",
                event_id=event_id,
                period=period.period,
                treatment=treatment,
            )

        return self._retry(attempt)

    def _apply_late(
        self,
        period: BillingPeriod,
        treatment: str,
        entries: list[dict[str, Any]],
        now: datetime,
        principal: Principal,
        pending: dict[UUID, Aggregate],
        reason: str,
    ) -> None:
        if treatment == Treatment.RESTATED:
            period.restate(actor=principal.actor, restated_at=now, reason=reason)
        elif treatment == Treatment.CARRIED_FORWARD:
            target = self._open_period_for_carry(period.customer_id, now, pending)
            for entry in entries:
                target.carry_forward(**entry, received_at=iso(now))

    def _correction_view(
        self, kind: str, ident: str, row: KeyRow, status: str, **extra: Any
    ) -> dict[str, Any]:
        period = self._find(row.originator_id, BillingPeriod)
        view = {
            f"{kind}_id": ident,
            "status": status,
            "meter": row.meter,
            "quantity": row.quantity,
            "period": period.period if period else None,
        }
        view.update({k: v for k, v in extra.items() if v is not None})
        return view

    def adjust(
        self,
        customer_id: str,
        adjustment_id: str,
        meter: str,
        quantity: Decimal,
        occurred_at: datetime,
        reason: str,
        principal: Principal = SYSTEM,
    ) -> dict[str, Any]:
        """Record a manual signed correction of a meter, with the actor and the reason."""
        check_identifier(adjustment_id, "adjustment_id")
        check_identifier(meter, "meter")
        check_identifier(reason, "reason", max_length=1000)
        if not isinstance(quantity, Decimal):
            raise InvalidInput("must be a decimal number", field="quantity")
        quantity = bounded_decimal(quantity, "quantity")
        now = self.clock()
        self._check_time(occurred_at, now)
        digest = _hash_json(meter, decimal_text(quantity), iso(occurred_at), reason)

        def attempt() -> dict[str, Any]:
            done = self._idempotent("adjustment", customer_id, adjustment_id, digest)
            if done is not None:
                return self._correction_view("adjustment", adjustment_id, done, "duplicate")
            billed = self._billed_customer(self._customer_in_path(customer_id), occurred_at)
            period_name = period_of(occurred_at)
            charge = self._meter_shape(billed, period_name, meter)
            pending: dict[UUID, Aggregate] = {}
            period = self._period_for_write(billed.customer_id, period_name, pending)
            treatment = self._late_treatment(period)
            entries = period.adjust(
                adjustment_id=adjustment_id,
                meter=meter,
                quantity=quantity,
                occurred_at=occurred_at,
                reason=reason,
                actor=principal.actor,
                received_at=iso(now),
                treatment=treatment,
                aggregation=charge.aggregation,
                field=charge.field,
            )
            self._apply_late(period, treatment, entries, now, principal, pending, "adjustment")
            key = KeyRow(
                customer_id,
                "adjustment",
                adjustment_id,
                digest,
                period.id,
                period.version,
                meter,
                decimal_text(quantity),
            )
            self.save(*pending.values(), keys=[key])
            return self._correction_view(
                "adjustment",
                adjustment_id,
                key,
                "accepted",
                period=period_name,
                treatment=treatment,
            )

        return self._retry(attempt)
