"""One pass over the log: every stored event decoded from its bytes once.

Each stored event is decoded by `decode_state` (the raw view); its domain event is made from
that decoded state, upcast as the library's mapper would (the schema check), or by the
mapper itself when a cipher or compressor is configured. An in-scope period's events feed its
`PeriodLedger`, and the events made are applied at once to the period's replayed aggregate,
so the replay neither reads nor maps them again and the scan keeps no event once it is
applied. Per in-scope usage record the scan keeps a 128-bit fingerprint of what the
idempotency index must hold for it (its place and payload hash) and checks its times; a
period whose records do not all match their index rows is read again in full
(`PeriodRecords.slow`) so that each mismatch is reported as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.utils import resolve_topic

from adapters.stored_json import UndecodableState, decode_state, domain_event
from billing_domain.application import BillingApplication
from billing_domain.verification import (
    PERIOD_TOPIC,
    PeriodLedger,
    leaves_shared,
    stored_payload_hash,
)
from projections.reconciliation.findings import (
    CLOCK_DRIFT,
    SCHEMA_DRIFT,
    TAMPERING,
    Finding,
    Progress,
    period_finding,
)

PAGE = 500
PAGE_BYTES = 8 << 20  # a page of large events is read a few events at a time
LEDGER_ERRORS = (KeyError, TypeError, ValueError, ArithmeticError, IndexError)


def fingerprint(customer_id: str, event_id: str, version: int, payload_hash: str) -> int:
    """What an index row and its stored record must agree on, in 16 bytes."""
    text = f"{customer_id}\x1f{event_id}\x1f{version}\x1f{payload_hash}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=16).digest(), "big")


@dataclass(slots=True)
class Replay:
    """A period's aggregate, rebuilt from the scanned events in version order. `error` is why
    it stopped; `refetch` says the scan met the events out of version order, so the replay
    must read them from the store instead."""

    aggregate: Any = None
    version: int = 0
    error: str | None = None
    refetch: bool = False


@dataclass
class PeriodRecords:
    """What the index and clock checks need of an in-scope period's usage records."""

    fingerprints: set[int] = field(default_factory=set)
    count: int = 0
    applied: dict[int, int] = field(default_factory=dict)  # version: position
    clock: list[Finding] = field(default_factory=list)
    slow: bool = False  # compare record by record from the stored events


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
    replays: dict[UUID, Replay] = field(default_factory=dict)
    records: dict[UUID, PeriodRecords] = field(default_factory=dict)


