"""Projections survive crashes and concurrent runners, and keep up in the background."""

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
from projections.ledger import InvoicesProjection
from projections.runner import Runner
from tests.conftest import Clock
from tests.scenario import at, customer, usage
from tests.test_projections import a_month_of_business, same_invoice


@pytest.fixture
def services(settings: Settings, clock: Clock) -> Iterator[Services]:
    built = build(settings, clock=clock)
    yield built
    built.close()


class CrashAfter(InvoicesProjection):
    """Dies inside its handler once it has written some rows of a batch. The process exits
    (SystemExit, as a signal handler would): a crash, not an event the handlers cannot
    apply, so nothing is quarantined and the batch rolls back whole."""

    def __init__(self, version: int, events_before_crash: int) -> None:
        super().__init__(version)
        self.left = events_before_crash

    def apply(self, cur: Any, events: Sequence[tuple[int, str, Any]]) -> None:
        if self.left < len(events):
            super().apply(cur, events[: max(self.left, 1)])
            raise SystemExit("worker killed mid-batch")
        self.left -= len(events)
        super().apply(cur, events)


def assert_views_match_replay(services: Services, periods: Sequence[tuple[str, str]]) -> None:
    for customer_id, period in periods:
        replay = services.app.invoice(customer_id, period)
        same_invoice(services.read_models.invoice(invoice_id(customer_id, period)), replay)


ALL = (("acme", "2026-10"), ("acme", "2026-11"), ("globex", "2026-10"))


@pytest.mark.parametrize("events_before_crash", [3, 11])
def test_a_crash_mid_batch_then_restart_counts_nothing_twice(
    services: Services, clock: Clock, events_before_crash: int
) -> None:
    a_month_of_business(services, clock)
    runner = Runner(services.app, services.read_models.store, batch_size=4)
    live = runner.live("invoices")
    with pytest.raises(SystemExit, match="mid-batch"):
        runner.catch_up(live, projection=CrashAfter(live.version, events_before_crash))
    stopped_at = runner.live("invoices").position
    assert 0 < stopped_at < services.read_models.max_position()
    assert stopped_at % 4 == 0 or stopped_at == services.read_models.max_position()
    services.read_models.catch_up()
    assert_views_match_replay(services, ALL)


def test_two_runners_on_one_view_apply_each_batch_once(
    services: Services, clock: Clock, settings: Settings
) -> None:
    import threading

    a_month_of_business(services, clock)
    other = build(settings, clock=clock)
    try:
        threads = [
            threading.Thread(target=m.catch_up) for m in (services.read_models, other.read_models)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.close()
    assert_views_match_replay(services, ALL)


def test_the_background_runner_gives_read_your_writes(services: Services, clock: Clock) -> None:
    customer(services.app, "acme")
    services.start_background()
    services.app.record_usage([usage("e1", 1500, at(20, 11))])
    assert services.read_models.wait(services.read_models.max_position(), timeout=10)
    items = services.read_models.usage("acme", "2026-11")["items"]
    assert items[0]["quantity"] == "1500"
    assert items[0]["amount"] == services.app.invoice("acme", "2026-11")["lines"][0]["amount"]


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
