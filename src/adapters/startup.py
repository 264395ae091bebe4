"""The start-up check of the configured store: one sentence naming BILLING_DATABASE_URL when
it cannot be used."""

from __future__ import annotations

from billing_domain.settings import Settings


def check_store(settings: Settings) -> None:
    """Fail at start, in one sentence naming BILLING_DATABASE_URL, if the store cannot be used."""
    env = settings.eventsourcing_env()
    if settings.is_postgres:
        from adapters.postgres import check_reachable

        check_reachable(env)
    else:
        from adapters.sqlite import check_openable

        check_openable(env["SQLITE_DBNAME"])
