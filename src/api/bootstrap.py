"""The composition root: the server, the CLI and the tests all build the service here."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from adapters.startup import check_store
from billing_domain.application import BillingApplication
from billing_domain.settings import Settings, SettingsError
from billing_domain.throttle import DEFAULT_FAILURES_PER_MINUTE, FailureThrottle
from projections.service import ProjectionService
from projections.store import ViewStore


@dataclass
class Services:
    settings: Settings
    app: BillingApplication
    read_models: Any = None  # projections.interface.ReadModels
    closers: list[Callable[[], None]] = field(default_factory=list)
    throttle: FailureThrottle = field(default_factory=FailureThrottle)

    def start_background(self) -> None:
        """Keep projections current in this process, unless a separate worker runs them;
        write counted refusals to the audit log every window; follow the log for key and
        grant changes (the authentication cache); write each key's last use once a minute."""
        self.app.refusals.start()
        self.app.key_cache.start()
        self.app.key_uses.start()
        if self.read_models is not None:
            self.read_models.start_background()

    def close(self) -> None:
        for closer in reversed(self.closers):
            closer()
        self.app.close()


def build(
    settings: Settings | None = None, *, clock: Callable[[], datetime] | None = None
) -> Services:
    settings = settings or Settings.from_env()
    check_store(settings)
    failures_per_minute = _failures_per_minute()
    app = BillingApplication(settings, clock=clock)
    external = os.environ.get("BILLING_PROJECTION_WORKER", "in-process") == "external"
    read_models = ProjectionService(
        app,
        ViewStore.for_settings(settings),
        external_worker=external,
        batch_size=int(os.environ.get("BILLING_PROJECTION_BATCH", "1000")),
    )
    return Services(
        settings=settings,
        app=app,
        read_models=read_models,
        closers=[app.refusals.close, app.close_key_uses, app.close_key_cache, read_models.close],
        throttle=FailureThrottle(failures_per_minute),
    )


def _failures_per_minute() -> int:
    name = "BILLING_AUTH_FAILURES_PER_MINUTE"
    text = os.environ.get(name, "").strip() or str(DEFAULT_FAILURES_PER_MINUTE)
    if not text.isdigit() or int(text) < 1:
        raise SettingsError(f"{name}={text!r}: expected a whole number above zero, e.g. 20")
    return int(text)
