"""What the interfaces read: every read endpoint goes through this, never the aggregates."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol


class ReadModels(Protocol):
    def usage(self, customer_id: str, period: str, as_of: datetime | None = None) -> dict[str, Any]:
        """{items: [{meter, quantity, amount}], position, lag} for a customer's period."""

    def invoices(
        self,
        customer_id: str | None = None,
        period: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
        as_of: datetime | None = None,
    ) -> dict[str, Any]:
        """{items: [{invoice_id, customer_id, period, revision, status, total, currency}],
        next_cursor, position, lag}"""

    def invoice(
        self, invoice_id: str, revision: int | None = None, as_of: datetime | None = None
    ) -> dict[str, Any] | None:
        """{invoice_id, customer_id, period, revision, status, currency, lines, total,
        lineage_digest, position, lag}, or None when unknown."""

    def revisions(self, invoice_id: str) -> list[dict[str, Any]] | None:
        """[{revision, status, total, delta, issued_at, lineage_digest}], or None when unknown."""

    def lineage(
        self, invoice_id: str, line: int, cursor: str | None = None, limit: int = 100
    ) -> dict[str, Any] | None:
        """{items: [{kind, id, quantity, occurred_at, received_at, emitter, key_id}],
        next_cursor}, or None when the invoice or line is unknown."""

    def lineage_digest(self, customer_id: str, period: str) -> str:
        """The digest of a period's billed items as the lineage rows hold them."""

    def audit(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """{items: [{position, at, action, actor, key_id, detail}], next_cursor}"""

    def status(self) -> list[dict[str, Any]]:
        """[{name, version, position, lag, state, quarantined}] for every projection version."""

    def quarantined(self, name: str | None = None) -> list[dict[str, Any]]:
        """The stored events a projection (every one when None) set aside, oldest first:
        [{name, version, key, notification_id, originator_id, originator_version, topic, stage,
        error_type, error, first_seen, last_seen, attempts}]."""

    def retry(self, name: str, notification_id: int) -> dict[str, Any]:
        """Apply a quarantined notification again: {name, version, key, notification_id, topic,
        outcome}. Raises projections.errors.StillQuarantined (it stays, with the new error) or
        NotQuarantined."""

    def health(self) -> dict[str, Any]:
        """{status: ok|degraded|down, store, projections, reasons}."""

    def wait(self, position: int, timeout: float = 2.0) -> bool:
        """Block until every live projection has processed `position`; False on timeout."""

    def catch_up(self) -> int:
        """Process everything recorded so far; return the position reached."""

    def max_position(self) -> int:
        """The newest position in the event log: what a writer passes to `wait`."""

    def start_rebuild(self, name: str) -> dict[str, Any]:
        """Start building the next version of `name` (`invoices`, `audit`, or with `_vN`) in
        the background, switching reads when caught up; {name, version, state, position,
        target, error}. Raises projections.errors.UnknownProjection."""

    def rebuild_state(self, name: str) -> dict[str, Any] | None:
        """The state of the last rebuild this process started for `name`, if any."""

    def start_background(self) -> None:
        """Keep live versions current from a thread of this process (no-op when
        BILLING_PROJECTION_WORKER=external)."""

    def stop_background(self) -> None:
        """Stop that thread; `Services.close()` does this."""
