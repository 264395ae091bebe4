"""The billing application: every command the interfaces call, as business verbs."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Recording

from billing_domain.customer import LATE_USAGE_POLICIES, Customer
from billing_domain.errors import (
    BillingError,
    CompensationExceedsUsage,
    CustomerExists,
    CustomerMerged,
    EmitterExists,
    IdempotencyConflict,
    InvalidInput,
    NegativeQuantity,
    NotAuthenticated,
    NotAuthorised,
    NotFound,
    OccurredBeforeHorizon,
    OccurredInFuture,
    PeriodNotEnded,
    StoreContention,
    UnknownCustomer,
    UnknownEmitter,
    UnknownKey,
    UnknownMeter,
    UnknownPlan,
    UnknownUsageEvent,
)
from billing_domain.identity import (
    ROLES,
    SYSTEM,
    AuditFact,
    Emitter,
    Grant,
    Key,
    Principal,
    hash_secret,
    secrets_match,
)
from billing_domain.ids import (
    customer_uuid,
    emitter_uuid,
    invoice_id,
    key_uuid,
    period_uuid,
    plan_uuid,
)
from billing_domain.period import BillingPeriod
from billing_domain.plan import Plan
from billing_domain.ports import KeyRow
from billing_domain.pricing import Charge, check_currency, parse_charges
from billing_domain.settings import Settings
from billing_domain.usage import (
    UsageInput,
    UsageResult,
    decimal_text,
    iso,
    next_period,
    payload_hash,
    period_bounds,
    period_of,
)

MAX_ATTEMPTS = 50
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
T = TypeVar("T", bound=Aggregate)


def check_period(text: str, field: str = "period") -> str:
    if not isinstance(text, str) or not _PERIOD.match(text):
        raise InvalidInput("must be a calendar month as YYYY-MM", field=field)
    return text


def period_start(value: str, field: str) -> str:
    """A period named YYYY-MM, or given by its first instant in RFC 3339 (UTC midnight)."""
    if isinstance(value, str) and _PERIOD.match(value):
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise InvalidInput(
            "must be a period start: YYYY-MM or the month's first instant in RFC 3339", field=field
        ) from None
    if moment.tzinfo is None or period_bounds(period_of(moment))[0] != moment:
        raise InvalidInput(
            "must be the first instant of a month in UTC (e.g. 2026-11-01T00:00:00Z)", field=field
        )
    return period_of(moment)


def check_identifier(value: Any, field: str, *, max_length: int = 200) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("must be a non-empty string", field=field)
    if len(value) > max_length:
        raise InvalidInput(f"must be at most {max_length} characters", field=field)
    return value


def _hash_json(*parts: Any) -> str:
    return hashlib.sha256(
        json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


@dataclass(frozen=True)
class _Routed:
    index: int
    item: UsageInput
    principal: Principal
    payload_hash: str
    billed_customer_id: str
    period: str
    charge: Charge


class BillingApplication(Application[UUID]):
    name = "billing"
    snapshotting_intervals = {BillingPeriod: 200}  # noqa: RUF012

    def __init__(
        self, settings: Settings | None = None, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.clock = clock or (lambda: datetime.now(UTC))
        self._charges: dict[tuple[str, int], tuple[Charge, ...]] = {}
        self.last_position = 0  # the newest log position this process has written
        env = self.settings.eventsourcing_env()
        super().__init__(env=env)

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        recordings = super()._record(processing_event)
        if recordings and recordings[-1].notification.id is not None:
            self.last_position = max(self.last_position, recordings[-1].notification.id)
        # The saved aggregates are the newest versions: caching them spares the next command
        # from re-applying events it has just applied (fast-forward still picks up others').
        if self.repository.cache is not None:
            for aggregate_id, aggregate in processing_event.aggregates.items():
                self.repository.cache.put(aggregate_id, aggregate)
        return recordings

    # Helpers -----------------------------------------------------------------------------

    def _find(self, aggregate_id: UUID, cls: type[T]) -> T | None:
        try:
            aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        assert isinstance(aggregate, cls)
        return aggregate

    def _load_many(self, ids: Iterable[UUID], *, copy: bool = True) -> dict[UUID, Aggregate | None]:
        """Load many aggregates with one query for whatever others wrote since they were cached,
        instead of one fast-forward query per aggregate. `copy=False` is for aggregates the
        caller only reads: they come straight from the cache."""
        cache = self.repository.cache
        found: dict[UUID, Aggregate | None] = {}
        cached: dict[UUID, Aggregate] = {}
        for aggregate_id in dict.fromkeys(ids):
            try:
                cached[aggregate_id] = cache.get(aggregate_id)  # type: ignore[union-attr]
            except (KeyError, AttributeError):
                found[aggregate_id] = self._find(aggregate_id, Aggregate)
        newer = self.recorder.newer_than(  # type: ignore[attr-defined]
            {i: a.version for i, a in cached.items()}
        )
        for aggregate_id, aggregate in cached.items():
            if aggregate_id in newer:
                found[aggregate_id] = self._find(aggregate_id, Aggregate)
                continue
            if not copy:
                found[aggregate_id] = aggregate
                continue
            # The repository fast-forwards cached aggregates in place under this lock.
            lock = self.repository._use_fastforward_lock(aggregate_id)
            try:
                with lock:
                    found[aggregate_id] = deepcopy(aggregate)
            finally:
                self.repository._disuse_fastforward_lock(aggregate_id)
        return found

    def _customer(self, customer_id: str) -> Customer:
        customer = self._find(customer_uuid(customer_id), Customer)
        if customer is None:
            raise UnknownCustomer(f"no customer {customer_id!r}")
        return customer

    def _plan_charges(self, plan_id: str, version: int) -> tuple[Charge, ...]:
        key = (plan_id, version)
        if key not in self._charges:
            plan = self._find(plan_uuid(plan_id), Plan)
            if plan is None or version > len(plan.versions):
                raise UnknownPlan(f"no plan {plan_id!r} version {version}")
            self._charges[key] = plan.charges(version)
        return self._charges[key]

    def period_charges(self, customer_id: str, period: str) -> tuple[tuple[Charge, ...], str]:
        """The charges of the plan in force for a customer's period, and its currency."""
        customer = self._customer(customer_id)
        subscribed = customer.plan_for(period)
        return (self._plan_charges(*subscribed) if subscribed else ()), customer.currency

    def _charge_for(self, customer: Customer, period: str, meter: str) -> Charge:
        subscribed = customer.plan_for(period)
        if subscribed is None:
            raise UnknownMeter(
                f"customer {customer.customer_id!r} has no plan in force for {period}"
            )
        for charge in self._plan_charges(*subscribed):
            if charge.meter == meter:
                return charge
        raise UnknownMeter(
            f"meter {meter!r} is not charged by plan {subscribed[0]!r} "
            f"version {subscribed[1]} for {period}"
        )

    def _billed_customer(self, customer: Customer, occurred_at: datetime) -> Customer:
        seen = {customer.customer_id}
        while (target := customer.billed_to(occurred_at)) is not None and target not in seen:
            seen.add(target)
            customer = self._customer(target)
        return customer

    def _retry(self, attempt: Callable[[], Any]) -> Any:
        """Run a read-decide-save step again when a concurrent writer got there first."""
        for _ in range(MAX_ATTEMPTS):
            try:
                return attempt()
            except IntegrityError:
                continue
        raise StoreContention(f"gave up after {MAX_ATTEMPTS} concurrent-write retries; retry")

    def _period_for_write(
        self, customer_id: str, period: str, pending: dict[UUID, Aggregate]
    ) -> BillingPeriod:
        pid = period_uuid(customer_id, period)
        if pid not in pending:
            found = self._find(pid, BillingPeriod)
            pending[pid] = found or BillingPeriod(customer_id=customer_id, period=period)
        aggregate = pending[pid]
        assert isinstance(aggregate, BillingPeriod)
        return aggregate

    def _open_period_for_carry(
        self, customer_id: str, now: datetime, pending: dict[UUID, Aggregate]
    ) -> BillingPeriod:
        period = period_of(now)
        while True:
            target = self._period_for_write(customer_id, period, pending)
            if not target.is_closed:
                return target
            period = next_period(period)

    def _check_time(self, occurred_at: Any, now: datetime) -> datetime:
        if not isinstance(occurred_at, datetime) or occurred_at.tzinfo is None:
            raise InvalidInput("must be an RFC 3339 time with a UTC offset", field="occurred_at")
        if occurred_at > now + self.settings.max_clock_skew:
            raise OccurredInFuture(
                f"is more than {self.settings.max_clock_skew} ahead of the server clock"
            )
        if occurred_at < now - self.settings.backdating_horizon:
            raise OccurredBeforeHorizon(
                f"is older than the backdating horizon of {self.settings.backdating_horizon.days} days"
            )
        return occurred_at

    def _late_treatment(self, period: BillingPeriod) -> str:
        if not period.is_closed:
            return "on_time"
        policy = self._customer(period.customer_id).late_usage_policy
        return "restated" if policy == "restate" else "carried_forward"

    # Customers and plans -----------------------------------------------------------------

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
            customer = self._customer(customer_id)
            if name is not None and name != customer.name:
                customer.rename(name, principal.actor)
            if late_usage_policy is not None and late_usage_policy != customer.late_usage_policy:
                customer.change_late_usage_policy(late_usage_policy, principal.actor)
            self.save(customer)
            return customer

        return self._retry(attempt)  # type: ignore[no-any-return]

    def get_customer(self, customer_id: str) -> Customer:
        return self._customer(customer_id)

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
        normalised = [c.to_dict() for c in parse_charges(charges)]

        def attempt() -> tuple[str, int]:
            plan = self._find(plan_uuid(plan_id), Plan) or Plan(plan_id=plan_id)
            version = plan.publish_next(currency, normalised, principal.actor)
            self.save(plan)
            return plan_id, version

        return self._retry(attempt)  # type: ignore[no-any-return]

    def get_plan(self, plan_id: str) -> Plan:
        plan = self._find(plan_uuid(plan_id), Plan)
        if plan is None:
            raise UnknownPlan(f"no plan {plan_id!r}")
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
        effective_from = period_start(effective_from, "effective_from")
        plan = self.get_plan(plan_id)
        version = plan_version or len(plan.versions)
        if not 1 <= version <= len(plan.versions):
            raise UnknownPlan(f"plan {plan_id!r} has no version {version}", field="plan_version")

        def attempt() -> dict[str, Any]:
            customer = self._customer(customer_id)
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

        return self._retry(attempt)  # type: ignore[no-any-return]

    def merge_customer(
        self, customer_id: str, into: str, effective_at: datetime, principal: Principal = SYSTEM
    ) -> dict[str, Any]:
        """Bill a customer's usage from an instant onwards to another customer."""
        if not isinstance(effective_at, datetime) or effective_at.tzinfo is None:
            raise InvalidInput("must be an RFC 3339 time with a UTC offset", field="effective_at")
        if into == customer_id:
            raise InvalidInput("a customer cannot be merged into itself", field="into")

        def attempt() -> dict[str, Any]:
            customer = self._customer(customer_id)
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

        return self._retry(attempt)  # type: ignore[no-any-return]

    # Usage -------------------------------------------------------------------------------

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
    ) -> list[UsageResult]:
        """Record usage sent by several callers in one atomic commit (group commit)."""
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
                digest = payload_hash(item)
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
                if customer is None:
                    raise UnknownCustomer(f"no customer {item.customer_id!r}")
                if not principal.may_ingest(item.customer_id, item.meter, now):
                    raise NotAuthorised(
                        f"{principal.emitter!r} has no grant for customer "
                        f"{item.customer_id!r} and meter {item.meter!r}"
                    )
                billed = self._billed_customer(customer, item.occurred_at)
                period = period_of(item.occurred_at)
                charge = self._charge_for(billed, period, item.meter)
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
                if isinstance(error, NotAuthorised):
                    refusals.append(
                        self._refusal_fact(
                            principal,
                            "usage.ingest",
                            error.reason,
                            {
                                "customer_id": item.customer_id,
                                "meter": item.meter,
                                "event_id": item.event_id,
                            },
                            now,
                        )
                    )

        if routed or refusals:
            self._retry(lambda: self._commit_usage(routed, results, now, refusals))
        for index, (item, _) in enumerate(entries):
            result = results[index]
            if result is not None and result.status == "duplicate" and result.period is None:
                first = results[first_of[(item.customer_id, item.event_id)][0]]
                if first is not None and first.status in ("accepted", "duplicate"):
                    results[index] = UsageResult(
                        item.event_id, "duplicate", first.period, first.treatment
                    )
        return [r for r in results if r is not None]

    def _check_usage(self, item: UsageInput, now: datetime) -> None:
        check_identifier(item.event_id, "event_id", max_length=256)
        check_identifier(item.customer_id, "customer_id")
        check_identifier(item.meter, "meter")
        if not isinstance(item.quantity, Decimal) or not item.quantity.is_finite():
            raise InvalidInput("must be a finite decimal number", field="quantity")
        if item.quantity < 0:
            raise NegativeQuantity("must not be negative")
        self._check_time(item.occurred_at, now)
        if not isinstance(item.properties, dict):
            raise InvalidInput("must be an object", field="properties")

    def _refusal_fact(
        self, principal: Principal, action: str, reason: str, detail: dict[str, Any], now: datetime
    ) -> AuditFact:
        return AuditFact(
            action=action,
            emitter=principal.emitter,
            key_id=principal.key_id,
            reason=reason,
            detail=detail,
            at=now,
        )

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
    ) -> None:
        existing = self.recorder.select_keys(  # type: ignore[attr-defined]
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
                if treatment == "carried_forward":
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
                    if treatment == "restated":
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

    # Corrections -------------------------------------------------------------------------

    def recorded_usage(self, customer_id: str, event_id: str) -> tuple[KeyRow, list[Any]]:
        """The key row and the stored record [event_id, customer, meter, qty, occurred, props]."""
        row = self.recorder.select_keys(  # type: ignore[attr-defined]
            "usage", [(customer_id, event_id)]
        ).get((customer_id, event_id))
        if row is None:
            raise UnknownUsageEvent(f"no usage event {event_id!r} for customer {customer_id!r}")
        for stored in self.events.get(
            row.originator_id, gt=row.originator_version - 1, lte=row.originator_version
        ):
            for record in getattr(stored, "records", ()):
                if record[0] == event_id and record[1] == customer_id:
                    return row, record
        raise UnknownUsageEvent(f"usage event {event_id!r} is indexed but not in the log")

    def _idempotent(self, kind: str, customer_id: str, key: str, digest: str) -> KeyRow | None:
        row = self.recorder.select_keys(kind, [(customer_id, key)]).get(  # type: ignore[attr-defined]
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
        if quantity is not None and (not quantity.is_finite() or quantity <= 0):
            raise InvalidInput("must be a positive decimal number", field="quantity")
        digest = _hash_json(event_id, None if quantity is None else decimal_text(quantity), reason)
        now = self.clock()

        def attempt() -> dict[str, Any]:
            done = self._idempotent("compensation", customer_id, compensation_id, digest)
            if done is not None:
                return self._correction_view(
                    "compensation", compensation_id, done, "duplicate", event_id=event_id
                )
            row, record = self.recorded_usage(customer_id, event_id)
            if not principal.may_ingest(customer_id, record[2], now):
                raise NotAuthorised(
                    f"{principal.emitter!r} has no grant for customer "
                    f"{customer_id!r} and meter {record[2]!r}"
                )
            pending: dict[UUID, Aggregate] = {}
            period = self._find(row.originator_id, BillingPeriod)
            assert period is not None
            pending[period.id] = period
            original = Decimal(record[3])
            amount = quantity if quantity is not None else period.net_quantity(event_id, original)
            if amount <= 0:
                raise CompensationExceedsUsage(f"event {event_id!r} is already fully compensated")
            treatment = self._late_treatment(period)
            entries = period.compensate(
                compensation_id=compensation_id,
                event_id=event_id,
                submitted_customer_id=customer_id,
                meter=record[2],
                quantity=amount,
                original_quantity=original,
                properties=record[5],
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
                record[2],
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

        return self._retry(attempt)  # type: ignore[no-any-return]

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
        if treatment == "restated":
            period.restate(actor=principal.actor, restated_at=now, reason=reason)
        elif treatment == "carried_forward":
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
        if not isinstance(quantity, Decimal) or not quantity.is_finite():
            raise InvalidInput("must be a decimal number", field="quantity")
        now = self.clock()
        self._check_time(occurred_at, now)
        digest = _hash_json(meter, decimal_text(quantity), iso(occurred_at), reason)

        def attempt() -> dict[str, Any]:
            done = self._idempotent("adjustment", customer_id, adjustment_id, digest)
            if done is not None:
                return self._correction_view("adjustment", adjustment_id, done, "duplicate")
            billed = self._billed_customer(self._customer(customer_id), occurred_at)
            period_name = period_of(occurred_at)
            charge = self._charge_for(billed, period_name, meter)
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

        return self._retry(attempt)  # type: ignore[no-any-return]

    # Periods and invoices ----------------------------------------------------------------

    def close_period(
        self, customer_id: str, period: str, principal: Principal = SYSTEM
    ) -> dict[str, Any]:
        """Finalise a period and issue its invoice (revision 1); closing twice changes nothing."""
        check_period(period)
        now = self.clock()
        if period_bounds(period)[1] > now:
            raise PeriodNotEnded(f"period {period} has not ended yet")

        def attempt() -> dict[str, Any]:
            customer = self._customer(customer_id)
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

        return self._retry(attempt)  # type: ignore[no-any-return]

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
        customer = self._customer(customer_id)
        aggregate = self.billing_period(customer_id, period)
        base = {
            "invoice_id": invoice_id(customer_id, period),
            "customer_id": customer_id,
            "period": period,
            "currency": customer.currency,
        }
        if aggregate is not None and aggregate.revisions:
            number = revision or aggregate.revision
            issued = aggregate.revisions[number - 1]
            status = "issued" if number == aggregate.revision else "superseded"
            return {
                **base,
                "revision": number,
                "status": status,
                "currency": issued["currency"],
                "lines": issued["lines"],
                "total": issued["total"],
                "lineage_digest": issued["lineage_digest"],
                "plan_id": issued["plan_id"],
                "plan_version": issued["plan_version"],
                "issued_at": iso(issued["issued_at"]),
            }
        subscribed = customer.plan_for(period)
        charges = [c.to_dict() for c in self._plan_charges(*subscribed)] if subscribed else []
        if aggregate is None:
            aggregate = BillingPeriod(customer_id=customer_id, period=period)
        lines = aggregate.lines(charges, customer.currency)
        return {
            **base,
            "revision": 1,
            "status": "draft",
            "lines": lines,
            "total": str(sum((Decimal(line["amount"]) for line in lines), Decimal(0))),
            "lineage_digest": aggregate.lineage_digest,
            "plan_id": subscribed[0] if subscribed else None,
            "plan_version": subscribed[1] if subscribed else None,
            "issued_at": None,
        }

    # Identities and keys -----------------------------------------------------------------

    def register_emitter(
        self, emitter_id: str, name: str, principal: Principal = SYSTEM
    ) -> Emitter:
        """Register a non-human identity that sends usage."""
        check_identifier(emitter_id, "emitter_id")
        check_identifier(name, "name")
        if self._find(emitter_uuid(emitter_id), Emitter) is not None:
            raise EmitterExists(f"emitter {emitter_id!r} already exists")
        emitter = Emitter(emitter_id=emitter_id, name=name, actor=principal.actor)
        try:
            self.save(emitter)
        except IntegrityError:
            raise EmitterExists(f"emitter {emitter_id!r} already exists") from None
        return emitter

    def create_key(
        self, role: str, name: str, emitter_id: str | None = None, principal: Principal = SYSTEM
    ) -> tuple[str, str]:
        """Issue a key; returns (key_id, key). The key is shown once and stored hashed."""
        if role not in ROLES:
            raise InvalidInput(f"must be one of {', '.join(ROLES)}", field="role")
        check_identifier(name, "name")
        if role == "emitter":
            if not emitter_id:
                raise InvalidInput("an emitter key names its emitter", field="emitter_id")
            if self._find(emitter_uuid(emitter_id), Emitter) is None:
                raise UnknownEmitter(f"no emitter {emitter_id!r}", field="emitter_id")
        elif emitter_id is not None:
            raise InvalidInput("only emitter keys belong to an emitter", field="emitter_id")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        self.save(
            Key(
                key_id=key_id,
                key_hash=hash_secret(secret),
                role=role,
                name=name,
                emitter_id=emitter_id,
                actor=principal.actor,
            )
        )
        return key_id, f"bk_{key_id}_{secret}"

    def revoke_key(self, key_id: str, principal: Principal = SYSTEM) -> dict[str, Any]:
        """Revoke a key at once; it authenticates nothing afterwards."""

        def attempt() -> dict[str, Any]:
            key = (
                self._find(key_uuid(key_id), Key) if re.fullmatch(r"[0-9a-f]{16}", key_id) else None
            )
            if key is None:
                raise UnknownKey(f"no key {key_id!r}")
            if not key.revoked:
                key.revoke(principal.actor)
                self.save(key)
            return {"key_id": key_id, "role": key.role, "name": key.name, "revoked": True}

        return self._retry(attempt)  # type: ignore[no-any-return]

    def authenticate(self, token: str) -> Principal:
        """The principal a bearer key stands for; any doubt is NotAuthenticated."""
        admin_key = self.settings.admin_key
        if admin_key and secrets.compare_digest(token.encode(), admin_key.encode()):
            return Principal(emitter="bootstrap-admin", key_id="bootstrap", role="admin")
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "bk" or not re.fullmatch(r"[0-9a-f]{16}", parts[1]):
            raise NotAuthenticated("malformed key")
        key = self._find(key_uuid(parts[1]), Key)
        if key is None or not secrets_match(parts[2], key.key_hash):
            raise NotAuthenticated("unknown key")
        if key.revoked:
            raise NotAuthenticated("revoked key")
        grants: tuple[Grant, ...] = ()
        if key.emitter_id is not None:
            emitter = self._find(emitter_uuid(key.emitter_id), Emitter)
            grants = emitter.active_grants() if emitter is not None else ()
        return Principal(key.holder, key.key_id, key.role, grants)

    def grant(
        self,
        emitter_id: str,
        customer_id: str,
        meters: list[str],
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        principal: Principal = SYSTEM,
    ) -> dict[str, Any]:
        """Allow an emitter to ingest for a customer (or '*') and meters within a window."""
        if customer_id != "*":
            self._customer(customer_id)
        if not meters or not all(isinstance(m, str) and m for m in meters):
            raise InvalidInput("needs at least one meter name, or '*'", field="meters")
        for name, value in (("valid_from", valid_from), ("valid_until", valid_until)):
            if value is not None and value.tzinfo is None:
                raise InvalidInput("must have a UTC offset", field=name)
        if valid_from and valid_until and valid_until <= valid_from:
            raise InvalidInput("must be after valid_from", field="valid_until")
        grant_id = f"g_{secrets.token_hex(6)}"

        def attempt() -> dict[str, Any]:
            holder = self._find(emitter_uuid(emitter_id), Emitter)
            if holder is None:
                raise UnknownEmitter(f"no emitter {emitter_id!r}")
            holder.grant(
                grant_id, customer_id, list(meters), valid_from, valid_until, principal.actor
            )
            self.save(holder)
            return {
                "grant_id": grant_id,
                "emitter_id": emitter_id,
                "customer_id": customer_id,
                "meters": list(meters),
                "valid_from": iso(valid_from) if valid_from else None,
                "valid_until": iso(valid_until) if valid_until else None,
            }

        return self._retry(attempt)  # type: ignore[no-any-return]

    def revoke_grant(
        self, emitter_id: str, grant_id: str, principal: Principal = SYSTEM
    ) -> dict[str, Any]:
        """Withdraw a grant at once."""

        def attempt() -> dict[str, Any]:
            holder = self._find(emitter_uuid(emitter_id), Emitter)
            if holder is None:
                raise UnknownEmitter(f"no emitter {emitter_id!r}")
            if grant_id not in holder.grants:
                raise NotFound(
                    f"emitter {emitter_id!r} has no grant {grant_id!r}", field="grant_id"
                )
            holder.revoke_grant(grant_id, principal.actor)
            self.save(holder)
            return {"grant_id": grant_id, "emitter_id": emitter_id, "revoked": True}

        return self._retry(attempt)  # type: ignore[no-any-return]

    def record_refusal(
        self,
        principal: Principal | None,
        action: str,
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Keep a refused request in the audit log (never the key itself)."""
        who = principal or Principal(emitter="anonymous", key_id="-", role="none")
        self.save(self._refusal_fact(who, action, reason, detail or {}, self.clock()))
