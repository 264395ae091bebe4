"""What a reconciliation reports: the causes, one finding, the summary, and the state the
checks share while they add findings (`Checks`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from billing_domain.ids import invoice_id
from billing_domain.usage import aggregate_quantity, decimal_text, new_totals
from billing_domain.verification import PeriodLedger

if TYPE_CHECKING:
    from billing_domain.application import BillingApplication
    from projections.reconciliation.scan import Scan

Progress = Callable[[int, int], None]

TAMPERING = "tampering"
PARTIAL_WRITE = "partial_write"
DUPLICATE_EVENT_ID = "duplicate_event_id"
CLOCK_DRIFT = "clock_drift"
SCHEMA_DRIFT = "schema_drift"
LOGIC_DRIFT = "logic_drift"
PROJECTION_BEHIND = "projection_behind"
QUARANTINED = "quarantined"
UNEXPLAINED = "unexplained"


@dataclass
class Finding:
    check: str
    cause: str
    detail: str
    customer_id: str | None = None
    period: str | None = None
    meter: str | None = None
    invoice_id: str | None = None
    revision: int | None = None
    event_id: str | None = None
    position: int | None = None
    expected: str | None = None
    actual: str | None = None


def period_finding(
    ledger: PeriodLedger, check: str, cause: str, detail: str, **extra: Any
) -> Finding:
    """A finding about one period, with its customer, period and invoice filled in."""
    return Finding(
        check,
        cause,
        detail,
        customer_id=ledger.customer_id,
        period=ledger.period,
        invoice_id=invoice_id(ledger.customer_id, ledger.period),
        **extra,
    )


class Checks:
    """The state every group of checks reads and adds to; `Reconciliation` runs them."""

    app: BillingApplication
    read_models: Any
    period: str
    customer_id: str | None
    scan: Scan

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.rows: list[dict[str, Any]] = []
        self.tampered: set[UUID] = set()
        self.duplicated: set[tuple[str, str]] = set()
        self.changed_during_check = 0

    def _add(self, ledger: PeriodLedger, check: str, cause: str, detail: str, **extra: Any) -> None:
        self.findings.append(period_finding(ledger, check, cause, detail, **extra))

    def _safely(
        self, ledger: PeriodLedger, check: str, *steps: Callable[[PeriodLedger], None]
    ) -> None:
        """A period whose events cannot even be priced (a quantity no currency rounds) is a
        finding, not the end of the report."""
        try:
            for step in steps:
                step(ledger)
        except (ArithmeticError, ValueError) as error:
            self._add(
                ledger,
                check,
                self._explained(ledger, UNEXPLAINED),
                f"the period's events cannot be priced: {type(error).__name__}: {error}",
            )

    def _changed_since(self, ledger: PeriodLedger) -> bool:
        """The log holds an event of the period written after the scanned position."""
        return bool(
            self.app.recorder.select_events(ledger.originator_id, gt=ledger.last_version, limit=1)
        )

    def _explained(self, ledger: PeriodLedger, fallback: str) -> str:
        """A disagreement that follows from a named defect of the period's events says so."""
        if ledger.originator_id in self.scan.drifted:
            return SCHEMA_DRIFT
        if ledger.originator_id in self.tampered:
            return TAMPERING
        return fallback


def totals_differ(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """A meter that only carried-forward records touched is an empty total on one side."""
    if a is None or b is None:
        present = a if b is None else b
        assert present is not None
        return bool(present != new_totals(present["aggregation"], present["field"]))
    return a != b


def quantity_text(totals: dict[str, Any] | None) -> str | None:
    return None if totals is None else decimal_text(aggregate_quantity(totals))


def short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def summarise(findings: Iterable[Finding]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.cause] = counts.get(f.cause, 0) + 1
    return dict(sorted(counts.items()))
