"""Deterministic aggregate ids: the store's (originator_id, version) key makes them unique."""

from __future__ import annotations

from functools import lru_cache
from uuid import UUID, uuid5

NAMESPACE = UUID("6f1c2a0e-4b7d-5c1e-9a3f-2d8b7e6c5a41")
# Periods' and invoices' ids are asked for once per usage event and per draft: the latest
# are remembered (a UUID is immutable, so sharing one is safe).
RECENT_IDS = 65_536


def customer_uuid(customer_id: str) -> UUID:
    return uuid5(NAMESPACE, f"customer:{customer_id}")


def plan_uuid(plan_id: str) -> UUID:
    return uuid5(NAMESPACE, f"plan:{plan_id}")


@lru_cache(maxsize=RECENT_IDS)
def period_uuid(customer_id: str, period: str) -> UUID:
    return uuid5(NAMESPACE, f"period:{customer_id}:{period}")


def emitter_uuid(name: str) -> UUID:
    return uuid5(NAMESPACE, f"emitter:{name}")


def key_uuid(key_id: str) -> UUID:
    return uuid5(NAMESPACE, f"key:{key_id}")


@lru_cache(maxsize=RECENT_IDS)
def invoice_id(customer_id: str, period: str) -> str:
    return f"inv_{period_uuid(customer_id, period).hex}"


def meter_uuid(meter: str) -> UUID:
    return uuid5(NAMESPACE, f"meter:{meter}")


def external_id_uuid(system: str, external_id: str) -> UUID:
    return uuid5(NAMESPACE, f"external_id:{system}:{external_id}")
