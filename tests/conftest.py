"""Every storage-dependent test runs on SQLite and on PostgreSQL, against real databases.

PostgreSQL tests use a fresh schema per test in BILLING_TEST_POSTGRES_URL (default: the
local `test` database). Under CI=true a missing PostgreSQL fails the run; elsewhere it skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from billing_domain.application import BillingApplication
from billing_domain.settings import Settings

POSTGRES_URL = os.environ.get(
    "BILLING_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
STORES = ["sqlite", "postgres"]


class Clock:
    """A clock the scenarios move by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


def postgres_available() -> bool:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _require_postgres() -> None:
    if postgres_available():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true and is not reachable at {POSTGRES_URL}")
    pytest.skip("PostgreSQL not reachable")


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(store: str, tmp_path: os.PathLike[str]) -> Iterator[str]:
    """A new, empty store of the requested kind, removed afterwards."""
    if store == "sqlite":
        yield f"sqlite:///{tmp_path}/billing.db"
        return
    _require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}schema={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, admin_key="test-admin-key")


@pytest.fixture
def app(settings: Settings, clock: Clock) -> Iterator[BillingApplication]:
    application = BillingApplication(settings, clock=clock)
    yield application
    application.close()
