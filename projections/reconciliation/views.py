"""The other views of a period compared with its stored events: the aggregate replayed from
the log, the latest issued revision, and the read models."""

from __future__ import annotations

import time
from decimal import Decimal
from uuid import UUID

from billing_domain.ids import invoice_id
from billing_domain.invoicing import charge_amount, total_of
from billing_domain.numbers import ZERO
from billing_domain.period import BillingPeriod
from billing_domain.pricing import Charge, parse_charges, round_money
from billing_domain.usage import aggregate_quantity, decimal_text, new_totals
from billing_domain.verification import PeriodLedger
from projections.reconciliation.findings import (
    PARTIAL_WRITE,
    PROJECTION_BEHIND,
    QUARANTINED,
    SCHEMA_DRIFT,
    TAMPERING,
    UNEXPLAINED,
    Checks,
    Finding,
    quantity_text,
    short,
    totals_differ,
)
from projections.reconciliation.scan import Replay, Scan


class ViewChecks(Checks):
    # Replay ---------------------------------------------------------------------------------

    def _replay(self, ledger: PeriodLedger, scan: Scan) -> BillingPeriod | None:
        replay = scan.replays.get(ledger.originator_id)
        if (
            replay is None
            or replay.refetch
            or (replay.error is None and replay.version != ledger.last_version)
        ):
            replay = self._replay_from_store(ledger)
        if replay.error is not None:
            self._add(
                ledger,
                "raw_vs_replay",
                self._explained(ledger, UNEXPLAINED),
                f"the aggregate does not replay: {replay.error}",
            )
            return None
        aggregate = replay.aggregate
        assert isinstance(aggregate, BillingPeriod)
        for meter in sorted(set(ledger.billed) | set(aggregate.billed)):
            raw, replayed = ledger.billed.get(meter), aggregate.billed.get(meter)
            if totals_differ(raw, replayed):
                self._add(
                    ledger,
                    "raw_vs_replay",
                    self._explained(ledger, UNEXPLAINED),
                    "replayed totals differ from the stored records",
                    meter=meter,
                    expected=quantity_text(raw),
                    actual=quantity_text(replayed),
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

    def _replay_from_store(self, ledger: PeriodLedger) -> Replay:
        """The aggregate replayed by reading and mapping its events again: for a period whose
        events the scan met out of version order."""
        replay = Replay()
        try:
            for event in self.app.events.get(ledger.originator_id, lte=ledger.last_version):
                replay.aggregate = event.mutate(replay.aggregate)  # type: ignore[attr-defined,unused-ignore]
        except Exception as error:
            replay.error = f"{type(error).__name__}: {error}"
        return replay

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

    def _charges(self, ledger: PeriodLedger) -> tuple[tuple[Charge, ...], str]:
        if ledger.revisions:
            issued = ledger.revisions[-1].data
            return parse_charges(issued["charges"]), issued["currency"]
        current: tuple[tuple[Charge, ...], str] = self.app.period_charges(
            ledger.customer_id, ledger.period
        )
        return current

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
        priced = {charge.meter for charge in charges}
        unpriced = [(meter, None) for meter in sorted(set(billed) - priced)]
        for meter, charge in [*((c.meter, c) for c in charges), *unpriced]:
            if charge is None:  # recorded usage no charge prices: listed at no amount
                totals = billed[meter]
                amount = str(round_money(ZERO, currency))
            else:
                totals = billed.get(meter) or new_totals(charge.aggregation, charge.field)
                amount = str(charge_amount(charge, totals, currency))
            quantity = decimal_text(aggregate_quantity(totals))
            got = projected.get(meter)
            if charge is None and got is None and quantity == "0":
                continue
            seen = (got["quantity"], got["amount"]) if got else None
            issued = issued_lines.get(meter)
            self.rows.append(
                {
                    "customer_id": ledger.customer_id,
                    "meter": meter,
                    "raw": decimal_text(ledger.quantity(meter)),
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
                    meter=meter,
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
                        expected=short(want[name]),
                        actual=short(got[name]),
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
