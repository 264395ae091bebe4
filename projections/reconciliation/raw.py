"""Checks of the stored events themselves: event ids recorded twice, record times, the
idempotency index, the issued digests and the issued amounts under current pricing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.stored_json import decode_state
from billing_domain.usage import UsageRecord
from billing_domain.verification import PERIOD_TOPIC, PeriodLedger, repriced_lines
from projections.reconciliation.findings import (
    DUPLICATE_EVENT_ID,
    LOGIC_DRIFT,
    SCHEMA_DRIFT,
    TAMPERING,
    Checks,
    Finding,
)
from projections.reconciliation.scan import (
    LEDGER_ERRORS,
    PeriodRecords,
    Scan,
    clock_finding,
    event_at,
    fingerprint,
)

KEYS_AT_ONCE = 200_000


class RawChecks(Checks):
    def _duplicates(self, scan: Scan) -> None:
        for first, second, customer_id, event_id in scan.candidates:
            where = []
            for position in (first, second):
                found = event_at(self.app, position)
                if found is None:
                    break
                n, state = found
                record = next(
                    (
                        r
                        for r in map(UsageRecord._make, state.get("records", ()))
                        if r.event_id == event_id and r.customer_id == customer_id
                    ),
                    None,
                )
                if record is None:
                    break  # a hash collision, not the same id
                where.append(
                    (
                        scan.owners.get(n.originator_id, ("?", "?")),
                        record.occurred_at,
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

    def _all_records(self, scan: Scan) -> None:
        """The clock and index checks of every in-scope period, reading the index rows of
        as many periods at a time as add up to about `KEYS_AT_ONCE` records."""
        group: list[PeriodLedger] = []
        size = 0
        for ledger in [*scan.ledgers.values(), None]:
            if ledger is not None:
                group.append(ledger)
                size += ledger.records
                if size < KEYS_AT_ONCE:
                    continue
            if not group:
                break
            rows: dict[Any, list[Any]] = {x.originator_id: [] for x in group}
            keys_of = self.app.recorder.keys_of  # type: ignore[attr-defined,unused-ignore]
            for row in keys_of(list(rows)):
                rows[row.originator_id].append(row)
            for x in group:
                self._records(
                    x, scan.records[x.originator_id], self._in_scan(x, rows[x.originator_id])
                )
            group, size = [], 0

    def _records(self, ledger: PeriodLedger, records: PeriodRecords, rows: list[Any]) -> None:
        """One period's clock and index checks: from the scan's fingerprints when every record
        matches its index row, else record by record from the period's events."""
        usage = [r for r in rows if r.kind == "usage"]
        indexed = {
            fingerprint(r.customer_id, r.key, r.originator_version, r.payload_hash) for r in usage
        }
        if (
            not records.slow
            and len(records.fingerprints) == records.count
            and len(indexed) == len(usage)
            and indexed == records.fingerprints
        ):
            self.findings += records.clock
            self._corrections(ledger, {(r.kind, r.key): r for r in rows if r.kind != "usage"})
            return
        full = self._reread(ledger, records)
        self._clock(full)
        self._index(ledger, rows, full.usage)

    def _reread(self, ledger: PeriodLedger, records: PeriodRecords) -> PeriodLedger:
        """The period's ledger fed again, with each record kept, from the events the scan
        applied to it."""
        full = PeriodLedger(ledger.originator_id, ledger.customer_id, ledger.period)
        for stored in self.app.recorder.select_events(
            ledger.originator_id, lte=ledger.last_version
        ):
            position = records.applied.get(stored.originator_version)
            if position is None or not stored.topic.startswith(PERIOD_TOPIC):
                continue
            name = stored.topic[len(PERIOD_TOPIC) :]
            try:
                full.apply(name, decode_state(stored.state), stored.originator_version, position)
            except LEDGER_ERRORS:
                continue  # already a schema_drift finding of the scan
        return full

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
                self.findings.append(
                    clock_finding(
                        ledger, u.event_id, u.meter, u.occurred_at, u.received_at, u.position, skew
                    )
                )

    def _in_scan(self, ledger: PeriodLedger, rows: list[Any]) -> list[Any]:
        """The period's index rows, less those of events written after the scanned position
        (the log holds a later event of the period): they are not in the scan yet."""
        if any(r.originator_version > ledger.last_version for r in rows) and self._changed_since(
            ledger
        ):
            return [r for r in rows if r.originator_version <= ledger.last_version]
        return rows

    def _index(self, ledger: PeriodLedger, rows: list[Any], seen_usage: list[Any]) -> None:
        """Every stored record matches what its ingest indexed, and every index row's record
        is in the log."""
        usage = {(r.customer_id, r.key): r for r in rows if r.kind == "usage"}
        corrections = {(r.kind, r.key): r for r in rows if r.kind != "usage"}
        matched: set[tuple[str, str]] = set()
        for u in seen_usage:
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
        self._corrections(ledger, corrections)

    def _corrections(self, ledger: PeriodLedger, corrections: dict[Any, Any]) -> None:
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
