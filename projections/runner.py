"""Catching projections up with the log: each batch's rows and position commit together.

The position is advanced with a compare-and-set (`WHERE position = <what we read>`) in the
same transaction as the rows, so a crash anywhere rolls both back, and two runners on the
same projection (a worker and a server, say) cannot both apply a batch: the loser rolls
back and re-reads.

An event that does not decode, or whose handlers raise, is quarantined (`quarantine.py`):
a failed batch is applied again one event at a time inside savepoints, so only the failing
event's rows are undone, it is recorded as set aside, and the rest of the batch commits
with the position as usual.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import Notification
from eventsourcing.utils import resolve_topic

from adapters.stored_json import UndecodableState, decode_state, domain_event
from billing_domain.application import BillingApplication
from projections import quarantine
from projections.activity import ActivityProjection
from projections.audit import AuditProjection
from projections.base import Projection
from projections.errors import NotQuarantined, SchemaMismatch, StillQuarantined
from projections.ledger import InvoicesProjection
from projections.series import SeriesProjection
from projections.store import Cursor, ViewStore
from projections.webhooks import WebhooksProjection

REGISTRY: dict[str, dict[int, type[Projection]]] = {}
TRACKING = "projection_versions"
BATCH_BYTES = 1_000_000
BIG_BATCH = 10_000  # notifications per batch of a rebuild or of a catch-up from far behind
BIG_BATCH_BYTES = 8_000_000
FAR_BEHIND = 100  # batches behind the head from which a catch-up takes big batches
# A build that keeps rows in memory commits them, with its position, at checkpoints: every
# CHECKPOINT notifications or CHECKPOINT_SECONDS. On SQLite a checkpoint's transaction holds
# the views file's one writer, so live projections wait for it: it is kept short there.
# A live version keeps rows so only when more than KEEP_BEHIND notifications behind (or
# taking big batches), and commits every LIVE_CHECKPOINT_SECONDS, so its readers see it move.
CHECKPOINT = 200_000
CHECKPOINT_SECONDS = 60.0
LIVE_CHECKPOINT_SECONDS = 5.0
SQLITE_CHECKPOINT_SECONDS = 2.0
KEEP_BEHIND = 10_000
KEEP_ROWS = 200_000  # rows kept in memory past which a checkpoint ends early
log = logging.getLogger(__name__)


def register(cls: type[Projection]) -> type[Projection]:
    """Make a projection class (one logic version of a named projection) available."""
    REGISTRY.setdefault(cls.name, {})[cls.logic] = cls
    return cls


register(InvoicesProjection)
register(AuditProjection)
register(ActivityProjection)
register(WebhooksProjection)
register(SeriesProjection)


class PositionMoved(Exception):
    """Another runner advanced this projection first; nothing of ours was committed."""


class _KeptBatchFailed(Exception):
    """A batch of a kept build raised: its checkpoint is rolled back (up to `last`)."""

    def __init__(self, last: int) -> None:
        super().__init__(last)
        self.last = last


@dataclass
class Version:
    name: str
    version: int
    logic: int
    state: str  # live | building | ready | retired
    position: int
    fingerprint: str | None = None  # the tables' schema when the version was created

    @property
    def key(self) -> str:
        return f"{self.name}_v{self.version}"


@dataclass
class Decoded:
    """One batch as a projection reads it: the events of its topics, and what did not decode."""

    events: list[tuple[int, str, Any]] = field(default_factory=list)
    notifications: dict[int, Notification] = field(default_factory=dict)
    undecodable: list[tuple[Notification, Exception]] = field(default_factory=list)


@dataclass
class _Pass:
    """One catch-up's settings, shared by the ways it applies batches."""

    version: Version
    projection: Projection
    progress: Callable[[int, int], None] | None
    should_stop: Callable[[], bool] | None
    cap: int

    def report(self, position: int, decoded: Decoded) -> None:
        if self.progress is not None:
            self.progress(position, sum(_weight(e) for _, _, e in decoded.events))

    def stopped(self) -> bool:
        return self.should_stop is not None and self.should_stop()


def topic_name(topic: str) -> str:
    return topic.rpartition(":")[2]


