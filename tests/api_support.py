"""An HTTP client over a freshly built service, with keys for every role."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from litestar.testing import TestClient

from api.bootstrap import Services, build
from api.http.app import create_app

ADMIN = {"Authorization": "Bearer test-admin-key"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def http(settings: Any, clock: Any) -> Iterator[tuple[TestClient[Any], Services]]:
    services = build(settings, clock=clock)
    try:
        with TestClient(create_app(services, background=False)) as client:
            yield client, services
    finally:
        services.close()


def setup_acme(client: TestClient[Any]) -> None:
    assert (
        client.post(
            "/v1/customers", json={"customer_id": "acme", "name": "Acme"}, headers=ADMIN
        ).status_code
        == 201
    )
    assert (
        client.post(
            "/v1/plans",
            headers=ADMIN,
            json={
                "plan_id": "std",
                "currency": "USD",
                "charges": [
                    {
                        "meter": "api_calls",
                        "aggregation": "sum",
                        "model": "graduated",
                        "tiers": [
                            {"up_to": 1000, "unit_amount": "0.01"},
                            {"up_to": None, "unit_amount": "0.005", "flat_amount": "2"},
                        ],
                    }
                ],
            },
        ).status_code
        == 201
    )
    assert (
        client.put(
            "/v1/customers/acme/subscription",
            headers=ADMIN,
            json={"plan_id": "std", "effective_from": "2026-01-01T00:00:00Z"},
        ).status_code
        == 200
    )


def event(
    event_id: str, quantity: Any = "1", occurred_at: str = "2026-10-05T10:00:00Z", **overrides: Any
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer_id": "acme",
        "meter": "api_calls",
        "quantity": quantity,
        "occurred_at": occurred_at,
        "properties": {},
        **overrides,
    }
