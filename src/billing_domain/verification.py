"""What a billing period's stored events prove, recomputed without the classes being checked:
the reconciliation's `PeriodLedger`, the per-item hashes and the lineage proofs.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from billing_domain.errors import Conflict, UnknownInvoice, UnknownUsageEvent
from billing_domain.merkle import (
    MERKLE_SCHEME,
    SUM_SCHEME,
    audit_path,
    leaf_hash,
    root,
    tree_root,
)
from billing_domain.pricing import parse_charges, round_money
from billing_domain.usage import (
    DIGEST_MODULUS,
    ZERO,
    UsageInput,
    _part,
    add_record,
    aggregate_quantity,
    compensate_record,
    decimal_text,
    digest_text,
    item_hash,
    keep_latest,
    latest_key,
    new_totals,
    payload_hash,
    tracked_value,
)

PERIOD_TOPIC = "billing_domain.period:BillingPeriod."
CARRIED_FORWARD = "carried_forward"


def usage_hash(record: list[Any], received_at: str, emitter: str, key_id: str) -> int:
    """One usage record's share of the lineage digest (the period aggregate uses this too)."""
    return item_hash("usage", *record, received_at, emitter, key_id)


class _SharedLeaves(threading.local):
    active = False
    records: list[list[Any]] | None = None
    tail: tuple[str, str, str] = ("", "", "")
    hashes: list[int] = []  # noqa: RUF012 (per thread, replaced, never mutated)


_SHARED = _SharedLeaves()


@contextmanager
def leaves_shared() -> Iterator[None]:
    """Within this block (in this thread) `usage_hashes` of the very same records list, with
    the same receipt, is computed once and read twice: the reconciliation's ledger and its
    replayed aggregate fold the same decoded records, each into its own tree."""
    _SHARED.active = True
    try:
        yield
    finally:
        _SHARED.active, _SHARED.records, _SHARED.hashes = False, None, []


def usage_hashes(
    records: list[list[Any]], received_at: str, emitter: str, key_id: str
) -> Iterator[int]:
    """`usage_hash` of each record of one event, with the shared parts joined once (the hot
    path of ingest, rebuilds and checks); the digest-equals-replay tests hold it to
    `usage_hash`. Inside `leaves_shared`, the second call for the same records list object
    and receipt returns the first call's hashes."""
    if _SHARED.active:
        tail = (received_at, emitter, key_id)
        if _SHARED.records is not records or _SHARED.tail != tail:
            hashes = list(_usage_hashes(records, received_at, emitter, key_id))
            _SHARED.records, _SHARED.tail, _SHARED.hashes = records, tail, hashes
        return iter(_SHARED.hashes)
    return _usage_hashes(records, received_at, emitter, key_id)


def _usage_hashes(
    records: list[list[Any]], received_at: str, emitter: str, key_id: str
) -> Iterator[int]:
    tail = f"\x1f{received_at}\x1f{emitter}\x1f{key_id}".encode()
    sha256, from_bytes = hashlib.sha256, int.from_bytes
    for event_id, submitted, meter, quantity, occurred, properties in records:
        head = "\x1f".join(
            ("usage", event_id, submitted, meter, quantity, occurred, _part(properties))
        )
        yield from_bytes(sha256(head.encode() + tail).digest(), "big")


def compensation_hash(
    compensation_id: str,
    event_id: str,
    submitted: str,
    meter: str,
    quantity: Decimal,
    reason: str,
    received_at: str,
    actor: str,
) -> int:
    return item_hash(
        "compensation",
        compensation_id,
        event_id,
        submitted,
        meter,
        str(-quantity),
        reason,
        received_at,
        actor,
    )


def adjustment_hash(
    adjustment_id: str,
    meter: str,
    quantity: Decimal,
    occurred_at: datetime,
    reason: str,
    received_at: str,
    actor: str,
) -> int:
    return item_hash(
        "adjustment",
        adjustment_id,
        meter,
        str(quantity),
        occurred_at.isoformat(),
        reason,
        received_at,
        actor,
    )


