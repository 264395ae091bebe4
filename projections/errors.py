"""Refusals a read can give; they are domain errors, so the edge maps them like the others."""

from __future__ import annotations

from billing_domain.errors import Conflict, InvalidInput, NotFound


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"
    field = "cursor"


class UnknownProjection(NotFound):
    code = "unknown_projection"
    field = "name"


class NotQuarantined(NotFound):
    code = "not_quarantined"
    field = "notification_id"


class StillQuarantined(Conflict):
    """A retried notification failed again; it stays quarantined with the new error."""

    code = "still_quarantined"
    field = "notification_id"


class SchemaMismatch(Exception):
    """A version's stored schema fingerprint is not the code's: it must not be written."""
