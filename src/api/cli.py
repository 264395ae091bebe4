"""The `billing` command for operators. Each family of commands lives in its own module."""

from __future__ import annotations

import importlib

import click

COMMAND_MODULES = ("api.commands_service", "api.commands_projections", "api.commands_proof")


@click.group(help="Event-sourced metered billing: serve, keys, projections, reconcile, verify.")
def main() -> None:
    pass


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(main)


if __name__ == "__main__":
    main()
