"""Placeholder until this command family lands."""

import click


def register(group: click.Group) -> None:
    """Add this family's commands to the `billing` group."""
