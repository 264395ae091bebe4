"""Projections survive crashes and concurrent runners, and keep up in the background."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from api.bootstrap import Services, build
from billing_domain.ids import invoice_id
from billing_domain.settings import Settings
from projections.ledger import InvoicesProjection
from projections.runner import Runner
from tests.conftest import Clock
from tests.integration.test_projections import a_month_of_business, same_invoice
from tests.scenario import at, customer, usage


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
