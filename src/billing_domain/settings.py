"""Configuration from the environment, validated once, with defaults that run on a fresh machine."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs, unquote, urlparse

DEFAULT_DATABASE_URL = "sqlite:///./billing.db"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


def parse_duration(name: str, text: str, *, positive: bool = False) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise SettingsError(
            f"{name}={text!r}: expected a whole number with s, m, h or d; set it to e.g. 30s "
            f"or 5m, or unset {name} for the default"
        )
    duration = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if positive and not duration:
        raise SettingsError(f"{name}={text!r}: must be more than zero; set it to e.g. 30s")
    return duration


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("", "0", "false", "no", "n", "off"):
        return False
    if value in ("1", "true", "yes", "y", "on"):
        return True
    raise SettingsError(f"{name}={text!r}: expected 1 or 0; set it to 1, or unset {name}")


def _days(name: str, text: str) -> int | None:
    value = text.strip()
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 36500:
        raise SettingsError(
            f"{name}={text!r}: expected a whole number of days from 1 to 36500, e.g. 90; "
            f"or unset {name} for no limit"
        )
    return int(value)


def _seconds(duration: timedelta) -> str:
    return str(int(duration.total_seconds()))


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    admin_key: str | None = None
    max_clock_skew: timedelta = timedelta(minutes=5)
    backdating_horizon: timedelta = timedelta(days=400)
    max_batch: int = 5000
    aggregate_cache_size: int = 2000
    statement_timeout: timedelta = timedelta(seconds=30)
    idle_in_transaction_timeout: timedelta = timedelta(seconds=5)
    connect_timeout: timedelta = timedelta(seconds=5)
    require_owner: bool = False
    key_max_days: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        settings = cls(
            database_url=env.get("BILLING_DATABASE_URL") or DEFAULT_DATABASE_URL,
            admin_key=env.get("BILLING_ADMIN_KEY") or None,
            max_clock_skew=parse_duration(
                "BILLING_MAX_CLOCK_SKEW", env.get("BILLING_MAX_CLOCK_SKEW", "5m")
            ),
            backdating_horizon=parse_duration(
                "BILLING_BACKDATING_HORIZON", env.get("BILLING_BACKDATING_HORIZON", "400d")
            ),
            statement_timeout=parse_duration(
                "BILLING_STATEMENT_TIMEOUT",
                env.get("BILLING_STATEMENT_TIMEOUT", "30s"),
                positive=True,
            ),
            idle_in_transaction_timeout=parse_duration(
                "BILLING_IDLE_IN_TRANSACTION_TIMEOUT",
                env.get("BILLING_IDLE_IN_TRANSACTION_TIMEOUT", "5s"),
                positive=True,
            ),
            connect_timeout=parse_duration(
                "BILLING_CONNECT_TIMEOUT", env.get("BILLING_CONNECT_TIMEOUT", "5s"), positive=True
            ),
            require_owner=_flag("BILLING_REQUIRE_OWNER", env.get("BILLING_REQUIRE_OWNER", "")),
            key_max_days=_days("BILLING_KEY_MAX_DAYS", env.get("BILLING_KEY_MAX_DAYS", "")),
        )
        settings.eventsourcing_env()
        return settings

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql://", "postgres://"))

    def eventsourcing_env(self) -> dict[str, str]:
        """The eventsourcing library's configuration for this database URL."""
        env = {
            "CREATE_TABLE": "y",
            "AGGREGATE_CACHE_MAXSIZE": str(self.aggregate_cache_size),
        }
        url = urlparse(self.database_url)
        if url.scheme == "sqlite":
            path = unquote(url.path[1:] if url.path.startswith("/") else url.path)
            if not path:
                raise SettingsError("BILLING_DATABASE_URL: sqlite URL needs a file path")
            if path == ":memory:":
                path = "file:billing?mode=memory&cache=shared"
            env.update(
                PERSISTENCE_MODULE="adapters.sqlite:SQLiteBillingFactory",
                SQLITE_DBNAME=path,
                # How long a write waits for another process's lock: the statement timeout.
                SQLITE_LOCK_TIMEOUT=_seconds(self.statement_timeout),
                APPLICATION_RECORDER_TOPIC="adapters.sqlite:SQLiteBillingRecorder",
            )
            return env
        if url.scheme == "memory":
            # No database: the unit tests' store (adapters.memory); nothing outlives the process.
            env.update(PERSISTENCE_MODULE="adapters.memory:MemoryBillingFactory")
            return env
        if url.scheme in ("postgresql", "postgres"):
            query = parse_qs(url.query)
            env.update(
                PERSISTENCE_MODULE="adapters.postgres:PostgresBillingFactory",
                POSTGRES_DBNAME=unquote(url.path.lstrip("/")) or "postgres",
                POSTGRES_HOST=url.hostname or "127.0.0.1",
                POSTGRES_PORT=str(url.port or 5432),
                POSTGRES_USER=unquote(url.username or "postgres"),
                POSTGRES_PASSWORD=unquote(url.password or ""),
                POSTGRES_SCHEMA=query.get("schema", [""])[0],
                POSTGRES_POOL_SIZE=query.get("pool_size", ["8"])[0],
                POSTGRES_MAX_OVERFLOW=query.get("max_overflow", ["8"])[0],
                POSTGRES_LOCK_TIMEOUT="10",
                # The library's name for how long a request waits for a pooled connection.
                POSTGRES_CONNECT_TIMEOUT=_seconds(2 * self.connect_timeout),
                POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT=_seconds(
                    self.idle_in_transaction_timeout
                ),
                # No ping before each use of a pooled connection: it doubled the round trips of
                # every transaction (single ingest 432 vs 534 requests/s). A connection found
                # dead is replaced by the library's retry, and the store outage tests pass.
                POSTGRES_PRE_PING="n",
                BILLING_STATEMENT_TIMEOUT_MS=str(
                    int(self.statement_timeout.total_seconds() * 1000)
                ),
                BILLING_CONNECT_TIMEOUT=_seconds(self.connect_timeout),
                APPLICATION_RECORDER_TOPIC="adapters.postgres:PostgresBillingRecorder",
            )
            return env
        raise SettingsError(
            f"BILLING_DATABASE_URL: unknown scheme {url.scheme + ':' if url.scheme else '(none)'}; "
            "set it to sqlite:///PATH or postgresql://user:password@host:port/dbname"
        )
