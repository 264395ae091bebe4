"""Catching projections up with the log: each batch's rows and position commit together.

The position is advanced with a compare-and-set (`WHERE position = <what we read>`) in the
same transaction as the rows, so a crash anywhere rolls both back, and two runners on the
same projection (a worker and a server, say) cannot both apply a batch: the loser rolls
back and re-reads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Notification

from billing_domain.application import BillingApplication
from projections.audit import AuditProjection
from projections.base import Projection
from projections.ledger import InvoicesProjection
from projections.store import Cursor, ViewStore

REGISTRY: dict[str, dict[int, type[Projection]]] = {}
TRACKING = "projection_versions"
BATCH_BYTES = 1_000_000


def register(cls: type[Projection]) -> type[Projection]:
    """Make a projection class (one logic version of a named projection) available."""
    REGISTRY.setdefault(cls.name, {})[cls.logic] = cls
    return cls


register(InvoicesProjection)
register(AuditProjection)


class PositionMoved(Exception):
    """Another runner advanced this projection first; nothing of ours was committed."""


@dataclass
class Version:
    name: str
    version: int
    logic: int
    state: str  # live | building | ready | retired
    position: int

    @property
    def key(self) -> str:
        return f"{self.name}_v{self.version}"


def topic_name(topic: str) -> str:
    return topic.rpartition(":")[2]


class Runner:
    def __init__(
        self, app: BillingApplication, store: ViewStore, *, batch_size: int = 1000
    ) -> None:
        self.app = app
        self.store = store
        self.batch_size = batch_size
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.ensure()

    def ensure(self) -> None:
        """Create the tracking table and a live first version of every registered projection."""
        with self.store.write() as cur:
            cur.lock_ddl()
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {TRACKING} (name TEXT NOT NULL, "
                "version INTEGER NOT NULL, logic INTEGER NOT NULL, state TEXT NOT NULL, "
                "position BIGINT NOT NULL, PRIMARY KEY (name, version))"
            )
            for name, classes in REGISTRY.items():
                if cur.one(f"SELECT 1 AS x FROM {TRACKING} WHERE name = ?", [name]) is None:
                    logic = min(classes)
                    cur.execute(
                        f"INSERT INTO {TRACKING} VALUES (?, 1, ?, 'live', 0) "
                        "ON CONFLICT DO NOTHING",
                        [name, logic],
                    )
                    classes[logic](1).create(cur)

    def versions(self, cur: Cursor | None = None) -> list[Version]:
        if cur is None:
            with self.store.read() as read:
                return self.versions(read)
        return [
            Version(r["name"], int(r["version"]), int(r["logic"]), r["state"], int(r["position"]))
            for r in cur.all(f"SELECT * FROM {TRACKING} ORDER BY name, version")
        ]

    def live(self, name: str) -> Version:
        for version in self.versions():
            if version.name == name and version.state == "live":
                return version
        raise KeyError(name)

    def projection(self, version: Version) -> Projection:
        return REGISTRY[version.name][version.logic](version.version)

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def notifications(self, after: int, stop: int | None = None) -> Iterator[list[Notification]]:
        """Batches of the log after a position, sized so each holds about BATCH_BYTES of
        stored events: many small events share a transaction, huge ones do not pile up."""
        limit = min(self.batch_size, 10)
        while True:
            batch = self.app.recorder.select_notifications(start=after + 1, limit=limit, stop=stop)
            if not batch:
                return
            yield list(batch)
            after = batch[-1].id
            if stop is not None and after >= stop:
                return
            average = max(sum(len(n.state) for n in batch) // len(batch), 1)
            limit = max(1, min(self.batch_size, limit * 2, BATCH_BYTES // average))

    def catch_up(
        self,
        version: Version,
        *,
        stop: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        projection: Projection | None = None,
    ) -> int:
        """Apply everything after the version's position (up to `stop`); return the position."""
        projection = projection or self.projection(version)
        with self._lock(version.key):
            position = self._position(version)
            while True:
                try:
                    return self._apply_from(
                        version, projection, position, stop, progress, should_stop
                    )
                except PositionMoved:
                    position = self._position(version)

    def _apply_from(
        self,
        version: Version,
        projection: Projection,
        position: int,
        stop: int | None,
        progress: Callable[[int, int], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> int:
        for batch in self.notifications(position, stop):
            events = self.decode(projection, batch)
            self.commit(version, projection, position, batch[-1].id, events)
            position = batch[-1].id
            if progress is not None:
                progress(position, sum(_weight(e) for _, _, e in events))
            if should_stop is not None and should_stop():
                break
        return position

    def decode(
        self, projection: Projection, batch: list[Notification]
    ) -> list[tuple[int, str, Any]]:
        events = []
        for notification in batch:
            topic = topic_name(notification.topic)
            if topic in projection.topics:
                events.append(
                    (notification.id, topic, self.app.mapper.to_domain_event(notification))
                )
        return events

    def commit(
        self,
        version: Version,
        projection: Projection,
        before: int,
        after: int,
        events: list[tuple[int, str, Any]],
    ) -> None:
        with self.store.write() as cur:
            moved = cur.execute(
                f"UPDATE {TRACKING} SET position = ? WHERE name = ? AND "
                "version = ? AND position = ?",
                [after, version.name, version.version, before],
            ).rowcount
            if moved != 1:
                raise PositionMoved(version.key)
            if events:
                projection.apply(cur, events)

    def _position(self, version: Version) -> int:
        with self.store.read() as cur:
            row = cur.one(
                f"SELECT position FROM {TRACKING} WHERE name = ? AND version = ?",
                [version.name, version.version],
            )
        if row is None:
            raise KeyError(version.key)
        return int(row["position"])


def _weight(event: Any) -> int:
    """Progress counts usage records, the unit that dominates the work; other events count 1."""
    return len(getattr(event, "records", ())) or 1
