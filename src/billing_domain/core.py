"""The application's shared machinery: loading and saving aggregates, retries, and the checks
every use case needs."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from contextlib import suppress
from copy import deepcopy
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar, cast
from uuid import UUID

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    Repository,
)
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Recording
from eventsourcing.utils import strtobool

from billing_domain.bounds import DISPLAY_FIELDS, MAX_ID_LENGTH, check_id, check_text, parse_time
from billing_domain.customer import Customer
from billing_domain.errors import (
    InvalidInput,
    OccurredBeforeHorizon,
    OccurredInFuture,
    StoreContention,
    UnknownCustomer,
    UnknownMeter,
    UnknownPlan,
)
from billing_domain.identity import (
    AuditFact,
    Principal,
)
from billing_domain.ids import (
    customer_uuid,
    period_uuid,
    plan_uuid,
)
from billing_domain.meter import MeterRegistry
from billing_domain.period import BillingPeriod
from billing_domain.plan import Plan
from billing_domain.ports import KeyStore
from billing_domain.pricing import Charge
from billing_domain.reducer import Treatment, treatment_for
from billing_domain.refusals import RefusalLog
from billing_domain.settings import Settings
from billing_domain.usage import (
    next_period,
    period_bounds,
    period_of,
)

MAX_ATTEMPTS = 50
_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
T = TypeVar("T", bound=Aggregate)
R = TypeVar("R")


class MeterShape(NamedTuple):
    aggregation: str
    field: str | None


def check_period(text: str, field: str = "period") -> str:
    if not isinstance(text, str) or not _PERIOD.fullmatch(text):
        raise InvalidInput("must be a calendar month as YYYY-MM", field=field)
    return text


def period_start(value: str, field: str) -> str:
    """A period named YYYY-MM, or given by its first instant in RFC 3339 (UTC midnight)."""
    if isinstance(value, str) and _PERIOD.fullmatch(value):
        return value
    if not isinstance(value, str | datetime):
        raise InvalidInput(
            "must be a period start: YYYY-MM or the month's first instant in RFC 3339", field=field
        )
    moment = parse_time(value, field)
    if period_bounds(period_of(moment))[0] != moment:
        raise InvalidInput(
            "must be the first instant of a month in UTC (e.g. 2026-11-01T00:00:00Z)", field=field
        )
    return period_of(moment)


def check_identifier(value: Any, field: str, *, max_length: int | None = None) -> str:
    """An id within its documented bounds (billing_domain.bounds); the display fields `name`
    and `reason` are checked as display text instead."""
    if field in DISPLAY_FIELDS:
        return check_text(value, field, max_length or DISPLAY_FIELDS[field])
    return check_id(value, field, max_length or MAX_ID_LENGTH)


def _hash_json(*parts: Any) -> str:
    return hashlib.sha256(
        json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


class CachingRepository(Repository[UUID]):
    """The library's repository, plus a consistent copy of an aggregate it holds in its cache:
    it fast-forwards cached aggregates in place, under a per-aggregate lock taken here too."""

    def copy_cached(self, aggregate_id: UUID, aggregate: Aggregate) -> Aggregate:
        lock = self._use_fastforward_lock(aggregate_id)
        try:
            with lock:
                return deepcopy(aggregate)
        finally:
            self._disuse_fastforward_lock(aggregate_id)


class ApplicationCore(Application[UUID]):
    """One event store for every use case; the commands live in one mixin per use case."""

    def __init__(
        self, settings: Settings | None = None, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.clock = clock or (lambda: datetime.now(UTC))
        self._charges: dict[tuple[str, int], tuple[Charge, ...]] = {}
        self.last_position = 0  # the newest log position this process has written
        env = self.settings.eventsourcing_env()
        super().__init__(env=env)
        self.key_store = cast(KeyStore, self.recorder)
        self.refusals = RefusalLog(lambda facts: self.save(*facts))
        self.meter_registry = MeterRegistry(self._read_topics)

    repository: CachingRepository

    def construct_repository(self) -> CachingRepository:
        size = self.env.get(self.AGGREGATE_CACHE_MAXSIZE)
        return CachingRepository(
            event_store=self.events,
            snapshot_store=self.snapshots,
            cache_maxsize=int(size) if size else None,
            fastforward=strtobool(self.env.get(self.AGGREGATE_CACHE_FASTFORWARD, "y")),
            deepcopy_from_cache=strtobool(self.env.get(self.DEEPCOPY_FROM_AGGREGATE_CACHE, "y")),
        )

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
            aggregate: object = self.repository.get(aggregate_id)
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
            hit = None
            if cache is not None:
                with suppress(KeyError):
                    hit = cache.get(aggregate_id)
            if isinstance(hit, Aggregate):
                cached[aggregate_id] = hit
            else:
                found[aggregate_id] = self._find(aggregate_id, Aggregate)
        newer = self.key_store.newer_than({i: a.version for i, a in cached.items()})
        for aggregate_id, aggregate in cached.items():
            if aggregate_id in newer:
                found[aggregate_id] = self._find(aggregate_id, Aggregate)
                continue
            if not copy:
                found[aggregate_id] = aggregate
                continue
            found[aggregate_id] = self.repository.copy_cached(aggregate_id, aggregate)
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

    def _read_topics(self, start: int, limit: int, topics: list[str]) -> list[tuple[int, Any]]:
        page = self.recorder.select_notifications(start, limit, topics=topics)
        return [(n.id, self.mapper.to_domain_event(n)) for n in page]

    def _meter_shape(self, customer: Customer, period: str, meter: str) -> MeterShape:
        """How a meter's usage is aggregated: as registered, whatever the customer's plan;
        else as the charge of the plan in force names it; an unknown meter is refused."""
        registered = self.meter_registry.get(meter)
        if registered is not None:
            return MeterShape(registered.aggregation, registered.field)
        subscribed = customer.plan_for(period)
        for charge in self._plan_charges(*subscribed) if subscribed else ():
            if charge.meter == meter:
                return MeterShape(charge.aggregation, charge.field)
        raise UnknownMeter(f"no meter {meter!r} is registered")

    def _billed_customer(self, customer: Customer, occurred_at: datetime) -> Customer:
        seen = {customer.customer_id}
        while (target := customer.billed_to(occurred_at)) is not None and target not in seen:
            seen.add(target)
            customer = self._customer(target)
        return customer

    def _retry(self, attempt: Callable[[], R]) -> R:
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
            days = self.settings.backdating_horizon.days
            raise OccurredBeforeHorizon(f"is older than the backdating horizon of {days} days")
        return occurred_at

    def _late_treatment(self, period: BillingPeriod) -> Treatment:
        if not period.is_closed:
            return Treatment.ON_TIME
        return treatment_for(True, self._customer(period.customer_id).late_usage_policy)

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