def stored_payload_hash(record: list[Any]) -> str:
    """`record_payload_hash` from the stored texts as they are: equal to it for the canonical
    quantity and time the ingest writes (other texts need the slow form)."""
    event_id, customer_id, meter, quantity, occurred_at, properties = record
    canonical = "\x1f".join(
        (customer_id, event_id, meter, quantity, occurred_at, _part(properties))
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_payload_hash(record: list[Any]) -> str:
    """The idempotency payload hash of a stored usage record, as the ingest computed it."""
    event_id, customer_id, meter, quantity, occurred_at, properties = record
    return payload_hash(
        UsageInput(
            event_id,
            customer_id,
            meter,
            Decimal(quantity),
            datetime.fromisoformat(occurred_at.replace("Z", "+00:00")),
            properties,
        )
    )


@dataclass(slots=True)
class UsageSeen:
    """A usage record as stored, with where it is."""

    event_id: str
    customer_id: str  # as submitted (a merged customer's usage is billed elsewhere)
    meter: str
    quantity: str
    occurred_at: str
    received_at: str
    payload_hash_now: str
    version: int
    position: int
    billed: bool


@dataclass(slots=True)
class CorrectionSeen:
    kind: str  # compensation | adjustment
    key: str
    meter: str
    quantity: str
    version: int
    position: int


@dataclass
class Revision:
    """An invoice revision as recorded at close or restatement, with its digest recomputed
    under the scheme it was issued with."""

    revision: int
    status: str
    data: dict[str, Any]
    recomputed_digest: str
    version: int
    position: int

    @property
    def recorded_digest(self) -> str:
        return str(self.data.get("lineage_digest"))

    @property
    def scheme(self) -> str:
        return revision_scheme(self.data)


def revision_scheme(data: dict[str, Any]) -> str:
    """The digest scheme of a stored Closed/Restated state; version 1 events had only sums."""
    return str(data.get("lineage_scheme") or SUM_SCHEME)


@dataclass(frozen=True, slots=True)
class Leaf:
    """One item of a period's lineage tree: what it is, its id and its sha256."""

    kind: str
    ident: str
    item: int


@dataclass
class PeriodLedger:
    """One billing period's billed totals and lineage digest, from its stored events: the
    deliberately independent re-computation the reconciliation needs. It reads the decoded
    JSON and keeps its own totals, net quantities (per record, the text a compensation needs)
    and lineage tree, sharing neither the aggregate's fold nor the projections' nor their
    reducer, only the pure arithmetic of `usage` and `pricing`: a defect in a shared fold
    would agree with itself and the reconciliation could not see it.
    """

    originator_id: UUID
    customer_id: str
    period: str
    billed: dict[str, dict[str, Any]] = field(default_factory=dict)
    carried_in: dict[tuple[str, str], dict[str, Decimal]] = field(default_factory=dict)
    # event id: its quantity's text, or (quantity or text, properties)
    net: dict[str, Any] = field(default_factory=dict)
    carried_ids: set[str] = field(default_factory=set)
    accumulator: int = 0
    nodes: list[bytes] = field(default_factory=list)  # the tree's compact range
    items: int = 0
    records: int = 0
    revisions: list[Revision] = field(default_factory=list)
    usage: list[UsageSeen] = field(default_factory=list)
    corrections: list[CorrectionSeen] = field(default_factory=list)
    last_version: int = 0
    keep_records: bool = True
    leaves: list[Leaf] | None = None  # kept only when inclusion proofs are wanted

    @property
    def peaks(self) -> list[str]:
        return [node.hex() for node in self.nodes]

    @property
    def lineage_digest(self) -> str:
        return root(self.peaks)

    def digest_under(self, scheme: str) -> str:
        if scheme == MERKLE_SCHEME:
            return root(self.peaks)
        if scheme == SUM_SCHEME:
            return digest_text(self.accumulator, self.items)
        return f"unknown lineage scheme {scheme!r}"

    @property
    def status(self) -> str:
        return "closed" if self.revisions else "open"

    def _accumulate(self, value: int, kind: str, ident: str) -> None:
        """Add one item to the sum and to the tree (RFC 6962 leaf and node prefixes), merging
        the perfect subtrees its arrival completes."""
        self.accumulator = (self.accumulator + value) % DIGEST_MODULUS
        sha256, nodes, count = hashlib.sha256, self.nodes, self.items
        node = sha256(b"\x00" + value.to_bytes(32, "big")).digest()
        while count & 1:
            node = sha256(b"\x01" + nodes.pop() + node).digest()
            count >>= 1
        nodes.append(node)
        self.items += 1
        if self.leaves is not None:
            self.leaves.append(Leaf(kind, ident, value))

    def net_of(self, event_id: str, default: tuple[Decimal, Any]) -> tuple[Decimal, Any]:
        """A record's net quantity and properties, as stored and compensated so far."""
        kept = self.net.get(event_id)
        if kept is None:
            return default
        if isinstance(kept, str):
            return Decimal(kept), {}
        quantity, properties = kept
        return (quantity if isinstance(quantity, Decimal) else Decimal(quantity)), properties

    def _meter(self, meter: str, aggregation: str, field_name: str | None) -> dict[str, Any]:
        if meter not in self.billed:
            self.billed[meter] = new_totals(aggregation, field_name)
        return self.billed[meter]

    def apply(self, name: str, state: dict[str, Any], version: int, position: int) -> None:
        """Take one stored event of this period (`name` is the event class's name)."""
        self.last_version = max(self.last_version, version)
        handler = getattr(self, f"_on_{name}", None)
        if handler is not None:
            handler(state, version, position)

    def _on_UsageRecorded(self, s: dict[str, Any], version: int, position: int) -> None:
        billed = s["treatment"] != CARRIED_FORWARD
        received, emitter, key_id = s["received_at"], s["emitter"], s["key_id"]
        records, meters, net = s["records"], s["meters"], self.net
        hashes = usage_hashes(records, received, emitter, key_id) if billed else None
        for record in records:
            event_id, submitted, meter, quantity_text, occurred, properties = record
            quantity = Decimal(quantity_text)
            if billed:
                totals = self.billed.get(meter) or self._meter(meter, *meters[meter])
                if totals["aggregation"] == "latest":
                    latest = latest_key(occurred, totals["count"], quantity)
                    add_record(totals, quantity, latest)
                    keep_latest(totals["values"])
                else:
                    add_record(totals, quantity, tracked_value(totals, quantity, properties))
                self._accumulate(next(hashes), "usage", event_id)  # type: ignore[arg-type]
            else:
                self.carried_ids.add(event_id)
            net[event_id] = (quantity_text, properties) if properties else quantity_text
            if self.keep_records:
                self.usage.append(
                    UsageSeen(
                        event_id,
                        submitted,
                        meter,
                        quantity_text,
                        occurred,
                        received,
                        record_payload_hash(record),
                        version,
                        position,
                        billed,
                    )
                )
        self.records += len(records)

    def _on_LateUsageCarriedForward(self, s: dict[str, Any], version: int, position: int) -> None:
        entry = self.carried_in.setdefault(
            (s["from_period"], s["meter"]), {"quantity": ZERO, "amount": ZERO}
        )
        entry["quantity"] += s["quantity"]
        entry["amount"] += s["amount"]
        for kind, ident, hex_hash in s["sources"]:
            self._accumulate(int(hex_hash, 16), kind, ident)

    def _on_UsageCompensated(self, s: dict[str, Any], version: int, position: int) -> None:
        event_id, quantity = s["event_id"], s["quantity"]
        net_before, properties = self.net_of(event_id, (s["original_quantity"], s["properties"]))
        self.net[event_id] = (net_before - quantity, properties)
        if (
            s["treatment"] != CARRIED_FORWARD
            and event_id not in self.carried_ids
            and s["meter"] in self.billed
        ):
            totals = self.billed[s["meter"]]
            compensate_record(
                totals,
                quantity,
                net_before=net_before,
                value_before=tracked_value(totals, net_before, properties),
                value_after=tracked_value(totals, net_before - quantity, properties),
            )
            self._accumulate(
                compensation_hash(
                    s["compensation_id"],
                    event_id,
                    s["submitted_customer_id"],
                    s["meter"],
                    quantity,
                    s["reason"],
                    s["received_at"],
                    s["actor"],
                ),
                "compensation",
                s["compensation_id"],
            )
        self.corrections.append(
            CorrectionSeen(
                "compensation",
                s["compensation_id"],
                s["meter"],
                decimal_text(quantity),
                version,
                position,
            )
        )

    def _on_UsageAdjusted(self, s: dict[str, Any], version: int, position: int) -> None:
        if s["treatment"] != CARRIED_FORWARD:
            self._meter(s["meter"], s["aggregation"], s["field"])["adjustment"] += s["quantity"]
            self._accumulate(
                adjustment_hash(
                    s["adjustment_id"],
                    s["meter"],
                    s["quantity"],
                    s["occurred_at"],
                    s["reason"],
                    s["received_at"],
                    s["actor"],
                ),
                "adjustment",
                s["adjustment_id"],
            )
        self.corrections.append(
            CorrectionSeen(
                "adjustment",
                s["adjustment_id"],
                s["meter"],
                decimal_text(s["quantity"]),
                version,
                position,
            )
        )

    def _on_Closed(self, s: dict[str, Any], version: int, position: int) -> None:
        self._issue(s, version, position)

    def _on_Restated(self, s: dict[str, Any], version: int, position: int) -> None:
        self._issue(s, version, position)

    def _issue(self, s: dict[str, Any], version: int, position: int) -> None:
        for earlier in self.revisions:
            earlier.status = "superseded"
        self.revisions.append(
            Revision(
                int(s["revision"]),
                "issued",
                s,
                self.digest_under(revision_scheme(s)),
                version,
                position,
            )
        )

    def quantity(self, meter: str) -> Decimal:
        totals = self.billed.get(meter)
        return aggregate_quantity(totals) if totals else ZERO


def repriced_lines(revision: dict[str, Any]) -> list[dict[str, Any]]:
    """Usage lines of an issued revision whose amount current pricing would not give:
    [{line, meter, quantity, issued, now}]. Carried-forward lines were priced in their own
    period's terms and are checked there; a total that is not the sum of its lines is listed
    with line None."""
    charges = {c.meter: c for c in parse_charges(revision.get("charges") or [])}
    currency = revision["currency"]
    drifted = []
    for index, line in enumerate(revision.get("lines") or []):
        charge = charges.get(line["meter"])
        if line.get("kind") != "usage" or charge is None:
            continue
        now = round_money(charge.price(Decimal(line["quantity"])), currency)
        if now != Decimal(line["amount"]):
            drifted.append(
                {
                    "line": index,
                    "meter": line["meter"],
                    "quantity": line["quantity"],
                    "issued": line["amount"],
                    "now": str(now),
                }
            )
    total = sum((Decimal(line["amount"]) for line in revision.get("lines") or []), ZERO)
    if total != Decimal(revision["total"]):
        drifted.append(
            {
                "line": None,
                "meter": None,
                "quantity": None,
                "issued": revision["total"],
                "now": str(total),
            }
        )
    return drifted


def lineage_proof(
    ledger: PeriodLedger, invoice: str, event_id: str, revision: int | None = None
) -> dict[str, Any]:
    """The audit path of `event_id`'s item in a revision's lineage tree (the latest revision,
    or the draft of an open period), from a ledger fed with `leaves` kept."""
    assert ledger.leaves is not None, "the ledger was not asked to keep its leaves"
    if revision is None and ledger.revisions:
        revision = ledger.revisions[-1].revision
    recorded = None
    if revision is None or (revision == 1 and not ledger.revisions):
        number, scheme, count = 1, MERKLE_SCHEME, ledger.items
    else:
        rev = next((r for r in ledger.revisions if r.revision == revision), None)
        if rev is None:
            raise UnknownInvoice(f"invoice {invoice!r} has no revision {revision}")
        number, scheme, count = rev.revision, rev.scheme, int(rev.data["items"])
        recorded = rev.recorded_digest
    if scheme != MERKLE_SCHEME:
        raise Conflict(
            f"revision {number} of {invoice!r} was digested under {scheme}, which has no "
            "inclusion proofs"
        )
    leaves = ledger.leaves[:count]
    index = next((i for i, leaf in enumerate(leaves) if leaf.ident == event_id), None)
    if index is None:
        raise UnknownUsageEvent(
            f"no item {event_id!r} in revision {number} of {invoice!r}", field="event_id"
        )
    items = [leaf.item for leaf in leaves]
    return {
        "invoice_id": invoice,
        "revision": number,
        "scheme": scheme,
        "kind": leaves[index].kind,
        "leaf_hash": leaf_hash(items[index]).hex(),
        "leaf_index": index,
        "leaf_count": count,
        "path": audit_path(items, index),
        "root": tree_root(items),
        "lineage_digest": recorded,  # as issued; equal to root unless the log was altered
    }
