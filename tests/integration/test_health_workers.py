"""/health says `degraded`, with the reason, when the projections stop on an error: in this
process, or in the worker process that keeps the read models for `serve --workers N`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from api.bootstrap import Services, build
from api.http.app import create_app
from billing_domain.settings import Settings
from projections.service import ProjectionService
from projections.store import ViewStore
from tests.conftest import Clock
from tests.scenario import at, customer, usage


@pytest.fixture
def external(
    settings: Settings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Services]:
    """An API process that leaves the read models to a worker process."""
    monkeypatch.setenv("BILLING_PROJECTION_WORKER", "external")
    built = build(settings, clock=clock)
    yield built
    built.close()


def health_until(client: Any, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        answer = client.get("/health")
        assert answer.status_code == 200
        body: dict[str, Any] = answer.json()
        if check(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def failing(*_: Any) -> int:
    raise RuntimeError("the views could not be written")


def test_a_runner_stopped_on_an_error_in_this_process_is_degraded(
    settings: Settings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = build(settings, clock=clock)
    try:
        customer(services.app, "acme")
        with TestClient(create_app(services)) as client:
            assert health_until(client, lambda b: b["status"] == "ok")["status"] == "ok"
            monkeypatch.setattr(services.read_models.runner, "catch_up", failing)
            services.app.record_usage([usage("a1", 5, at(2, month=11))])
            body = health_until(client, lambda b: b["status"] == "degraded")
            assert body["status"] == "degraded"
            assert body["reasons"] == [
                "projection runner failed: RuntimeError: the views could not be written"
            ]
            monkeypatch.undo()
            assert health_until(client, lambda b: b["status"] == "ok")["reasons"] == []
    finally:
        services.close()


def test_a_missing_or_failing_projection_worker_process_is_degraded(
    external: Services, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer(external.app, "acme")
    with TestClient(create_app(external)) as client:
        body = client.get("/health").json()
        assert body["status"] == "degraded"
        assert any("no projection worker has reported" in r for r in body["reasons"])

        worker = ProjectionService(external.app, ViewStore.for_settings(settings))
        worker.start_background()
        try:
            body = health_until(client, lambda b: b["status"] == "ok")
            assert (body["status"], body["reasons"]) == ("ok", [])

            monkeypatch.setattr(worker.runner, "catch_up", failing)
            external.app.record_usage([usage("a1", 5, at(2, month=11))])
            body = health_until(client, lambda b: b["status"] == "degraded")
            assert body["status"] == "degraded"
            assert [r.split(" failed: ")[1] for r in body["reasons"]] == [
                "RuntimeError: the views could not be written"
            ]
            assert body["reasons"][0].startswith(f"projection worker {worker.heartbeat.worker}")
        finally:
            worker.close()
        # A stopped worker leaves no heartbeat: nothing keeps the views current.
        body = client.get("/health").json()
        assert body["status"] == "degraded"
        assert any("no projection worker has reported" in r for r in body["reasons"])


def test_a_worker_that_stops_reporting_goes_stale(external: Services, settings: Settings) -> None:
    worker = ProjectionService(external.app, ViewStore.for_settings(settings))
    worker.heartbeat.beat(None)
    external.read_models.stale = 0.2
    assert external.read_models.health()["status"] == "ok"
    time.sleep(0.5)
    health = external.read_models.health()
    assert health["status"] == "degraded"
    assert health["reasons"][0].startswith("no projection worker has reported within 0.2 s")
    worker.store.close()
