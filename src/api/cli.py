"""The `billing` command for operators. Each family of commands lives in its own module."""

from __future__ import annotations

import importlib
from typing import Any

import click

from adapters.persistence import store_unavailable
from api.commands_service import StartupError
from billing_domain.settings import SettingsError

COMMAND_MODULES = (
    "api.commands_service",
    "api.commands_identities",
    "api.commands_projections",
    "api.commands_proof",
    "api.commands_catalogue",
    "api.commands_usage",
)


class BillingGroup(click.Group):
    """Configuration mistakes and an unreachable store end every command the same way:
    one line naming the setting and the fix, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as error:
            raise StartupError(str(error)) from None
        except Exception as error:
            if not store_unavailable(error):
                raise
            reason = " ".join(str(error).split()) or type(error).__name__
            raise StartupError(
                f"the store stopped answering ({reason}); check the database named by "
                "BILLING_DATABASE_URL is running, then run the command again"
            ) from None


@click.group(
    cls=BillingGroup,
    help="Event-sourced metered billing: serve, keys, projections, reconcile, verify.",
)
def main() -> None:
    pass


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(main)


if __name__ == "__main__":
    main()
