"""Usage ingest: a batch, or single events from several callers in one group commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
)

from billing_domain.bounds import MAX_EVENT_ID_LENGTH, bounded_decimal, check_properties
from billing_domain.core import (
    ApplicationCore,
    MeterShape,
    check_identifier,
)
from billing_domain.customer import Customer
from billing_domain.errors import (
    BillingError,
    InvalidInput,
    NegativeQuantity,
    NotAuthorised,
    UnknownCustomer,
)
from billing_domain.identity import (
    SYSTEM,
    AuditFact,
    Principal,
)
from billing_domain.ids import (
    customer_uuid,
    period_uuid,
)
from billing_domain.period import BillingPeriod
from billing_domain.ports import KeyRow
from billing_domain.reducer import Treatment
from billing_domain.usage import (
    UsageInput,
    UsageResult,
    decimal_text,
    iso,
    payload_hash,
    period_of,
)


def _refused_write(error: Exception) -> bool:
    """The store refused what the write holds: not an outage (the same write may succeed
    later) and not contention (retried)."""
    return not isinstance(error, IntegrityError | OperationalError | InterfaceError)


def _unstorable_field(item: UsageInput) -> str | None:
    """The field holding text no supported store keeps: a NUL (PostgreSQL text refuses it) or
    an unpaired surrogate (not UTF-8)."""
    for field, text in (
        ("event_id", item.event_id),
        ("customer_id", item.customer_id),
        ("meter", item.meter),
    ):
        if "\x00" in text or (not text.isascii() and not _utf8(text)):
            return field
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@dataclass(frozen=True)
class _Routed:
    index: int
    item: UsageInput
    principal: Principal
    payload_hash: str
    billed_customer_id: str
    period: str
    charge: MeterShape


class IngestCommands(ApplicationCore):
    def record_usage(
        self,
        items: Sequence[UsageInput],
        principal: Principal = SYSTEM,
        *,
        received_at: datetime | None = None,
    ) -> list[UsageResult]:
        """Record a batch atomically; retries are duplicates, same id with new payload conflicts."""
        if len(items) > self.settings.max_batch:
            raise InvalidInput(
                f"at most {self.settings.max_batch} events per batch", field="events"
            )
        return self.record_usage_from(
            [(item, principal) for item in items], received_at=received_at
        )

    def record_usage_from(
        self,
        entries: Sequence[tuple[UsageInput, Principal]],
        *,
        received_at: datetime | None = None,
        atomic: bool = True,
    ) -> list[UsageResult]:
        """Record usage sent by several callers in one commit (group commit). When the store
        refuses the write, the entries it refused are rejected alone: an atomic call (one
        caller's batch) commits all the others in one transaction; otherwise (independent
        callers) the group is split in halves until each refused entry stands alone."""
        now = received_at or self.clock()
        results: list[UsageResult | None] = [None] * len(entries)
        first_of: dict[tuple[str, str], tuple[int, str]] = {}
        routed: list[_Routed] = []
        refusals: list[AuditFact] = []
        submitted = {item.customer_id for item, _ in entries if isinstance(item.customer_id, str)}
        loaded = self._load_many((customer_uuid(c) for c in submitted), copy=False)
        customers: dict[str, Customer | None] = {c: loaded[customer_uuid(c)] for c in submitted}  # type: ignore[misc]
        for index, (item, principal) in enumerate(entries):
            try:
                self._check_usage(item, now)
                key = (item.customer_id, item.event_id)
                digest = self._digest(item)
                if key in first_of:
                    if first_of[key][1] == digest:
                        results[index] = UsageResult(item.event_id, "duplicate")
                    else:
                        results[index] = UsageResult(
                            item.event_id,
                            "conflict",
                            detail="same event_id with another payload in this batch",
                        )
                        refusals.append(
                            self._conflict_fact(principal, item, digest, first_of[key][1], now)
                        )
                    continue
                first_of[key] = (index, digest)
                if item.customer_id not in customers:
                    customers[item.customer_id] = self._find(
                        customer_uuid(item.customer_id), Customer
                    )
                customer = customers[item.customer_id]
                # The grant first: a caller without one learns nothing of who is a customer.
                if not principal.may_ingest(item.customer_id, item.meter, now):
                    raise NotAuthorised(
                        f"{principal.emitter!r} has no grant for customer "
                        f"{item.customer_id!r} and meter {item.meter!r}"
                    )
                if customer is None:
                    raise UnknownCustomer(f"no customer {item.customer_id!r}")
                billed = self._billed_customer(customer, item.occurred_at)
                period = period_of(item.occurred_at)
                charge = self._meter_shape(billed, period, item.meter)
                routed.append(
                    _Routed(index, item, principal, digest, billed.customer_id, period, charge)
                )
            except BillingError as error:
                results[index] = UsageResult(
                    item.event_id,
                    "rejected",
                    detail=error.reason,
                    field=error.field,
                    code=error.code,
                )
                counted = self.refusals.note(
                    principal,
                    "usage.ingest",
                    error.reason,
                    {
                        "customer_id": item.customer_id,
                        "meter": item.meter,
                        "event_id": item.event_id,
                        "field": error.field,
                        "code": error.code,
                    },
                    now,
                    at_once=isinstance(error, NotAuthorised),
                )
                if counted is not None:
                    refusals.append(counted)

        receipts: dict[int, KeyRow] = {}
        if routed or refusals:
            self._commit_isolating(routed, results, now, refusals, receipts, atomic=atomic)
        self._replay_receipts(results, receipts)
        for index, (item, _) in enumerate(entries):
            result = results[index]
            if result is not None and result.status == "duplicate" and result.period is None:
                first = results[first_of[(item.customer_id, item.event_id)][0]]
                if first is not None and first.status in ("accepted", "duplicate"):
                    results[index] = UsageResult(
                        item.event_id,
                        "duplicate",
                        first.period,
                        first.treatment,
                        received_at=first.received_at,
                    )
        self._count_duplicates(entries, results, now)
        return [r for r in results if r is not None]

    def _count_duplicates(
        self,
        entries: Sequence[tuple[UsageInput, Principal]],
        results: list[UsageResult | None],
        now: datetime,
    ) -> None:
        """Retries are counted per sender for its activity, written as one audit fact per
        kind and window (the refusal log's counting), never one per retry."""
        for (item, principal), result in zip(entries, results, strict=True):
            if result is not None and result.status == "duplicate":
                self.refusals.note(
                    principal,
                    "usage.duplicate",
                    "already recorded",
                    {
                        "customer_id": item.customer_id,
                        "meter": item.meter,
                        "event_id": item.event_id,
                    },
                    now,
                    at_once=False,
                )

    def _digest(self, item: UsageInput) -> str:
        try:
            return payload_hash(item)
        except UnicodeEncodeError:
            raise InvalidInput(
                "must be valid Unicode text (no unpaired surrogates)",
                field=_unstorable_field(item) or "properties",
            ) from None

    def _commit_isolating(
        self,
        routed: list[_Routed],
        results: list[UsageResult | None],
        now: datetime,
        refusals: list[AuditFact],
        receipts: dict[int, KeyRow],
        *,
        atomic: bool,
    ) -> None:
        try:
            self._retry(lambda: self._commit_usage(routed, results, now, refusals, receipts))
            return
        except (PersistenceError, ValueError, TypeError) as error:
            if not _refused_write(error):
                raise
            refused = error
        if atomic:
            # A trial write of each half would have to be rolled back, which the store port
            # does not offer: the entries are checked for what the supported stores refuse.
            bad = [r for r in routed if _unstorable_field(r.item) is not None]
            if not bad:
                raise refused
            for r in bad:
                self._reject_unstorable(r, results, refused)
            rest = [r for r in routed if r not in bad]
            self._retry(lambda: self._commit_usage(rest, results, now, refusals, receipts))
        elif len(routed) > 1:
            half = len(routed) // 2
            self._commit_isolating(routed[:half], results, now, refusals, receipts, atomic=False)
            self._commit_isolating(routed[half:], results, now, [], receipts, atomic=False)
        else:
            for r in routed:
                self._reject_unstorable(r, results, refused)
            if refusals:
                self._retry(lambda: self._commit_usage([], results, now, refusals, receipts))

    @staticmethod
    def _reject_unstorable(r: _Routed, results: list[UsageResult | None], error: Exception) -> None:
        results[r.index] = UsageResult(
            r.item.event_id,
            "rejected",
            detail=f"the store refused this event: {_first_line(error)}",
            field=_unstorable_field(r.item),
            code="unstorable",
        )

    def _replay_receipts(
        self, results: list[UsageResult | None], receipts: dict[int, KeyRow]
    ) -> None:
        """A duplicate answers with the first receipt: read from the stored events that
        recorded the first copies, all in one read."""
        rows = {
            i: row
            for i, row in receipts.items()
            if (result := results[i]) is not None and result.status == "duplicate"
        }
        places = sorted({(row.originator_id, row.originator_version) for row in rows.values()})
        recorded: dict[tuple[UUID, int], Any] = {}
        for stored in self.key_store.events_at(places):
            event = self.mapper.to_domain_event(stored)
            recorded[(event.originator_id, event.originator_version)] = event
        for index, row in rows.items():
            first = recorded.get((row.originator_id, row.originator_version))
            result = results[index]
            if first is None or result is None:
                continue
            results[index] = replace(
                result,
                treatment=getattr(first, "treatment", result.treatment),
                received_at=getattr(first, "received_at", result.received_at),
            )

    def _check_usage(self, item: UsageInput, now: datetime) -> None:
        check_identifier(item.event_id, "event_id", max_length=MAX_EVENT_ID_LENGTH)
        check_identifier(item.customer_id, "customer_id")
        check_identifier(item.meter, "meter")
        if not isinstance(item.quantity, Decimal) or not item.quantity.is_finite():
            raise InvalidInput("must be a finite decimal number", field="quantity")
        bounded_decimal(item.quantity, "quantity")
        if item.quantity < 0:
            raise NegativeQuantity("must not be negative")
        self._check_time(item.occurred_at, now)
        check_properties(item.properties)

    def _conflict_fact(
        self, principal: Principal, item: UsageInput, digest: str, recorded: str, now: datetime
    ) -> AuditFact:
        return self._refusal_fact(
            principal,
            "usage.conflict",
            "same event_id with another payload",
            {
                "customer_id": item.customer_id,
                "event_id": item.event_id,
                "payload_hash": digest,
                "recorded_payload_hash": recorded,
            },
            now,
        )

    def _commit_usage(
        self,
        routed: list[_Routed],
        results: list[UsageResult | None],
        now: datetime,
        refusals: list[AuditFact],
        receipts: dict[int, KeyRow],
    ) -> None:
        existing = self.key_store.select_keys(
            "usage", [(r.item.customer_id, r.item.event_id) for r in routed]
        )
        pending: dict[UUID, Aggregate] = {}
        facts: list[AuditFact] = list(refusals)
        groups: dict[tuple[str, str], list[_Routed]] = {}
        for r in routed:
            row: KeyRow | None = existing.get((r.item.customer_id, r.item.event_id))
            if row is None:
                groups.setdefault((r.billed_customer_id, r.period), []).append(r)
            elif row.payload_hash == r.payload_hash:
                results[r.index] = UsageResult(r.item.event_id, "duplicate", r.period)
                receipts[r.index] = row
            else:
                results[r.index] = UsageResult(
                    r.item.event_id,
                    "conflict",
                    r.period,
                    detail="event_id was recorded before with another payload; the first stands",
                )
                facts.append(
                    self._conflict_fact(r.principal, r.item, r.payload_hash, row.payload_hash, now)
                )
        keys: list[KeyRow] = []
        restate: dict[UUID, tuple[BillingPeriod, Principal]] = {}
        received = iso(now)
        for period_id, found in self._load_many(period_uuid(*g) for g in groups).items():
            if found is not None:
                pending[period_id] = found
        for (billed_id, period_name), group in groups.items():
            period = self._period_for_write(billed_id, period_name, pending)
            treatment = self._late_treatment(period)
            by_sender: dict[Principal, list[_Routed]] = {}
            for r in group:
                by_sender.setdefault(r.principal, []).append(r)
            for sender, sent in by_sender.items():
                records = [
                    [
                        r.item.event_id,
                        r.item.customer_id,
                        r.item.meter,
                        decimal_text(r.item.quantity),
                        iso(r.item.occurred_at),
                        r.item.properties,
                    ]
                    for r in sent
                ]
                meters = {r.item.meter: [r.charge.aggregation, r.charge.field] for r in sent}
                if treatment == Treatment.CARRIED_FORWARD:
                    entries = period.record_late_carried(
                        received, sender.emitter, sender.key_id, meters, records
                    )
                    target = self._open_period_for_carry(billed_id, now, pending)
                    for entry in entries:
                        target.carry_forward(**entry, received_at=received)
                else:
                    period.record_usage(
                        received, sender.emitter, sender.key_id, treatment, meters, records
                    )
                    if treatment == Treatment.RESTATED:
                        restate[period.id] = (period, sender)
                for r in sent:
                    keys.append(
                        KeyRow(
                            r.item.customer_id,
                            "usage",
                            r.item.event_id,
                            r.payload_hash,
                            period.id,
                            period.version,
                            r.item.meter,
                            decimal_text(r.item.quantity),
                        )
                    )
                    results[r.index] = UsageResult(
                        r.item.event_id, "accepted", period_name, treatment, received_at=received
                    )
        for period, sender in restate.values():
            period.restate(actor=sender.actor, restated_at=now, reason="late usage")
        self.save(*pending.values(), *facts, keys=keys)
