"""The in-memory store: the library's POPO recorders plus the idempotency keys, for unit tests
of the aggregates and use cases with no database (`BILLING_DATABASE_URL=memory://`).

Keys are written under the recorder's lock with the events they guard, and a key already held
(or given twice in one write) refuses the whole write before anything is inserted, as the
databases' primary key does. Nothing outlives the process; the read models need SQL and are
not built on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, IntegrityError, StoredEvent
from eventsourcing.popo import POPOApplicationRecorder, POPOFactory

from billing_domain.ports import KeyRow, ordered_keys

_Key = tuple[str, str, str]


def _key_of(row: KeyRow) -> _Key:
    return (row.customer_id, row.kind, row.key)


class MemoryBillingRecorder(POPOApplicationRecorder):
    def __init__(self) -> None:
        super().__init__()
        self._keys: dict[_Key, KeyRow] = {}

    def _assert_uniqueness(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        super()._assert_uniqueness(stored_events, **kwargs)
        seen: set[_Key] = set()
        for row in kwargs.get("keys") or ():
            key = _key_of(row)
            if key in self._keys or key in seen:
                msg = f"key already recorded: {key}"
                raise IntegrityError(msg)
            seen.add(key)

    def _update_table(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        notification_ids = super()._update_table(stored_events, **kwargs)
        for row in ordered_keys(kwargs.get("keys") or ()):
            self._keys[_key_of(row)] = row
        return notification_ids

    def newer_than(self, versions: dict[UUID, int]) -> set[UUID]:
        """The aggregates, of those given with a version, that have events after it."""
        with self._database_lock:
            index = self._stored_events_index
            return {
                originator_id
                for originator_id, version in versions.items()
                if max(index.get(str(originator_id), ()), default=0) > version
            }

    def events_at(self, places: Sequence[tuple[UUID, int]]) -> list[StoredEvent]:
        """The stored events at these (originator id, version) places."""
        with self._database_lock:
            index = self._stored_events_index
            return [
                self._stored_events[index[str(originator_id)][version]]
                for originator_id, version in places
                if version in index.get(str(originator_id), {})
            ]

    def keys_of(self, originator_ids: Sequence[UUID]) -> list[KeyRow]:
        """Every key row pointing at these aggregates (the reconciliation's index check)."""
        wanted = set(originator_ids)
        with self._database_lock:
            return [row for row in self._keys.values() if row.originator_id in wanted]

    def select_keys(
        self, kind: str, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], KeyRow]:
        with self._database_lock:
            return {
                (customer_id, key): self._keys[(customer_id, kind, key)]
                for customer_id, key in pairs
                if (customer_id, kind, key) in self._keys
            }


class MemoryBillingFactory(POPOFactory):
    """The library's POPO factory, whose application recorder also holds the keys."""

    def application_recorder(self) -> ApplicationRecorder:
        return MemoryBillingRecorder()
