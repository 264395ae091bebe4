"""Refusals a read can give; they are domain errors, so the edge maps them like the others."""

from __future__ import annotations

from billing_domain.errors import InvalidInput, NotFound


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"
    field = "cursor"


class UnknownProjection(NotFound):
    code = "unknown_projection"
    field = "name"
