"""A real `billing projections run` worker killed mid-run resumes without double counting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from api.bootstrap import Services, build
from billing_domain.ids import invoice_id
from billing_domain.settings import Settings
from tests.conftest import Clock
from tests.integration.test_projections import same_invoice
from tests.scenario import at, customer, usage


@pytest.fixture
def services(settings: Settings, clock: Clock) -> Iterator[Services]:
    built = build(settings, clock=clock)
    yield built
    built.close()


def assert_views_match_replay(services: Services, periods: Sequence[tuple[str, str]]) -> None:
    for customer_id, period in periods:
        replay = services.app.invoice(customer_id, period)
        same_invoice(services.read_models.invoice(invoice_id(customer_id, period)), replay)


def test_a_killed_worker_process_resumes_without_double_counting(
    services: Services, settings: Settings, store: str
) -> None:
    customer(services.app, "acme")
    for batch in range(40):
        services.app.record_usage(
            [usage(f"e{batch}-{n}", n % 7 + 1, at(1 + n % 20, 11)) for n in range(500)]
        )
    head = services.read_models.max_position()
    env = {
        **os.environ,
        "BILLING_DATABASE_URL": settings.database_url,
        "BILLING_PROJECTION_BATCH": "2",
    }
    worker = subprocess.Popen(
        [sys.executable, "-c", "from api.cli import main; main()", "projections", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    blocker = None
    try:
        deadline = time.monotonic() + 30
        while services.read_models.runner.live("invoices").position < head // 3:
            assert time.monotonic() < deadline, "worker made no progress"
            time.sleep(0.01)
        if store == "postgres":
            blocker = hold_worker_mid_transaction(settings.database_url)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        if blocker is not None:
            blocker.close()
    if store == "postgres":
        assert services.read_models.runner.live("invoices").position < head
    services.read_models.catch_up()
    assert_views_match_replay(services, [("acme", "2026-11")])
    assert services.read_models.usage("acme", "2026-11")["items"][0]["quantity"] == str(
        sum(n % 7 + 1 for n in range(500)) * 40
    )


def hold_worker_mid_transaction(database_url: str) -> Any:
    """Lock the draft row the worker writes last in a batch, and return once the worker is
    waiting on it: its balances and deltas for that batch are written but not committed."""
    import psycopg

    schema = database_url.rpartition("schema=")[2]
    blocker = psycopg.connect(database_url.partition("?")[0], options=f"-c search_path={schema}")
    try:
        blocker.execute("SELECT * FROM pj_invoices_v1_invoices FOR UPDATE")
        me = blocker.execute("SELECT pg_backend_pid()").fetchone()[0]
        deadline = time.monotonic() + 10
        # Only a session blocked by this one counts: other tests may be waiting on locks too.
        while not blocker.execute(
            "SELECT 1 FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", [me]
        ).fetchone():
            assert time.monotonic() < deadline, "the worker never reached the locked row"
            time.sleep(0.01)
    except BaseException:
        blocker.close()  # an open lock would hang the schema's teardown
        raise
    return blocker
