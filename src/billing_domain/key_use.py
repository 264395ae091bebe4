"""When each key was last used, kept in memory per process and written at most once a minute.

Authentication notes every use here (`touch`), without touching the store. A flush (every
`FLUSH_SECONDS` from a background thread, and on close) writes one small `KeyUse` for each
key used in a minute not yet written. Its aggregate id is derived from the key and the
minute, so however many processes use a key, the store keeps at most one per key per minute:
a second writer of the same minute is refused by the store's key and simply drops its note.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from billing_domain.ids import NAMESPACE

FLUSH_SECONDS = 5.0
MAX_KEYS = 100_000
log = logging.getLogger(__name__)


def minute_of(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M")


def key_use_uuid(key_id: str, minute: str) -> UUID:
    return uuid5(NAMESPACE, f"key-use:{key_id}:{minute}")


class KeyUse(Aggregate):
    """A key was used in this minute; `used_at` is the last use the writer had seen."""

    class Noted(Aggregate.Created):
        key_id: str
        used_at: datetime

    @staticmethod
    def create_id(key_id: str, used_at: datetime, **_: Any) -> UUID:
        return key_use_uuid(key_id, minute_of(used_at))

    @event(Noted)
    def __init__(self, key_id: str, used_at: datetime) -> None:
        self.key_id = key_id
        self.used_at = used_at


class KeyUseLog:
    """The last use of each key seen by this process, and the minute last written for it."""

    def __init__(
        self,
        save: Callable[..., object],
        *,
        flush_seconds: float = FLUSH_SECONDS,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._save = save
        self.flush_seconds = flush_seconds
        self.max_keys = max_keys
        self._last: dict[str, datetime] = {}
        self._written: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def touch(self, key_id: str, at: datetime) -> None:
        with self._lock:
            previous = self._last.get(key_id)
            if previous is None:
                if len(self._last) >= self.max_keys:
                    self._drop_written()
                self._last[key_id] = at
            elif at > previous:
                self._last[key_id] = at

    def _drop_written(self) -> None:
        """Forget keys whose last use is already written, to stay within max_keys."""
        for key_id in [k for k, at in self._last.items() if self._written.get(k) == minute_of(at)]:
            del self._last[key_id]
            self._written.pop(key_id, None)

    def last_used(self, key_id: str) -> datetime | None:
        with self._lock:
            return self._last.get(key_id)

    def snapshot(self) -> dict[str, datetime]:
        with self._lock:
            return dict(self._last)

    def flush(self) -> int:
        """Write the uses of minutes not yet written; returns how many were written."""
        with self._lock:
            due = [
                (key_id, at)
                for key_id, at in self._last.items()
                if self._written.get(key_id) != minute_of(at)
            ]
        if not due:
            return 0
        notes = [KeyUse(key_id=key_id, used_at=at) for key_id, at in due]
        try:
            self._save(*notes)
            written = len(notes)
        except IntegrityError:
            # Another process wrote one of these minutes first: write the others one by one.
            written = 0
            for note in notes:
                try:
                    self._save(note)
                    written += 1
                except IntegrityError:
                    pass
        with self._lock:
            for key_id, at in due:
                self._written[key_id] = minute_of(at)
        return written

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="key-use", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # an outage: the uses stay in memory for the next flush
                log.warning("key use not yet written; kept for the next flush", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_seconds + 5)
            self._thread = None
        try:
            self.flush()
        except Exception:
            log.warning("key use not written on close", exc_info=True)
