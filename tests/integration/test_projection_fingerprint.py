"""A live projection version whose tables were built for another schema is never written:
health names it with the fix, and the runner rebuilds it beside and switches reads."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from api.bootstrap import Services, build
from billing_domain.ids import invoice_id
from billing_domain.settings import Settings
from projections.errors import SchemaMismatch
from projections.runner import TRACKING
from tests.conftest import Clock
from tests.integration.test_projections import a_month_of_business


@pytest.fixture
def services(settings: Settings, clock: Clock) -> Iterator[Services]:
    built = build(settings, clock=clock)
    yield built
    built.close()


def stamp_fingerprint(services: Services, fingerprint: str | None) -> None:
    with services.read_models.store.write() as cur:
        cur.execute(f"UPDATE {TRACKING} SET fingerprint = ? WHERE name = 'invoices'", [fingerprint])


def restarted(services: Services, settings: Settings, clock: Clock) -> Services:
    services.close()
    return build(settings, clock=clock)


def test_every_version_records_its_fingerprint(services: Services) -> None:
    models = services.read_models
    version = models.rebuilds.begin("invoices")
    for row in models.status():
        projection = models.runner.projection(models.runner.versions()[0])
        assert row["fingerprint"] is not None
        assert row["schema"] == "ok"
    assert models.runner.versions()[0].fingerprint == projection.fingerprint()
    built = next(v for v in models.runner.versions() if v.version == version.version)
    assert built.fingerprint == models.runner.projection(built).fingerprint()


@pytest.mark.parametrize("stored", ["0123456789abcdef", None])
def test_a_version_of_another_schema_is_not_written_and_is_rebuilt(
    services: Services,
    settings: Settings,
    clock: Clock,
    stored: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stamp_fingerprint(services, stored)
    services = restarted(services, settings, clock)
    try:
        models = services.read_models
        a_month_of_business(services, clock)
        with caplog.at_level(logging.ERROR, logger="projections.service"):
            models.catch_up()
        assert models.runner.live("invoices").position == 0  # nothing written into it
        assert any("invoices_v1" in r.getMessage() for r in caplog.records)
        with pytest.raises(SchemaMismatch, match="billing projections rebuild invoices --switch"):
            models.runner.catch_up(models.runner.live("invoices"))
        health = models.health()
        assert health["status"] == "degraded"
        reason = next(r for r in health["reasons"] if "invoices_v1" in r)
        assert "billing projections rebuild invoices --switch" in reason
        row = next(r for r in models.status() if r["key"] == "invoices_v1")
        assert row["schema"] == "mismatch" and row["fingerprint"] == stored
        audit = models.runner.live("audit")
        assert audit.position == models.max_position()  # other projections keep up

        models.start_background()
        deadline = time.monotonic() + 30
        while models.runner.live("invoices").version == 1:
            assert time.monotonic() < deadline, models.health()
            time.sleep(0.05)
        live = models.runner.live("invoices")
        assert live.version == 2
        assert live.fingerprint == models.runner.projection(live).fingerprint()
        assert models.wait(models.max_position(), timeout=10)
        assert (
            models.invoice(invoice_id("acme", "2026-11"))["total"]
            == services.app.invoice("acme", "2026-11")["total"]
        )
        assert models.health()["status"] == "ok"
    finally:
        services.close()


def test_without_automatic_rebuild_the_projection_is_refused(
    services: Services, settings: Settings, clock: Clock
) -> None:
    stamp_fingerprint(services, "0123456789abcdef")
    services = restarted(services, settings, clock)
    try:
        models = services.read_models
        models.auto_rebuild = False
        a_month_of_business(services, clock)
        models.start_background()
        time.sleep(0.5)
        assert models.runner.live("invoices").version == 1
        assert models.runner.live("invoices").position == 0
        reason = next(r for r in models.health()["reasons"] if "invoices_v1" in r)
        assert "not written" in reason and "does not rebuild it" in reason
    finally:
        services.close()


def test_a_registry_from_before_fingerprints_gains_the_column(
    services: Services, settings: Settings, clock: Clock
) -> None:
    with services.read_models.store.write() as cur:
        cur.execute(f"ALTER TABLE {TRACKING} DROP COLUMN fingerprint")
    services = restarted(services, settings, clock)
    try:
        models = services.read_models
        assert {v.fingerprint for v in models.runner.versions()} == {None}
        assert {r["schema"] for r in models.status()} == {"mismatch"}
        # a second start finds the column there (the ALTER is idempotent)
        services = restarted(services, settings, clock)
        models = services.read_models
        assert models.health()["status"] == "degraded"
    finally:
        services.close()
