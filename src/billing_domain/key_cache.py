"""Keys and emitters as authentication reads them, cached per process, invalidated from the log.

Authentication would otherwise load a Key aggregate (and its emitter) from the event store on
every request. Here each process keeps what it loaded, keyed by aggregate id, and follows the
log for the events of those aggregates: a poll (every `POLL_SECONDS`, by a background thread)
selects the notifications whose topics are Key and Emitter events after the last position it
saw and evicts their aggregates, so the next request loads them again.

The bound on staleness does not rest on the thread: an entry is only served while the last
poll *started* less than `MAX_AGE_SECONDS` ago (everything committed before a poll starts is
seen by it, because the log's notification ids are visible in commit order). When the thread
is late or not running, the request polls first. So a revoked key or grant stops working in
every process within `MAX_AGE_SECONDS` plus one poll's duration of its commit.

Writes made by this process evict at once (`evict`), so its own revocations take effect
before the answer to the revoking request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.domain import CanMutateAggregate
from eventsourcing.utils import get_topic

POLL_SECONDS = 0.25
MAX_AGE_SECONDS = 0.75
MAX_ENTRIES = 50_000
PAGE = 1000
log = logging.getLogger(__name__)

_MISSING = object()


def event_topics(*aggregate_classes: type) -> list[str]:
    """The topics of every event class declared on these aggregate classes (including events
    added later, such as a rotation or an offboarding, without listing them here)."""
    topics: set[str] = set()
    for cls in aggregate_classes:
        for name in dir(cls):
            value = getattr(cls, name, None)
            if (
                isinstance(value, type)
                and issubclass(value, CanMutateAggregate)
                and value.__qualname__.startswith(cls.__qualname__ + ".")
            ):
                topics.add(get_topic(value))
    return sorted(topics)


class KeyCache:
    """Values derived from aggregates (a Key, an emitter's grants), per aggregate id."""

    def __init__(
        self,
        recorder: Any,
        topics: Sequence[str],
        *,
        poll_seconds: float = POLL_SECONDS,
        max_age: float = MAX_AGE_SECONDS,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.recorder = recorder
        self.topics = list(topics)
        self.poll_seconds = poll_seconds
        self.max_age = max_age
        self.max_entries = max_entries
        self._entries: dict[UUID, Any] = {}
        self._position: int | None = None
        self._polled_at = float("-inf")  # monotonic time the last successful poll started
        self._generation = 0  # moves whenever something is evicted
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0
        self.loads = 0

    # Reading ------------------------------------------------------------------------------

    def get(self, aggregate_id: UUID, load: Callable[[UUID], Any]) -> Any:
        """The cached value for this aggregate, or `load(aggregate_id)` (kept for next time
        unless the aggregate changed while it was loading)."""
        if time.monotonic() - self._polled_at > self.max_age:
            self.poll()  # the poller is late or not running: catch up before trusting entries
        value = self._entries.get(aggregate_id, _MISSING)
        if value is not _MISSING:
            return value
        generation = self._generation
        value = load(aggregate_id)
        self.loads += 1
        with self._lock:
            if self._generation == generation:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[aggregate_id] = value
        return value

    # Invalidation -------------------------------------------------------------------------

    def evict(self, aggregate_ids: Iterable[UUID]) -> None:
        with self._lock:
            self._generation += 1
            for aggregate_id in aggregate_ids:
                self._entries.pop(aggregate_id, None)

    def poll(self) -> int:
        """Evict the aggregates that have new Key or Emitter events in the log; returns how
        many notifications were read. Store errors propagate (the caller decides)."""
        with self._poll_lock:
            started = time.monotonic()
            if self._position is None:
                # Entries loaded from now on reflect everything up to here.
                self._position = int(self.recorder.max_notification_id() or 0)
                self.evict(list(self._entries))
                self._polled_at = started
                return 0
            seen = 0
            while True:
                page = self.recorder.select_notifications(
                    self._position, PAGE, topics=self.topics, inclusive_of_start=False
                )
                if page:
                    self.evict({UUID(str(n.originator_id)) for n in page})
                    self._position = page[-1].id
                    seen += len(page)
                if len(page) < PAGE:
                    break
            self._polled_at = started
            self.polls += 1
            return seen

    # The poller -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Poll from a daemon thread, so requests never wait for the store."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="key-cache", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # an outage: requests poll themselves and answer 503
                log.warning("key cache poll failed; retrying", exc_info=True)
                self._stop.wait(1.0)
            self._stop.wait(self.poll_seconds)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
