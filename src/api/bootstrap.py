"""The composition root: the server, the CLI and the tests all build the service here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billing_domain.application import BillingApplication
from billing_domain.settings import Settings


@dataclass
class Services:
    settings: Settings
    app: BillingApplication
    read_models: Any = None  # projections.interface.ReadModels
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for closer in reversed(self.closers):
            closer()
        self.app.close()


def build(settings: Settings | None = None, *,
          clock: Callable[[], datetime] | None = None) -> Services:
    settings = settings or Settings.from_env()
    app = BillingApplication(settings, clock=clock)
    return Services(settings=settings, app=app)
