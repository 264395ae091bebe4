"""Unit tests: the aggregates and the application's use cases on the in-memory store, with a
fixed clock and no database (`BILLING_DATABASE_URL=memory://`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from billing_domain.application import BillingApplication
from billing_domain.settings import Settings
from tests.conftest import Clock

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def memory_app(clock: Callable[[], datetime]) -> BillingApplication:
    return BillingApplication(
        Settings(database_url="memory://", admin_key="test-admin-key"), clock=clock
    )


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def app(clock: Clock) -> Iterator[BillingApplication]:
    application = memory_app(clock)
    yield application
    application.close()
