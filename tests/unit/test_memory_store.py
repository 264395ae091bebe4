"""The in-memory store keeps the promise the databases' primary key makes: a key is held once,
and a write holding a key already held stores nothing at all."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from adapters.memory import MemoryBillingRecorder
from billing_domain.ports import KeyRow
from billing_domain.settings import Settings


def event(originator_id: UUID, version: int) -> StoredEvent:
    return StoredEvent(originator_id, version, "tests:Event", b"{}")


def key(name: str, originator_id: UUID, version: int, payload: str = "h1") -> KeyRow:
    return KeyRow("acme", "usage", name, payload, originator_id, version, "api_calls", "1")


def test_memory_url_selects_the_in_memory_store() -> None:
    env = Settings(database_url="memory://").eventsourcing_env()
    assert env["PERSISTENCE_MODULE"] == "adapters.memory:MemoryBillingFactory"


def test_a_write_holding_a_key_already_held_stores_nothing() -> None:
    recorder = MemoryBillingRecorder()
    period = uuid4()
    recorder.insert_events([event(period, 1)], keys=[key("e1", period, 1)])
    with pytest.raises(IntegrityError):
        recorder.insert_events(
            [event(period, 2)], keys=[key("e2", period, 2), key("e1", period, 2, "h2")]
        )
    assert recorder.max_notification_id() == 1
    assert set(recorder.select_keys("usage", [("acme", "e1"), ("acme", "e2")])) == {("acme", "e1")}
    assert recorder.select_keys("usage", [("acme", "e1")])[("acme", "e1")].payload_hash == "h1"


def test_the_same_key_twice_in_one_write_is_refused() -> None:
    recorder = MemoryBillingRecorder()
    period = uuid4()
    with pytest.raises(IntegrityError):
        recorder.insert_events([event(period, 1)], keys=[key("e1", period, 1)] * 2)
    assert recorder.max_notification_id() is None
    assert recorder.keys_of([period]) == []


def test_keys_are_found_by_kind_by_aggregate_and_newer_versions_are_seen() -> None:
    recorder = MemoryBillingRecorder()
    a, b = uuid4(), uuid4()
    recorder.insert_events([event(a, 1), event(b, 1)], keys=[key("e1", a, 1), key("e2", b, 1)])
    recorder.insert_events([event(a, 2)])
    assert recorder.select_keys("compensation", [("acme", "e1")]) == {}
    assert [k.key for k in recorder.keys_of([b])] == ["e2"]
    assert recorder.newer_than({a: 1, b: 1, uuid4(): 0}) == {a}
