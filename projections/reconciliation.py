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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.utils import resolve_topic

from adapters.stored_json import UndecodableState, decode_state
from billing_domain.application import BillingApplication, check_identifier, check_period
from billing_domain.ids import invoice_id
from billing_domain.invoicing import charge_amount, total_of
from billing_domain.period import BillingPeriod
from billing_domain.pricing import Charge, parse_charges
from billing_domain.usage import aggregate_quantity, decimal_text, new_totals
from billing_domain.verification import (
    PERIOD_TOPIC,
    PeriodLedger,
    repriced_lines,
)

Progress = Callable[[int, int], None]
PAGE = 500

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


@dataclass
class Scan:
    """What one pass over the log (up to `stop`) found."""

    stop: int
    ledgers: dict[UUID, PeriodLedger] = field(default_factory=dict)
    owners: dict[UUID, tuple[str, str]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    drifted: set[UUID] = field(default_factory=set)
    stored_events: int = 0
    first_seen: dict[int, int] = field(default_factory=dict)
    candidates: list[tuple[int, int, str, str]] = field(default_factory=list)


def _in_scope(period: str | None, customer_id: str | None) -> Callable[[str, str], bool]:
    def check(owner_customer: str, owner_period: str) -> bool:
        return (period is None or owner_period == period) and (
            customer_id is None or owner_customer == customer_id
        )

    return check


def scan_log(
    app: BillingApplication,
    in_scope: Callable[[str, str], bool],
    *,
    keep_records: bool,
    progress: Progress | None = None,
) -> Scan:
    """Read every stored event up to the log's current end, decode it from its bytes, feed
    in-scope billing periods to their ledgers and note what does not decode or load."""
    scan = Scan(stop=int(app.recorder.max_notification_id() or 0))
    start = 1
    while start <= scan.stop:
        page = app.recorder.select_notifications(start, PAGE, stop=scan.stop)
        if not page:
            break
        for n in page:
            scan.stored_events += 1
            _scan_one(app, scan, n, in_scope, keep_records)
        start = page[-1].id + 1
        if progress is not None:
            progress(page[-1].id, scan.stop)
    return scan


def _scan_one(
    app: BillingApplication,
    scan: Scan,
    n: Any,
    in_scope: Callable[[str, str], bool],
    keep_records: bool,
) -> None:
    owner = scan.owners.get(n.originator_id)
    if n.originator_id in scan.ledgers:  # the replay covers events that fail to decode here
        ledger = scan.ledgers[n.originator_id]
        ledger.last_version = max(ledger.last_version, n.originator_version)

    def drift(detail: str) -> None:
        scan.drifted.add(n.originator_id)
        scan.findings.append(
            Finding(
                "decode",
                SCHEMA_DRIFT,
                detail,
                customer_id=owner[0] if owner else None,
                period=owner[1] if owner else None,
                position=n.id,
                actual=f"{n.topic} v{n.originator_version} of {n.originator_id}",
            )
        )

    try:
        cls = resolve_topic(n.topic)
    except Exception as error:
        drift(f"topic {n.topic!r} names no class this code knows ({type(error).__name__})")
        return
    try:
        state = decode_state(n.state)
    except UndecodableState as error:
        drift(f"stored state does not decode: {error}")
        return
    stored_version = state.get("class_version", 1)
    code_version = getattr(cls, "class_version", 1)
    if not isinstance(stored_version, int) or stored_version > code_version:
        drift(
            f"written as class version {stored_version}; this code knows up to "
            f"{code_version} and cannot upcast it"
        )
        return
    try:
        app.mapper.to_domain_event(n)
    except Exception as error:
        drift(f"does not load or upcast: {type(error).__name__}: {error}")
        return
    if not n.topic.startswith(PERIOD_TOPIC):
        return
    name = n.topic[len(PERIOD_TOPIC) :]
    if name == "Opened":
        owner = scan.owners[n.originator_id] = (state["customer_id"], state["period"])
        if in_scope(*owner):
            scan.ledgers[n.originator_id] = PeriodLedger(
                n.originator_id, owner[0], owner[1], keep_records=keep_records
            )
    if owner is None:
        scan.findings.append(
            Finding(
                "decode",
                TAMPERING,
                "event of a billing period whose opening is not in the log",
                position=n.id,
                actual=f"{n.topic} v{n.originator_version} of {n.originator_id}",
            )
        )
        return
    if name == "UsageRecorded" and keep_records:
        for record in state.get("records", ()):
            key = hash(f"{record[1]}\x1f{record[0]}")
            first = scan.first_seen.setdefault(key, n.id)
            if first != n.id:
                scan.candidates.append((first, n.id, str(record[1]), str(record[0])))
    ledger = scan.ledgers.get(n.originator_id)
    if ledger is not None:
        try:
            ledger.apply(name, state, n.originator_version, n.id)
        except (KeyError, TypeError, ValueError, ArithmeticError, IndexError) as error:
            drift(f"fields are not what this code reads: {type(error).__name__}: {error}")


def _event_at(app: BillingApplication, position: int) -> tuple[Any, dict[str, Any]] | None:
    page = app.recorder.select_notifications(position, 1, stop=position)
    if not page:
        return None
    try:
        return page[0], decode_state(page[0].state)
    except UndecodableState:
        return None


# Checks ---------------------------------------------------------------------------------------


class Reconciliation:
    def __init__(
        self, app: BillingApplication, read_models: Any, period: str, customer_id: str | None
    ) -> None:
        self.app = app
        self.read_models = read_models
        self.period = period
        self.customer_id = customer_id
        self.findings: list[Finding] = []
        self.rows: list[dict[str, Any]] = []
        self.tampered: set[UUID] = set()
        self.duplicated: set[tuple[str, str]] = set()
        self.changed_during_check = 0

    def run(self, progress: Progress | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        scan = scan_log(
            self.app, _in_scope(self.period, self.customer_id), keep_records=True, progress=progress
        )
        self.findings += [
            f
            for f in scan.findings
            if f.period in (None, self.period)
            and (self.customer_id is None or f.customer_id in (None, self.customer_id))
        ]
        self.scan = scan
        self._duplicates(scan)
        keys = self._index_rows(list(scan.ledgers))
        replays = {}
        for ledger in scan.ledgers.values():
            self._clock(ledger)
            self._index(ledger, keys.get(ledger.originator_id, []))
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

    def _add(self, ledger: PeriodLedger, check: str, cause: str, detail: str, **extra: Any) -> None:
        self.findings.append(
            Finding(
                check,
                cause,
                detail,
                customer_id=ledger.customer_id,
                period=ledger.period,
                invoice_id=invoice_id(ledger.customer_id, ledger.period),
                **extra,
            )
        )

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

    def _explained(self, ledger: PeriodLedger, fallback: str) -> str:
        """A disagreement that follows from a named defect of the period's events says so."""
        if ledger.originator_id in self.scan.drifted:
            return SCHEMA_DRIFT
        if ledger.originator_id in self.tampered:
            return TAMPERING
        return fallback

    # Raw events ---------------------------------------------------------------------------

    def _duplicates(self, scan: Scan) -> None:
        for first, second, customer_id, event_id in scan.candidates:
            where = []
            for position in (first, second):
                found = _event_at(self.app, position)
                if found is None:
                    break
                n, state = found
                record = next(
                    (
                        r
                        for r in state.get("records", ())
                        if r[0] == event_id and r[1] == customer_id
                    ),
                    None,
                )
                if record is None:
                    break  # a hash collision, not the same id
                where.append(
                    (
                        scan.owners.get(n.originator_id, ("?", "?")),
                        record[4],
                        n.originator_id,
                        position,
                    )
                )
            if len(where) != 2:
                continue
            if not any(
                owner[1] == self.period and (self.customer_id in (None, owner[0]))
                for owner, *_ in where
            ):
                continue
            self.duplicated.add((customer_id, event_id))
            (o1, t1, id1, p1), (o2, t2, id2, p2) = where
            times = "at the same time" if t1 == t2 else "with different times"
            self.findings.append(
                Finding(
                    "event_id",
                    DUPLICATE_EVENT_ID,
                    f"event id {event_id!r} of customer {customer_id!r} is recorded twice, "
                    f"{times}: in {o1[0]}/{o1[1]} at position {p1} and in {o2[0]}/{o2[1]} "
                    f"at position {p2}",
                    customer_id=customer_id,
                    period=self.period,
                    event_id=event_id,
                    position=p2,
                    expected=t1,
                    actual=t2,
                )
            )
            for originator_id in (id1, id2):
                if originator_id in scan.ledgers:
                    self.tampered.add(originator_id)

    def _clock(self, ledger: PeriodLedger) -> None:
        skew = self.app.settings.max_clock_skew
        for u in ledger.usage:
            try:
                occurred = datetime.fromisoformat(u.occurred_at)
                received = datetime.fromisoformat(u.received_at)
            except ValueError:
                self._add(
                    ledger,
                    "event_time",
                    SCHEMA_DRIFT,
                    "times do not parse",
                    event_id=u.event_id,
                    position=u.position,
                    meter=u.meter,
                )
                continue
            if occurred > received + skew:
                self._add(
                    ledger,
                    "event_time",
                    CLOCK_DRIFT,
                    f"occurred {occurred - received} after it was received (allowed skew {skew})",
                    event_id=u.event_id,
                    meter=u.meter,
                    position=u.position,
                    expected=f"<= {u.received_at} + {skew}",
                    actual=u.occurred_at,
                )

    def _index_rows(self, originator_ids: list[UUID]) -> dict[UUID, list[Any]]:
        rows: dict[UUID, list[Any]] = {}
        for row in self.app.recorder.keys_of(originator_ids):  # type: ignore[attr-defined]
            rows.setdefault(row.originator_id, []).append(row)
        return rows

    def _index(self, ledger: PeriodLedger, rows: list[Any]) -> None:
        """Every stored record matches what its ingest indexed, and every index row's record
        is in the log."""
        usage = {(r.customer_id, r.key): r for r in rows if r.kind == "usage"}
        corrections = {(r.kind, r.key): r for r in rows if r.kind != "usage"}
        matched: set[tuple[str, str]] = set()
        for u in ledger.usage:
            key = (u.customer_id, u.event_id)
            row = usage.get(key)
            if row is None or row.originator_version != u.version:
                if key in self.duplicated:
                    continue
                self.tampered.add(ledger.originator_id)
                self._add(
                    ledger,
                    "index",
                    TAMPERING,
                    "record is in the log but no ingest indexed it here: written "
                    "outside the application",
                    event_id=u.event_id,
                    meter=u.meter,
                    position=u.position,
                    actual=u.quantity,
                )
                continue
            matched.add(key)
            if row.payload_hash != u.payload_hash_now:
                self.tampered.add(ledger.originator_id)
                self._add(
                    ledger,
                    "index",
                    TAMPERING,
                    "stored record no longer matches the payload that was ingested",
                    event_id=u.event_id,
                    meter=u.meter,
                    position=u.position,
                    expected=f"{row.meter} {row.quantity}",
                    actual=f"{u.meter} {u.quantity}",
                )
        for key, row in usage.items():
            if key not in matched and key not in self.duplicated:
                self.tampered.add(ledger.originator_id)
                self._add(
                    ledger,
                    "index",
                    TAMPERING,
                    "ingested record is missing from the log",
                    event_id=row.key,
                    meter=row.meter,
                    expected=row.quantity,
                    actual=None,
                )
        seen = {(c.kind, c.key): c for c in ledger.corrections}
        for key, row in corrections.items():
            stored = seen.get(key)
            if stored is None or (stored.meter, stored.quantity) != (row.meter, row.quantity):
                self.tampered.add(ledger.originator_id)
                self._add(
                    ledger,
                    "index",
                    TAMPERING,
                    f"{row.kind} {row.key!r} in the log does not match its index entry",
                    meter=row.meter,
                    expected=f"{row.meter} {row.quantity}",
                    actual=None if stored is None else f"{stored.meter} {stored.quantity}",
                    position=None if stored is None else stored.position,
                )
        for key, stored in seen.items():
            if key not in corrections:
                self.tampered.add(ledger.originator_id)
                self._add(
                    ledger,
                    "index",
                    TAMPERING,
                    f"{stored.kind} {stored.key!r} is in the log but was never indexed",
                    meter=stored.meter,
                    position=stored.position,
                    actual=stored.quantity,
                )

    def _digests(self, ledger: PeriodLedger) -> None:
        for rev in ledger.revisions:
            if rev.recorded_digest != rev.recomputed_digest:
                self.tampered.add(ledger.originator_id)
                self._add(
                    ledger,
                    "digest",
                    TAMPERING,
                    f"revision {rev.revision}'s lineage digest recorded at issue no "
                    "longer matches the events it covers",
                    revision=rev.revision,
                    position=rev.position,
                    expected=rev.recorded_digest,
                    actual=rev.recomputed_digest,
                )

    def _pricing(self, ledger: PeriodLedger) -> None:
        for rev in ledger.revisions:
            try:
                drifted = repriced_lines(rev.data)
            except Exception as error:
                self._add(
                    ledger,
                    "pricing",
                    SCHEMA_DRIFT,
                    f"revision {rev.revision} cannot be priced by this code: {error}",
                    revision=rev.revision,
                    position=rev.position,
                )
                continue
            for d in drifted:
                what = (
                    f"line {d['line']} ({d['meter']}, quantity {d['quantity']})"
                    if d["line"] is not None
                    else "the total (sum of the lines)"
                )
                self._add(
                    ledger,
                    "pricing",
                    LOGIC_DRIFT,
                    f"revision {rev.revision}: {what} was issued at {d['issued']}; "
                    f"current logic gives {d['now']}. The issued invoice stands.",
                    revision=rev.revision,
                    meter=d["meter"],
                    position=rev.position,
                    expected=d["issued"],
                    actual=d["now"],
                )

    # Replay ---------------------------------------------------------------------------------

    def _replay(self, ledger: PeriodLedger, scan: Scan) -> BillingPeriod | None:
        try:
            aggregate = None
            for event in self.app.events.get(ledger.originator_id, lte=ledger.last_version):
                aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
        except Exception as error:
            self._add(
                ledger,
                "raw_vs_replay",
                self._explained(ledger, UNEXPLAINED),
                f"the aggregate does not replay: {type(error).__name__}: {error}",
            )
            return None
        assert isinstance(aggregate, BillingPeriod)
        for meter in sorted(set(ledger.billed) | set(aggregate.billed)):
            raw, replayed = ledger.billed.get(meter), aggregate.billed.get(meter)
            if _totals_differ(raw, replayed):
                self._add(
                    ledger,
                    "raw_vs_replay",
                    self._explained(ledger, UNEXPLAINED),
                    "replayed totals differ from the stored records",
                    meter=meter,
                    expected=_quantity(raw),
                    actual=_quantity(replayed),
                )
        carried = {
            (v["from_period"], v["meter"]): {"quantity": v["quantity"], "amount": v["amount"]}
            for v in aggregate.carried_in.values()
        }
        if carried != ledger.carried_in:
            self._add(
                ledger,
                "raw_vs_replay",
                self._explained(ledger, UNEXPLAINED),
                "carried-forward usage differs between stored events and replay",
            )
        if (aggregate.lineage_digest, aggregate.revision) != (
            ledger.lineage_digest,
            len(ledger.revisions),
        ):
            self._add(
                ledger,
                "raw_vs_replay",
                self._explained(ledger, UNEXPLAINED),
                "replayed lineage digest or revision count differs from the stored events",
                expected=ledger.lineage_digest,
                actual=aggregate.lineage_digest,
            )
        return aggregate

    def _issued(self, ledger: PeriodLedger) -> None:
        """A closed period's latest revision still bills what its events now add up to."""
        if not ledger.revisions:
            return
        latest = ledger.revisions[-1]
        for line in latest.data.get("lines", ()):
            if line.get("kind") == "usage":
                now = decimal_text(ledger.quantity(line["meter"]))
                if now != line["quantity"]:
                    self._add(
                        ledger,
                        "issued_vs_log",
                        self._explained(ledger, TAMPERING),
                        f"revision {latest.revision} bills {line['quantity']} but its "
                        f"events now add up to {now}, with no later revision",
                        revision=latest.revision,
                        meter=line["meter"],
                        expected=line["quantity"],
                        actual=now,
                    )

    # Read models --------------------------------------------------------------------------

    def _projections(self, scan: Scan, replays: dict[UUID, BillingPeriod | None]) -> int:
        reached, error = self._wait_for_read_models(scan.stop)
        if not reached:
            self.findings.append(
                Finding(
                    "projection",
                    SCHEMA_DRIFT if scan.drifted else PROJECTION_BEHIND,
                    "the read models did not reach the log's position, so they were not compared"
                    + (f": {error}" if error else ""),
                    period=self.period,
                    position=scan.stop,
                )
            )
            return 0
        compared = 0
        for ledger in sorted(scan.ledgers.values(), key=lambda x: x.customer_id):
            before = len(self.findings)
            self._safely(
                ledger,
                "replay_vs_projection",
                lambda x: self._compare_projection(x, replays.get(x.originator_id)),
            )
            compared += 1
            if len(self.findings) > before and self._changed_since(ledger):
                # Written after the check began: the read model is ahead, not wrong.
                self.changed_during_check += 1
                del self.findings[before:]
        return compared

    def _quarantined(self, scan: Scan) -> None:
        """Every notification a projection set aside is a finding, whatever the period: the
        read models are short of its rows until a retry applies it."""
        listed = getattr(self.read_models, "quarantined", None)
        for q in listed() if listed is not None else ():
            owner = scan.owners.get(UUID(q["originator_id"]))
            undecodable = q["stage"] == "decode"
            self.findings.append(
                Finding(
                    "projection",
                    SCHEMA_DRIFT if undecodable else QUARANTINED,
                    f"{q['key']} set notification {q['notification_id']} aside: it could not "
                    f"{'decode' if undecodable else 'apply'} it ({q['error_type']}: "
                    f"{q['error']}); retry with POST /v1/projections/{q['name']}/quarantine/"
                    f"{q['notification_id']}/retry",
                    customer_id=owner[0] if owner else None,
                    period=owner[1] if owner else None,
                    position=q["notification_id"],
                    actual=f"{q['topic']} v{q['originator_version']} of {q['originator_id']}",
                )
            )

    def _wait_for_read_models(
        self, position: int, timeout: float = 60.0
    ) -> tuple[bool, str | None]:
        """Let the read models reach the scanned position; give up at once when catching up
        fails (an event they cannot read), not only when the time is up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.read_models.wait(position, timeout=1.0):
                    return True, None
            except Exception as failure:
                return False, f"{type(failure).__name__}: {failure}"
            error = getattr(self.read_models, "last_error", None)
            if error or time.monotonic() >= deadline:
                return False, error

    def _changed_since(self, ledger: PeriodLedger) -> bool:
        return bool(
            self.app.recorder.select_events(ledger.originator_id, gt=ledger.last_version, limit=1)
        )

    def _charges(self, ledger: PeriodLedger) -> tuple[tuple[Charge, ...], str]:
        if ledger.revisions:
            issued = ledger.revisions[-1].data
            return parse_charges(issued["charges"]), issued["currency"]
        return self.app.period_charges(ledger.customer_id, ledger.period)

    def _compare_projection(self, ledger: PeriodLedger, aggregate: BillingPeriod | None) -> None:
        cause = self._explained(ledger, PARTIAL_WRITE)
        charges, currency = self._charges(ledger)
        billed = aggregate.billed if aggregate is not None else ledger.billed
        projected = {
            i["meter"]: i
            for i in self.read_models.usage(ledger.customer_id, ledger.period)["items"]
        }
        issued_lines = {
            line["meter"]: line
            for line in (ledger.revisions[-1].data["lines"] if ledger.revisions else ())
            if line.get("kind") == "usage"
        }
        for charge in charges:
            totals = billed.get(charge.meter) or new_totals(charge.aggregation, charge.field)
            quantity = decimal_text(aggregate_quantity(totals))
            amount = str(charge_amount(charge, totals, currency))
            got = projected.get(charge.meter)
            seen = (got["quantity"], got["amount"]) if got else None
            issued = issued_lines.get(charge.meter)
            self.rows.append(
                {
                    "customer_id": ledger.customer_id,
                    "meter": charge.meter,
                    "raw": decimal_text(ledger.quantity(charge.meter)),
                    "replayed": quantity,
                    "projected": seen[0] if seen else None,
                    "issued": issued["quantity"] if issued else None,
                    "amount": amount,
                    "issued_amount": issued["amount"] if issued else None,
                    "status": ledger.status,
                }
            )
            if seen != (quantity, amount):
                self._add(
                    ledger,
                    "replay_vs_projection",
                    cause,
                    "usage balance row missing"
                    if got is None
                    else "usage balance row does not match the replay",
                    meter=charge.meter,
                    expected=f"{quantity} / {amount}",
                    actual=None if seen is None else f"{seen[0]} / {seen[1]}",
                )
        self._compare_invoice(ledger, aggregate, charges, currency, cause)
        digest = self.read_models.lineage_digest(ledger.customer_id, ledger.period)
        if digest != ledger.lineage_digest:
            self._add(
                ledger,
                "replay_vs_projection",
                cause,
                "lineage rows do not add up to the period's lineage digest",
                expected=ledger.lineage_digest,
                actual=digest,
            )

    def _compare_invoice(
        self,
        ledger: PeriodLedger,
        aggregate: BillingPeriod | None,
        charges: tuple[Charge, ...],
        currency: str,
        cause: str,
    ) -> None:
        the_id = invoice_id(ledger.customer_id, ledger.period)
        if ledger.revisions:
            expected = [
                {
                    "revision": r.revision,
                    "status": r.status,
                    "total": r.data["total"],
                    "lines": r.data["lines"],
                    "lineage_digest": r.recorded_digest,
                }
                for r in ledger.revisions
            ]
        elif aggregate is not None:
            lines = aggregate.lines([c.to_dict() for c in charges], currency)
            expected = [
                {
                    "revision": 1,
                    "status": "draft",
                    "total": total_of(lines),
                    "lines": lines,
                    "lineage_digest": aggregate.lineage_digest,
                }
            ]
        else:
            return
        for want in expected:
            got = self.read_models.invoice(the_id, want["revision"])
            if got is None:
                self._add(
                    ledger,
                    "replay_vs_projection",
                    cause,
                    f"invoice revision {want['revision']} row missing",
                    revision=want["revision"],
                    expected=want["total"],
                )
                continue
            for name in ("status", "total", "lines", "lineage_digest"):
                mine, theirs = want[name], got[name]
                if name == "total":
                    mine, theirs = Decimal(mine), Decimal(theirs)
                if mine != theirs:
                    self._add(
                        ledger,
                        "replay_vs_projection",
                        cause,
                        f"invoice revision {want['revision']} {name} differs from the log",
                        revision=want["revision"],
                        expected=_short(want[name]),
                        actual=_short(got[name]),
                    )
        revisions = self.read_models.revisions(the_id) or []
        if len(revisions) != len(expected):
            self._add(
                ledger,
                "replay_vs_projection",
                cause,
                "the read model lists another number of revisions than the log",
                expected=str(len(expected)),
                actual=str(len(revisions)),
            )


def _totals_differ(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """A meter that only carried-forward records touched is an empty total on one side."""
    if a is None or b is None:
        present = a if b is None else b
        assert present is not None
        return present != new_totals(present["aggregation"], present["field"])
    return a != b


def _quantity(totals: dict[str, Any] | None) -> str | None:
    return None if totals is None else decimal_text(aggregate_quantity(totals))


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def summarise(findings: Iterable[Finding]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.cause] = counts.get(f.cause, 0) + 1
    return dict(sorted(counts.items()))


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
