"""What the application needs of its event store beyond the library's recorder: idempotency
keys written in the same transaction as the events they guard, and batch look-ups.

A key is (customer_id, kind, key): a usage event id, a compensation id or an adjustment id.
The store's primary key is what refuses a second record, also when two processes race; the
application then re-reads the keys and answers duplicate or conflict. Each store implements
`KeyStore` in its own adapter module (`adapters.sqlite`, `adapters.postgres`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from eventsourcing.persistence import StoredEvent


@dataclass(frozen=True)
class KeyRow:
    customer_id: str
    kind: str
    key: str
    payload_hash: str
    originator_id: UUID
    originator_version: int
    meter: str
    quantity: str


class KeyStore(Protocol):
    def select_keys(
        self, kind: str, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], KeyRow]: ...

    def keys_of(self, originator_ids: Sequence[UUID]) -> list[KeyRow]: ...

    def newer_than(self, versions: dict[UUID, int]) -> set[UUID]: ...

    def events_at(self, places: Sequence[tuple[UUID, int]]) -> list[StoredEvent]:
        """The stored events at these (originator id, version) places, in one read."""


def ordered_keys(keys: Iterable[KeyRow]) -> list[KeyRow]:
    """A fixed order means two writers never wait on each other's keys in opposite orders."""
    return sorted(keys, key=lambda k: (k.customer_id, k.kind, k.key))
