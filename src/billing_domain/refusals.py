"""Refusals, counted in memory and kept in the audit log as one fact per kind and window.

The first refusal of authority (401, 403, 429) of a kind in a window is written at once, so a
lone one is visible immediately; bad input and the repeats are counted and written as one
fact with `count`, `first_at` and `at` (the last) when the window ends, or on close.
So a flood of refused requests adds a few facts to the log, not one per request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billing_domain.identity import AuditFact, Principal

log = logging.getLogger("billing.refusals")

ANONYMOUS = Principal(emitter="anonymous", key_id="-", role="none")
DEFAULT_WINDOW_SECONDS = 10.0
DEFAULT_MAX_KINDS = 1000
DEFAULT_AT_ONCE_PER_WINDOW = 100
SAMPLE_SIZE = 10
# Details that differ on every request; kept as a sample so they do not split the count.
_PER_REQUEST = ("event_id",)
Kind = tuple[str, str, str, str, tuple[tuple[str, Any], ...]]  # action, emitter, key, reason
_OTHER_KINDS = "more kinds of refusal in this window than the log keeps apart"
_OTHERS: Kind = ("request.refused", "*", "*", _OTHER_KINDS, ())


@dataclass
class _Tally:
    count: int
    first_at: datetime
    last_at: datetime
    samples: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, at: datetime, detail: dict[str, Any]) -> None:
        self.count += 1
        self.first_at = min(self.first_at, at)
        self.last_at = max(self.last_at, at)
        for name in _PER_REQUEST:
            if name in detail:
                seen = self.samples.setdefault(f"{name}s", [])
                if len(seen) < SAMPLE_SIZE and detail[name] not in seen:
                    seen.append(detail[name])

    def merge(self, other: _Tally) -> None:
        self.count += other.count
        self.first_at = min(self.first_at, other.first_at)
        self.last_at = max(self.last_at, other.last_at)


MAX_TEXT = 256


def _bounded(value: Any) -> Any:
    """A detail as the caller sent it, cut short: a refusal must not store a flood's payload."""
    if value is None or isinstance(value, bool | int):
        return value
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


def _kind_of(who: Principal, action: str, reason: str, detail: dict[str, Any]) -> Kind:
    kept = {k: v for k, v in detail.items() if k not in _PER_REQUEST}
    return (action, who.emitter, who.key_id, reason, tuple(sorted(kept.items())))


class RefusalLog:
    """Counts refusals per (action, emitter, key id, reason, detail) in bounded memory:
    at most 2 * max_kinds + 1 counts, and at_once_per_window facts written at once."""

    def __init__(
        self,
        save: Callable[[list[AuditFact]], object],
        *,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        max_kinds: int = DEFAULT_MAX_KINDS,
        at_once_per_window: int = DEFAULT_AT_ONCE_PER_WINDOW,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._save = save
        self.window_seconds = window_seconds
        self.max_kinds = max_kinds
        self.at_once_per_window = at_once_per_window
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._seen: set[Kind] = set()
        self._pending: dict[Kind, _Tally] = {}
        self._written_at_once = 0
        self._window_started = monotonic()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def note(
        self,
        principal: Principal | None,
        action: str,
        reason: str,
        detail: dict[str, Any],
        at: datetime,
        *,
        at_once: bool = True,
    ) -> AuditFact | None:
        """Count a refusal; the first of its kind in a window comes back, to be saved now,
        unless `at_once` is False (bad input: counted, written when the window ends)."""
        who = principal or ANONYMOUS
        reason = _bounded(reason)
        detail = {k: _bounded(v) for k, v in detail.items()}
        kind = _kind_of(who, action, reason, detail)
        with self._lock:
            due = self._monotonic() - self._window_started >= self.window_seconds
            if (
                at_once
                and kind not in self._seen
                and self._written_at_once < self.at_once_per_window
            ):
                if len(self._seen) < self.max_kinds:
                    self._seen.add(kind)
                self._written_at_once += 1
                first = AuditFact(
                    action=action,
                    emitter=who.emitter,
                    key_id=who.key_id,
                    reason=reason,
                    detail=detail,
                    at=at,
                    count=1,
                    first_at=at,
                )
            else:
                first = None
                if kind not in self._pending and len(self._pending) >= self.max_kinds:
                    # Past the limit a caller's refusals share one count; past twice it, all do.
                    kind = (action, who.emitter, who.key_id, _OTHER_KINDS, ())
                    if kind not in self._pending and len(self._pending) >= 2 * self.max_kinds:
                        kind = _OTHERS
                tally = self._pending.get(kind)
                if tally is None:
                    tally = self._pending[kind] = _Tally(0, at, at)
                tally.add(at, detail)
        if due:
            self.flush()
        return first

    def record(
        self,
        principal: Principal | None,
        action: str,
        reason: str,
        detail: dict[str, Any],
        at: datetime,
    ) -> None:
        """Count a refusal, saving it at once when it is the first of its kind in the window."""
        first = self.note(principal, action, reason, detail, at)
        if first is not None:
            tally = _Tally(0, at, at)
            tally.add(at, first.detail)
            kind = _kind_of(principal or ANONYMOUS, action, first.reason, first.detail)
            self._write([first], {kind: tally})

    def flush(self) -> int:
        """Write what was counted since the last flush; returns the number of facts written."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._seen = set()
            self._written_at_once = 0
            self._window_started = self._monotonic()
        facts = [
            AuditFact(
                action=action,
                emitter=emitter,
                key_id=key_id,
                reason=reason,
                detail={**dict(kept), **tally.samples},
                at=tally.last_at,
                count=tally.count,
                first_at=tally.first_at,
            )
            for (action, emitter, key_id, reason, kept), tally in pending.items()
        ]
        if facts:
            self._write(facts, pending)
        return len(facts)

    def _write(self, facts: list[AuditFact], pending: dict[Kind, _Tally]) -> None:
        try:
            self._save(facts)
        except Exception as error:  # the audit must not turn a refusal into a 500
            log.warning("refusals not yet written (%s); kept for the next flush", type(error))
            with self._lock:
                for kind, tally in pending.items():
                    if kind in self._pending:
                        self._pending[kind].merge(tally)
                    elif len(self._pending) < self.max_kinds:
                        self._pending[kind] = tally

    @property
    def pending(self) -> int:
        """Refusals counted and not yet written."""
        with self._lock:
            return sum(t.count for t in self._pending.values())

    def start(self) -> None:
        """Flush every window in a background thread, until close."""
        if self._timer is None:
            self._timer = threading.Thread(target=self._run, name="refusal-log", daemon=True)
            self._timer.start()

    def _run(self) -> None:
        while not self._stop.wait(self.window_seconds):
            self.flush()

    def close(self) -> None:
        """Stop the background flush and write what is left."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=self.window_seconds + 5)
            self._timer = None
        self.flush()
