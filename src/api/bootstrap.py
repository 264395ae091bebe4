"""The composition root: the server, the CLI and the tests all build the service here."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from adapters.startup import check_store
from api.master_key import load_master_key
from billing_domain.application import BillingApplication
from billing_domain.settings import Settings, SettingsError
from billing_domain.throttle import DEFAULT_FAILURES_PER_MINUTE, FailureThrottle
from billing_domain.webhook_secrets import WebhookKeys
from projections.service import ProjectionService
from projections.store import ViewStore
from projections.webhook_delivery import DeliverySettings, DeliveryWorker
from projections.webhook_reads import WebhookReads


@dataclass
class Services:
    settings: Settings
    app: BillingApplication
    read_models: Any = None  # projections.interface.ReadModels
    closers: list[Callable[[], None]] = field(default_factory=list)
    throttle: FailureThrottle = field(default_factory=FailureThrottle)
    webhooks: Any = None  # projections.webhook_reads.WebhookReads
    deliveries: Any = None  # projections.webhook_delivery.DeliveryWorker

    def start_background(self) -> None:
        """Keep projections current in this process, unless a separate worker runs them;
        write counted refusals to the audit log every window; follow the log for key and
        grant changes (the authentication cache); write each key's last use once a minute."""
        self.app.refusals.start()
        self.app.key_cache.start()
        self.app.key_uses.start()
        if self.read_models is not None:
            self.read_models.start_background()
            if not self.read_models.external_worker:
                self.start_deliveries()

    def start_deliveries(self) -> None:
        """Send the webhook outbox from this process (serve, or the projection worker)."""
        if self.deliveries is not None:
            self.deliveries.start()

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
    app.webhook_keys = WebhookKeys(load_master_key(settings, read_models.store))
    deliveries = DeliveryWorker(
        app, read_models.store, read_models.runner, DeliverySettings.from_env(dict(os.environ))
    )
    return Services(
        settings=settings,
        app=app,
        read_models=read_models,
        closers=[
            app.refusals.close,
            app.close_key_uses,
            app.close_key_cache,
            read_models.close,
            deliveries.stop,
        ],
        throttle=FailureThrottle(failures_per_minute),
        webhooks=WebhookReads(read_models.runner, read_models.store),
        deliveries=deliveries,
    )


def _failures_per_minute() -> int:
    name = "BILLING_AUTH_FAILURES_PER_MINUTE"
    text = os.environ.get(name, "").strip() or str(DEFAULT_FAILURES_PER_MINUTE)
    if not text.isdigit() or int(text) < 1:
        raise SettingsError(f"{name}={text!r}: expected a whole number above zero, e.g. 20")
    return int(text)