def in_scope(period: str | None, customer_id: str | None) -> Callable[[str, str], bool]:
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
    in-scope billing periods to their ledgers and replays and note what does not decode or
    load. With `keep_records` (the reconciliation) the records are fingerprinted, their times
    checked and event ids looked for twice; without (verification) only digests are kept."""
    scanner = _Scanner(app, Scan(stop=int(app.recorder.max_notification_id() or 0)))
    scanner.in_scope, scanner.keep_records = in_scope, keep_records
    scan, start, limit = scanner.scan, 1, 20
    with leaves_shared():  # the ledger and the replay hash each usage record once between them
        while start <= scan.stop:
            page = app.recorder.select_notifications(start, limit, stop=scan.stop)
            if not page:
                break
            scan.stored_events += len(page)
            size = sum(len(n.state) for n in page)
            limit = max(1, min(PAGE, len(page) * PAGE_BYTES // max(size, 1)))
            start = page[-1].id + 1
            last = page[-1].id
            for n in page:
                scanner.one(n)
            del page, n
            if progress is not None:
                progress(last, scan.stop)
    return scan


class _Scanner:
    in_scope: Callable[[str, str], bool]
    keep_records: bool

    def __init__(self, app: BillingApplication, scan: Scan) -> None:
        self.app, self.scan = app, scan
        self.to_domain_event = app.mapper.to_domain_event
        # The stored bytes are decoded once: the event comes from the same decoded state,
        # unless a cipher or compressor sits between them (then the mapper reads them).
        self.direct = not (app.mapper.cipher or app.mapper.compressor)
        self.skew: timedelta = app.settings.max_clock_skew

    def one(self, n: Any) -> None:
        scan, oid = self.scan, n.originator_id
        owner = scan.owners.get(oid)
        ledger = scan.ledgers.get(oid)
        if ledger is not None:  # the replay covers events that fail to decode here
            ledger.last_version = max(ledger.last_version, n.originator_version)
        try:
            cls = resolve_topic(n.topic)
        except Exception as error:
            self.drift(n, owner, f"topic {n.topic!r} names no class this code knows", error)
            return
        try:
            state = decode_state(n.state)
        except UndecodableState as error:
            self.drift(n, owner, f"stored state does not decode: {error}")
            return
        stored_version = state.get("class_version", 1)
        code_version = getattr(cls, "class_version", 1)
        if not isinstance(stored_version, int) or stored_version > code_version:
            self.drift(
                n,
                owner,
                f"written as class version {stored_version}; this code knows up to "
                f"{code_version} and cannot upcast it",
            )
            return
        try:
            if self.direct:
                event = domain_event(cls, dict(state), oid, n.originator_version)
            else:
                event = self.to_domain_event(n)
        except Exception as error:
            self.drift(n, owner, f"does not load or upcast: {type(error).__name__}: {error}")
            return
        if not n.topic.startswith(PERIOD_TOPIC):
            self.replay(n, event)
            return
        name = n.topic[len(PERIOD_TOPIC) :]
        if name == "Opened":
            owner = scan.owners[oid] = (state["customer_id"], state["period"])
            if self.in_scope(*owner):
                ledger = scan.ledgers[oid] = PeriodLedger(
                    oid, owner[0], owner[1], keep_records=False
                )
                ledger.last_version = n.originator_version
                if self.keep_records:
                    scan.replays[oid] = Replay()
                    scan.records[oid] = PeriodRecords()
        self.replay(n, event)
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
        if name == "UsageRecorded" and self.keep_records:
            self.first_seen(n.id, state.get("records", ()))
        if ledger is None:
            return
        try:
            ledger.apply(name, state, n.originator_version, n.id)
        except LEDGER_ERRORS as error:
            detail = f"fields are not what this code reads: {type(error).__name__}: {error}"
            self.drift(n, owner, detail)
            if (records := scan.records.get(oid)) is not None:
                records.applied[n.originator_version] = n.id
                records.slow = True  # the event's records are as far as the ledger read them
            return
        records = scan.records.get(oid)
        if records is None:
            return
        records.applied[n.originator_version] = n.id
        if name == "UsageRecorded" and not records.slow:
            try:
                self.fingerprint(ledger, records, state, n)
            except LEDGER_ERRORS:
                records.slow = True

    def drift(
        self, n: Any, owner: tuple[str, str] | None, detail: str, error: Exception | None = None
    ) -> None:
        scan = self.scan
        scan.drifted.add(n.originator_id)
        scan.findings.append(
            Finding(
                "decode",
                SCHEMA_DRIFT,
                detail if error is None else f"{detail} ({type(error).__name__})",
                customer_id=owner[0] if owner else None,
                period=owner[1] if owner else None,
                position=n.id,
                actual=f"{n.topic} v{n.originator_version} of {n.originator_id}",
            )
        )
        if n.originator_id in scan.replays:
            self.replay(n, None)

    def replay(self, n: Any, event: Any) -> None:
        """Apply one scanned event to its period's aggregate; an event the scan could not
        map is mapped here, so the replay fails on it as a replay from the store would."""
        r = self.scan.replays.get(n.originator_id)
        if r is None or r.error is not None or r.refetch:
            return
        if n.originator_version != r.version + 1:
            r.refetch = True
            return
        try:
            if event is None:
                event = self.to_domain_event(n)
            r.aggregate = event.mutate(r.aggregate)
        except Exception as error:
            r.error = f"{type(error).__name__}: {error}"
            return
        r.version = n.originator_version

    def first_seen(self, position: int, records: Any) -> None:
        """Note each (customer, event id) once; one seen before is a candidate duplicate,
        confirmed later by reading both events again."""
        scan = self.scan
        first_seen, candidates = scan.first_seen, scan.candidates
        for event_id, customer_id, _meter, _quantity, _occurred, _properties in records:
            key = hash(f"{customer_id}\x1f{event_id}")
            first = first_seen.setdefault(key, position)
            if first != position:
                candidates.append((first, position, str(customer_id), str(event_id)))

    def fingerprint(
        self, ledger: PeriodLedger, records: PeriodRecords, s: dict[str, Any], n: Any
    ) -> None:
        """Fingerprint each record for the index check and check its times."""
        version, received = n.originator_version, s["received_at"]
        try:
            latest = datetime.fromisoformat(received) + self.skew
        except ValueError:
            latest = None
        seen, fromiso = records.fingerprints, datetime.fromisoformat
        for record in s["records"]:
            event_id, submitted, meter, _quantity, occurred, _properties = record
            seen.add(fingerprint(submitted, event_id, version, stored_payload_hash(record)))
            try:
                at = fromiso(occurred)
                if latest is None:
                    raise ValueError(received)
            except ValueError:
                records.clock.append(
                    period_finding(
                        ledger,
                        "event_time",
                        SCHEMA_DRIFT,
                        "times do not parse",
                        event_id=event_id,
                        position=n.id,
                        meter=meter,
                    )
                )
                continue
            if at > latest:
                records.clock.append(
                    clock_finding(ledger, event_id, meter, occurred, received, n.id, self.skew)
                )
        records.count += len(s["records"])


def clock_finding(
    ledger: PeriodLedger,
    event_id: str,
    meter: str,
    occurred_at: str,
    received_at: str,
    position: int,
    skew: timedelta,
) -> Finding:
    occurred, received = datetime.fromisoformat(occurred_at), datetime.fromisoformat(received_at)
    return period_finding(
        ledger,
        "event_time",
        CLOCK_DRIFT,
        f"occurred {occurred - received} after it was received (allowed skew {skew})",
        event_id=event_id,
        meter=meter,
        position=position,
        expected=f"<= {received_at} + {skew}",
        actual=occurred_at,
    )


def event_at(app: BillingApplication, position: int) -> tuple[Any, dict[str, Any]] | None:
    page = app.recorder.select_notifications(position, 1, stop=position)
    if not page:
        return None
    try:
        return page[0], decode_state(page[0].state)
    except UndecodableState:
        return None