class Runner:
    def __init__(
        self,
        app: BillingApplication,
        store: ViewStore,
        *,
        batch_size: int = 1000,
        big_batch: int | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.batch_size = batch_size
        # Far behind (or rebuilding), fewer larger transactions: each touched period's draft
        # is priced once per batch, so a bigger batch prices it fewer times. Memory is bounded
        # by the batch, not by the log.
        self.big_batch = big_batch if big_batch is not None else min(batch_size * 10, BIG_BATCH)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._fingerprints: dict[tuple[str, int], str] = {}
        self.ensure()

    def ensure(self) -> None:
        """Create the tracking table and a live first version of every registered projection."""
        with self.store.write() as cur:
            cur.lock_ddl()
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {TRACKING} (name TEXT NOT NULL, "
                "version INTEGER NOT NULL, logic INTEGER NOT NULL, state TEXT NOT NULL, "
                "position BIGINT NOT NULL, fingerprint TEXT, PRIMARY KEY (name, version))"
            )
            add_fingerprint_column(cur)
            quarantine.create(cur)
            for name, classes in REGISTRY.items():
                if cur.one(f"SELECT 1 AS x FROM {TRACKING} WHERE name = ?", [name]) is None:
                    logic = min(classes)
                    first = classes[logic](1)
                    insert_version(cur, Version(name, 1, logic, "live", 0, first.fingerprint()))
                    first.create(cur)

    def versions(self, cur: Cursor | None = None) -> list[Version]:
        if cur is None:
            with self.store.read() as read:
                return self.versions(read)
        return [
            Version(
                r["name"],
                int(r["version"]),
                int(r["logic"]),
                r["state"],
                int(r["position"]),
                r.get("fingerprint"),
            )
            for r in cur.all(f"SELECT * FROM {TRACKING} ORDER BY name, version")
        ]

    def expected_fingerprint(self, version: Version) -> str:
        key = (version.name, version.logic)
        if key not in self._fingerprints:
            self._fingerprints[key] = self.projection(version).fingerprint()
        return self._fingerprints[key]

    def mismatch(self, version: Version) -> str | None:
        """Why this code must not write into a version, or None: its stored schema
        fingerprint is missing or differs from what the code's tables are."""
        expected = self.expected_fingerprint(version)
        if version.fingerprint == expected:
            return None
        stored = version.fingerprint or "none recorded"
        return (
            f"{version.key} has tables of another schema (fingerprint {stored}, this code "
            f"expects {expected}); it is not written. Fix: billing projections rebuild "
            f"{version.name} --switch"
        )

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

    def notifications(
        self, after: int, stop: int | None = None, cap: int | None = None
    ) -> Iterator[list[Notification]]:
        """Batches of the log after a position, sized so each holds about BATCH_BYTES of
        stored events: many small events share a transaction, huge ones do not pile up.
        `cap` (default: batch_size) bounds the notifications of a batch; a cap above
        batch_size allows proportionally more bytes, up to BIG_BATCH_BYTES."""
        cap = cap or self.batch_size
        max_bytes = min(BATCH_BYTES * max(1, cap // self.batch_size), BIG_BATCH_BYTES)
        limit = min(cap, 10)
        while True:
            with gc_paused():  # an object per notification: no collection walks them
                batch = self.app.recorder.select_notifications(
                    start=after + 1, limit=limit, stop=stop
                )
            if not batch:
                return
            yield list(batch)
            after = batch[-1].id
            if stop is not None and after >= stop:
                return
            average = max(sum(len(n.state) for n in batch) // len(batch), 1)
            limit = max(1, min(cap, limit * 2, max_bytes // average))

    def catch_up(
        self,
        version: Version,
        *,
        stop: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        projection: Projection | None = None,
        big: bool = False,
        defer: bool = False,
    ) -> int:
        """Apply everything after the version's position (up to `stop`); return the position.
        Batches are up to `big_batch` notifications when `big` (a rebuild) or when the version
        is more than FAR_BEHIND batches behind, else up to `batch_size`. `defer` (a version
        nobody reads yet) leaves what `Projection.settle` does for it to do once."""
        projection = projection or self.projection(version)
        projection.deferring = defer
        with self._lock(version.key):
            position = self._position(version)
            fingerprint = self._fingerprint(version)
            if fingerprint != projection.fingerprint():
                raise SchemaMismatch(
                    self.mismatch(Version(**{**version.__dict__, "fingerprint": fingerprint}))
                    or version.key
                )
            while True:
                try:
                    return self._apply_from(
                        version, projection, position, stop, progress, should_stop, big
                    )
                except PositionMoved:
                    position = self._position(version)

    def settle(self, version: Version) -> None:
        """Finish the work a build deferred (`Projection.settle`), a chunk per transaction.
        Each chunk first takes the version's tracking row, so a catch-up of another process
        cannot commit between what a chunk reads and what it writes."""
        projection = self.projection(version)
        after: Any = None
        with self._lock(version.key):
            while True:
                with gc_paused(), self.store.write() as cur:
                    hold(cur, version)
                    after = projection.settle(cur, after)
                if after is None:
                    return

    def restart(self, version: Version) -> None:
        """Empty a version that is not live and move it back to position zero."""
        projection = self.projection(version)
        with self._lock(version.key), self.store.write() as cur:
            cur.execute(
                f"UPDATE {TRACKING} SET position = 0 WHERE name = ? AND version = ? "
                "AND state <> 'live'",
                [version.name, version.version],
            )
            if cur.rowcount != 1:
                raise KeyError(version.key)
            quarantine.forget(cur, version.name, version.version)
            projection.drop(cur)
            projection.create(cur)

    def _apply_from(
        self,
        version: Version,
        projection: Projection,
        position: int,
        stop: int | None,
        progress: Callable[[int, int], None] | None,
        should_stop: Callable[[], bool] | None,
        big: bool = False,
    ) -> int:
        cap, behind = self.batch_size, 0
        if big:
            cap = max(cap, self.big_batch)
        else:
            head = stop if stop is not None else int(self.app.recorder.max_notification_id() or 0)
            behind = head - position
            if behind > FAR_BEHIND * self.batch_size:
                cap = max(cap, self.big_batch)
        run = _Pass(version, projection, progress, should_stop, cap)
        # Many batches to go (a build, or far behind): keep rows across batches where the
        # projection can. Following the head, each batch is written as it comes.
        many = projection.deferring or behind > KEEP_BEHIND or cap > self.batch_size
        if many and projection.keep():
            seconds = CHECKPOINT_SECONDS if projection.deferring else LIVE_CHECKPOINT_SECONDS
            if not self.store.postgres:
                seconds = min(seconds, SQLITE_CHECKPOINT_SECONDS)
            return self._apply_kept(run, position, stop, seconds)
        return self._apply_each(run, position, stop)

    def _apply_each(self, run: _Pass, position: int, stop: int | None) -> int:
        """A transaction per batch: its rows and the position move together."""
        for batch in self.notifications(position, stop, run.cap):
            with gc_paused():
                decoded = self.decode(run.projection, batch)
                self.commit(run.version, run.projection, position, batch[-1].id, decoded)
            position = batch[-1].id
            run.report(position, decoded)
            if run.stopped():
                break
        return position

    def _apply_kept(self, run: _Pass, position: int, stop: int | None, seconds: float) -> int:
        """Many batches whose projection keeps its folded rows in memory (`Projection.keep`):
        the batches of one checkpoint (CHECKPOINT notifications, or `seconds`) go in one
        transaction, each appending its rows and moving the position as usual, and the kept
        rows are written once at its end (`flush`), so a crash rolls back to the last
        checkpoint with rows and position together. A batch or a flush that raises rolls its
        checkpoint back; those batches are then applied one transaction each, where the
        event that fails is quarantined alone (`_apply`), and keeping resumes after it."""
        batches = self.notifications(position, stop, run.cap)
        try:
            while True:
                start = position
                run.projection.keep()
                try:
                    position, done = self._checkpoint(run, position, batches, seconds)
                except _KeptBatchFailed as failed:
                    log.info(
                        "%s: a batch failed while rows were kept (%s); applying notifications "
                        "%s-%s a batch per transaction",
                        run.version.key,
                        failed.__cause__,
                        start + 1,
                        failed.last,
                    )
                    run.projection.forget()
                    position = self._apply_each(run, start, failed.last)
                    if run.stopped():
                        return position
                    batches = self.notifications(position, stop, run.cap)
                    continue
                if done:
                    return position
        finally:
            run.projection.forget()

    def _checkpoint(
        self, run: _Pass, position: int, batches: Iterator[list[Notification]], seconds: float
    ) -> tuple[int, bool]:
        """One checkpoint's transaction: batches until its bounds, then `flush`. Returns the
        position and whether nothing is left to do (the log's end, or asked to stop)."""
        projection = run.projection
        with self.store.write() as cur:
            began, count = time.monotonic(), 0
            for batch in batches:
                with gc_paused():  # a batch at a time: other threads' garbage waits no longer
                    decoded = self.decode(projection, batch)
                    self._advance(cur, run.version, position, batch[-1].id, decoded)
                    if decoded.events:
                        try:
                            projection.apply(cur, decoded.events)
                        except Exception as error:
                            if quarantine.store_failure(error):
                                raise
                            raise _KeptBatchFailed(batch[-1].id) from error
                position, count = batch[-1].id, count + len(batch)
                run.report(position, decoded)
                if run.stopped():
                    break
                if (
                    count >= CHECKPOINT
                    or time.monotonic() - began >= seconds
                    or projection.holding() > KEEP_ROWS
                ):
                    self._flush(projection, cur, position)
                    return position, False
            self._flush(projection, cur, position)
            return position, True

    @staticmethod
    def _flush(projection: Projection, cur: Cursor, position: int) -> None:
        try:
            with gc_paused():
                projection.flush(cur)
        except Exception as error:  # a draft that cannot be priced, say
            if quarantine.store_failure(error):
                raise
            raise _KeptBatchFailed(position) from error

    def _advance(
        self, cur: Cursor, version: Version, before: int, after: int, decoded: Decoded
    ) -> None:
        """Move the version's position past a batch with a compare-and-set (PositionMoved if
        another runner moved it first), and set aside what of it did not decode."""
        moved = cur.execute(
            f"UPDATE {TRACKING} SET position = ? WHERE name = ? AND version = ? AND position = ?",
            [after, version.name, version.version, before],
        ).rowcount
        if moved != 1:
            raise PositionMoved(version.key)
        for notification, error in decoded.undecodable:
            self._quarantine(cur, version, notification, quarantine.DECODE, error)

    def decode(self, projection: Projection, batch: list[Notification]) -> Decoded:
        decoded = Decoded()
        direct = not (self.app.mapper.cipher or self.app.mapper.compressor)
        for notification in batch:
            topic = topic_name(notification.topic)
            if topic not in projection.topics:
                continue
            try:
                event = None
                if direct:
                    event = decode_direct(notification)
                if event is None:
                    event = self.app.mapper.to_domain_event(notification)
            except Exception as error:  # a stored event this code cannot read: set aside
                decoded.undecodable.append((notification, error))
                continue
            decoded.events.append((notification.id, topic, event))
            decoded.notifications[notification.id] = notification
        return decoded

    def commit(
        self,
        version: Version,
        projection: Projection,
        before: int,
        after: int,
        decoded: Decoded,
    ) -> None:
        with self.store.write() as cur:
            self._advance(cur, version, before, after, decoded)
            if decoded.events:
                self._apply(cur, version, projection, decoded)

    def _apply(
        self, cur: Cursor, version: Version, projection: Projection, decoded: Decoded
    ) -> None:
        """Apply a batch; if it fails, apply its events one by one and set aside those that
        fail alone, so one bad event costs nobody else their rows."""
        try:
            with quarantine.savepoint(cur, "pj_batch"):
                projection.apply(cur, decoded.events)
            return
        except Exception as error:
            if quarantine.store_failure(error):
                raise
            if len(decoded.events) == 1:
                position = decoded.events[0][0]
                notification = decoded.notifications[position]
                self._quarantine(cur, version, notification, quarantine.APPLY, error)
                return
        for event in decoded.events:
            try:
                with quarantine.savepoint(cur):
                    projection.apply(cur, [event])
            except Exception as error:
                if quarantine.store_failure(error):
                    raise
                notification = decoded.notifications[event[0]]
                self._quarantine(cur, version, notification, quarantine.APPLY, error)

    @staticmethod
    def _quarantine(
        cur: Cursor, version: Version, notification: Notification, stage: str, error: Exception
    ) -> None:
        log.warning(
            "%s: quarantined notification %s (%s) at %s: %s: %s",
            version.key,
            notification.id,
            notification.topic,
            stage,
            type(error).__name__,
            error,
        )
        quarantine.record(cur, version.name, version.version, notification, stage, error)

    def retry(self, version: Version, notification_id: int) -> dict[str, Any]:
        """Apply a quarantined notification again (after a fix). On success it leaves the
        quarantine; on failure it stays with the new error and StillQuarantined is raised."""
        projection = self.projection(version)
        page = self.app.recorder.select_notifications(
            start=notification_id, limit=1, stop=notification_id
        )
        failure: Exception | None = None
        with self._lock(version.key), self.store.write() as cur:
            hold(cur, version)
            if (
                not page
                or quarantine.find(cur, version.name, version.version, notification_id) is None
            ):
                raise NotQuarantined(
                    f"notification {notification_id} is not quarantined in {version.key}"
                )
            notification = page[0]
            stage = quarantine.DECODE
            try:
                decoded = self.decode(projection, [notification])
                if decoded.undecodable:
                    raise decoded.undecodable[0][1]
                stage = quarantine.APPLY
                if decoded.events:
                    with quarantine.savepoint(cur):
                        projection.apply(cur, decoded.events)
            except Exception as error:
                if quarantine.store_failure(error):
                    raise
                failure = error
                quarantine.record(cur, version.name, version.version, notification, stage, error)
            else:
                quarantine.forget(cur, version.name, version.version, notification_id)
        if failure is not None:
            kind, message = quarantine.describe(failure)
            raise StillQuarantined(
                f"notification {notification_id} still fails in {version.key}: {kind}: {message}"
            )
        return {
            "name": version.name,
            "version": version.version,
            "key": version.key,
            "notification_id": notification_id,
            "topic": notification.topic,
            "outcome": "applied",
        }

    def _fingerprint(self, version: Version) -> str | None:
        with self.store.read() as cur:
            row = cur.one(
                f"SELECT fingerprint FROM {TRACKING} WHERE name = ? AND version = ?",
                [version.name, version.version],
            )
        if row is None:
            raise KeyError(version.key)
        return None if row["fingerprint"] is None else str(row["fingerprint"])

    def _position(self, version: Version) -> int:
        with self.store.read() as cur:
            row = cur.one(
                f"SELECT position FROM {TRACKING} WHERE name = ? AND version = ?",
                [version.name, version.version],
            )
        if row is None:
            raise KeyError(version.key)
        return int(row["position"])


_gc_guard = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cycle collector off while a batch is decoded and applied (or a checkpoint
    flushed, or a settle chunk priced). Those allocate an object per event and per row, and
    keep many alive (a checkpoint's kept rows): each automatic collection walks them all,
    about a third of a rebuild's time with it on. Nothing they build needs it (their
    garbage has no cycles and goes by reference counting); what any thread leaves in cycles
    meanwhile is collected after the last pause ends, a batch later at most. Pauses from
    several threads nest."""
    global _gc_pauses, _gc_was_enabled
    with _gc_guard:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_guard:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def decode_direct(notification: Notification) -> Any | None:
    """An event from its stored JSON alone (`adapters.stored_json`), upcast like the library's
    mapper does, without its transcoder; None when the state holds what that decoder does not
    know (the mapper then decides)."""
    try:
        state = decode_state(notification.state)
    except UndecodableState:
        return None
    return domain_event(
        resolve_topic(notification.topic),
        state,
        notification.originator_id,
        notification.originator_version,
    )


def hold(cur: Cursor, version: Version) -> None:
    """Take the version's tracking row until the transaction ends: a runner of another
    process (whose commit updates that row first) waits for us."""
    cur.execute(
        f"UPDATE {TRACKING} SET position = position WHERE name = ? AND version = ?",
        [version.name, version.version],
    )


def add_fingerprint_column(cur: Cursor) -> None:
    """Registries created before fingerprints were recorded get the column (left empty, so
    their versions count as of an unknown schema until rebuilt)."""
    if cur.postgres:
        cur.execute(f"ALTER TABLE {TRACKING} ADD COLUMN IF NOT EXISTS fingerprint TEXT")
        return
    columns = {row["name"] for row in cur.all(f"PRAGMA table_info({TRACKING})")}
    if "fingerprint" not in columns:
        cur.execute(f"ALTER TABLE {TRACKING} ADD COLUMN fingerprint TEXT")


def insert_version(cur: Cursor, version: Version) -> None:
    cur.execute(
        f"INSERT INTO {TRACKING} (name, version, logic, state, position, fingerprint) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [
            version.name,
            version.version,
            version.logic,
            version.state,
            version.position,
            version.fingerprint,
        ],
    )


def _weight(event: Any) -> int:
    """Progress counts usage records, the unit that dominates the work; other events count 1."""
    return len(getattr(event, "records", ())) or 1
