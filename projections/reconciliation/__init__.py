"""Reconciliation and verification: the log, the replay, the read models and the invoices agree,
or the report says where not and why.

Four views of a billing period are compared:

1. raw: the stored events read straight from the event store, decoded from their JSON bytes
   (`billing_domain.verification.PeriodLedger`), checked against the idempotency index;
2. replay: the `BillingPeriod` aggregate rebuilt from the log through the library's mapper,
   without snapshots or caches;
3. projections: balances, invoices, revisions and lineage rows as the read models hold them;
4. issued: each invoice revision as recorded at close or restatement.

Each finding names the comparison (`check`) and, where it can, the `cause`:

- `tampering`: a stored record no longer matches what was ingested (the idempotency index keeps
  its payload hash and quantity), a recorded digest no longer matches its events, or an event
  is in the log without having been written by the application;
- `partial_write`: a read-model row is missing or does not say what the log says;
- `duplicate_event_id`: one customer's event id recorded in two places;
- `clock_drift`: a record whose `occurred_at` is after its `received_at` beyond the skew bound;
- `schema_drift`: a stored event that no longer decodes, names an unknown class, or was written
  by a newer class version than this code can upcast;
- `logic_drift`: an issued amount that current pricing would compute differently (reported,
  never changed: the issued invoice stands);
- `projection_behind`: the read models could not reach the log's position, so they were not
  compared;
- `quarantined`: a projection set a stored event aside because its handlers failed on it
  (one that does not decode is `schema_drift`); its rows are missing from the read models
  until a retry applies it;
- `unexplained`: views disagree and no cause above applies.

The package: `scan` reads the log once, `raw` checks the stored events, `views` compares
the replay, the issued revisions and the read models with them, `findings` is the report.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from billing_domain.application import BillingApplication, check_identifier, check_period
from billing_domain.ids import invoice_id
from projections.reconciliation.findings import (
    CLOCK_DRIFT,
    DUPLICATE_EVENT_ID,
    LOGIC_DRIFT,
    PARTIAL_WRITE,
    PROJECTION_BEHIND,
    QUARANTINED,
    SCHEMA_DRIFT,
    TAMPERING,
    UNEXPLAINED,
    Finding,
    Progress,
    summarise,
)
from projections.reconciliation.raw import RawChecks
from projections.reconciliation.scan import Scan, in_scope, scan_log
from projections.reconciliation.views import ViewChecks

__all__ = [
    "CLOCK_DRIFT",
    "DUPLICATE_EVENT_ID",
    "LOGIC_DRIFT",
    "PARTIAL_WRITE",
    "PROJECTION_BEHIND",
    "QUARANTINED",
    "SCHEMA_DRIFT",
    "TAMPERING",
    "UNEXPLAINED",
    "Finding",
    "Progress",
    "Reconciliation",
    "Scan",
    "reconcile",
    "scan_log",
    "summarise",
    "verify",
]


class Reconciliation(RawChecks, ViewChecks):
    def __init__(
        self, app: BillingApplication, read_models: Any, period: str, customer_id: str | None
    ) -> None:
        super().__init__()
        self.app = app
        self.read_models = read_models
        self.period = period
        self.customer_id = customer_id

    def run(self, progress: Progress | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        scan = scan_log(
            self.app, in_scope(self.period, self.customer_id), keep_records=True, progress=progress
        )
        self.findings += [
            f
            for f in scan.findings
            if f.period in (None, self.period)
            and (self.customer_id is None or f.customer_id in (None, self.customer_id))
        ]
        self.scan = scan
        self._duplicates(scan)
        self._all_records(scan)
        replays = {}
        for ledger in scan.ledgers.values():
            self._safely(ledger, "pricing", self._digests, self._pricing)
            replays[ledger.originator_id] = self._replay(ledger, scan)
            self._safely(ledger, "issued_vs_log", self._issued)
        compared = self._projections(scan, replays)
        self._quarantined(scan)
        ordered = sorted(scan.ledgers.values(), key=lambda x: x.customer_id)
        return {
            "ok": not self.findings,
            "period": self.period,
            "customer_id": self.customer_id,
            "position": scan.stop,
            "checked": {
                "stored_events": scan.stored_events,
                "customers": len({x.customer_id for x in ordered}),
                "periods": len(ordered),
                "records": sum(x.records for x in ordered),
                "invoices": sum(len(x.revisions) for x in ordered),
                "projections_compared": compared,
                "changed_during_check": self.changed_during_check,
            },
            "summary": summarise(self.findings),
            "findings": [asdict(f) for f in self.findings],
            "meters": self.rows,
            "seconds": round(time.perf_counter() - started, 3),
        }


def reconcile(
    services: Any, period: str, customer_id: str | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """The reconciliation report of one period (optionally one customer's)."""
    check_period(period)
    if customer_id is not None:
        check_identifier(customer_id, "customer_id")
    return Reconciliation(services.app, services.read_models, period, customer_id).run(progress)


def verify(app: BillingApplication, progress: Progress | None = None) -> dict[str, Any]:
    """Recompute every issued revision's lineage digest from the log."""
    started = time.perf_counter()
    scan = scan_log(app, lambda _c, _p: True, keep_records=False, progress=progress)
    failures, checked = [], []
    schemes: dict[str, int] = {}
    for ledger in sorted(scan.ledgers.values(), key=lambda x: (x.customer_id, x.period)):
        for rev in ledger.revisions:
            entry = {
                "invoice_id": invoice_id(ledger.customer_id, ledger.period),
                "customer_id": ledger.customer_id,
                "period": ledger.period,
                "revision": rev.revision,
                "status": rev.status,
                "scheme": rev.scheme,
                "ok": rev.recorded_digest == rev.recomputed_digest,
            }
            checked.append(entry)
            schemes[rev.scheme] = schemes.get(rev.scheme, 0) + 1
            if not entry["ok"]:
                failures.append(
                    {
                        **entry,
                        "recorded": rev.recorded_digest,
                        "recomputed": rev.recomputed_digest,
                    }
                )
    undecodable = [asdict(f) for f in scan.findings]
    return {
        "ok": not failures and not undecodable,
        "position": scan.stop,
        "checked": {
            "stored_events": scan.stored_events,
            "revisions": len(checked),
            "periods": len(scan.ledgers),
            "schemes": dict(sorted(schemes.items())),
        },
        "revisions": checked,
        "failures": failures,
        "undecodable": undecodable,
        "seconds": round(time.perf_counter() - started, 3),
    }
