"""Meters: what is measured and how it is aggregated, fixed once registered, whatever prices it.

The registry is derived on read from the log: every `Meter.Registered` and, for plans
published before meters were aggregates of their own, the charges of every
`Plan.VersionPublished`. The first definition of a meter in log order stands.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import get_topic

from billing_domain.ids import meter_uuid
from billing_domain.plan import Plan

METER_AGGREGATIONS = ("sum", "count", "max", "unique_count", "latest")


class Meter(Aggregate):
    class Registered(Aggregate.Created):
        meter: str
        name: str
        aggregation: str
        field: str | None
        unit: str | None
        plan_id: str | None
        actor: str

    @staticmethod
    def create_id(meter: str, **_: Any) -> UUID:
        return meter_uuid(meter)

    @event(Registered)
    def __init__(
        self,
        meter: str,
        name: str,
        aggregation: str,
        field: str | None,
        unit: str | None,
        plan_id: str | None,
        actor: str,
    ) -> None:
        self.meter = meter
        self.name = name
        self.aggregation = aggregation
        self.field = field
        self.unit = unit
        self.plan_id = plan_id


@dataclass(frozen=True)
class MeterDefinition:
    meter: str
    name: str
    aggregation: str
    field: str | None
    unit: str | None
    registered_by: str  # "api", or "plan:<plan_id>" for a meter a plan's charge implied

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


REGISTERED_TOPIC = get_topic(Meter.Registered)
PLAN_TOPIC = get_topic(Plan.Created)
PUBLISHED_TOPIC = get_topic(Plan.VersionPublished)  # type: ignore[attr-defined]
TOPICS = [REGISTERED_TOPIC, PLAN_TOPIC, PUBLISHED_TOPIC]

# (position, event) pairs of the given topics after a position, at most `limit`.
EventReader = Callable[[int, int, list[str]], list[tuple[int, Any]]]


class MeterRegistry:
    """Every meter the log defines, read incrementally: a definition never changes once
    recorded, so a meter found here is final and only a miss reads the log again."""

    PAGE = 500

    def __init__(self, read: EventReader) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._position = 0
        self._meters: dict[str, MeterDefinition] = {}
        self._plans: dict[UUID, str] = {}
        self._implied: set[str] = set()

    def get(self, meter: str, *, fresh: bool = False) -> MeterDefinition | None:
        """A meter's definition; `fresh` reads the log first (a name or unit given later to a
        meter an old plan implied), else only a miss does."""
        found = None if fresh else self._meters.get(meter)
        if found is None:
            self.refresh()
            found = self._meters.get(meter)
        return found

    def all(self) -> list[MeterDefinition]:
        self.refresh()
        return sorted(self._meters.values(), key=lambda d: d.meter)

    def refresh(self) -> None:
        with self._lock:
            while True:
                page = self._read(self._position + 1, self.PAGE, TOPICS)
                for position, stored in page:
                    self._take(stored)
                    self._position = position
                if len(page) < self.PAGE:
                    return

    def _take(self, stored: Any) -> None:
        if isinstance(stored, Plan.Created):
            self._plans[stored.originator_id] = stored.plan_id
            return
        plan_id = self._plans.get(stored.originator_id)
        for definition in _definitions(stored, plan_id):
            known = self._meters.get(definition.meter)
            # A meter implied by a plan published before meters were aggregates takes the
            # name and unit it is registered with later (with the same aggregation).
            if known is None or (
                definition.meter in self._implied and isinstance(stored, Meter.Registered)
            ):
                self._meters[definition.meter] = definition
                self._implied.discard(definition.meter)
                if not isinstance(stored, Meter.Registered):
                    self._implied.add(definition.meter)


def _definitions(stored: Any, plan_id: str | None) -> Iterable[MeterDefinition]:
    if isinstance(stored, Meter.Registered):
        yield MeterDefinition(
            stored.meter,
            stored.name,
            stored.aggregation,
            stored.field,
            stored.unit,
            f"plan:{stored.plan_id}" if stored.plan_id else "api",
        )
        return
    for charge in getattr(stored, "charges", ()):
        meter = charge.get("meter")
        if isinstance(meter, str):
            yield MeterDefinition(
                meter,
                meter,
                charge.get("aggregation", "sum"),
                charge.get("field"),
                None,
                f"plan:{plan_id}" if plan_id else "plan",
            )
