"""A period's usage, folded: the one home of a period's billing arithmetic.

The period aggregate and the invoices projection both fold a period's events with these
functions, so the replay and the read model price the same figures by construction. (The
reconciliation's `verification.PeriodLedger` deliberately does not: it is the independent
check of both.) Pure: no I/O, no aggregate, plain dicts in and out, so snapshots and view rows
keep their shapes.

Every change an event makes to a meter is a *delta*: a totals dict (`usage.new_totals`) whose
`sum`, `count`, `adjustment` and multiset `values` are signed changes. Folding is adding
deltas (`add_totals`); the projection also stores each event's deltas for `as_of` reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Any

from billing_domain.invoicing import CARRIED_LINE, charge_amount
from billing_domain.merkle import append
from billing_domain.numbers import ZERO
from billing_domain.pricing import parse_charges
from billing_domain.usage import (
    DIGEST_MODULUS,
    UsageRecord,
    aggregate_quantity,
    copy_totals,
    keep_latest,
    latest_key,
    new_totals,
    tracked_value,
)
from billing_domain.verification import usage_hash

Totals = dict[str, Any]
TRACKED = ("max", "unique_count")  # aggregations that keep a multiset of values


class LatePolicy(StrEnum):
    """A customer's choice for usage arriving after its period closed."""

    CARRY_FORWARD = "carry_forward"
    RESTATE = "restate"


class Treatment(StrEnum):
    """How a period took an event (stored as `treatment`): on time, late into a restatement,
    or late and billed on a later invoice."""

    ON_TIME = "on_time"
    RESTATED = "restated"
    CARRIED_FORWARD = CARRIED_LINE


def treatment_for(closed: bool, policy: str) -> Treatment:
    """The one mapping from a customer's late-usage policy to what a period does."""
    if not closed:
        return Treatment.ON_TIME
    if policy == LatePolicy.RESTATE:
        return Treatment.RESTATED
    return Treatment.CARRIED_FORWARD


def is_billed(treatment: str) -> bool:
    """Whether the period's own invoice prices an event of this treatment."""
    return treatment != Treatment.CARRIED_FORWARD


# Deltas --------------------------------------------------------------------------------------


def add_totals(into: Totals, delta: Mapping[str, Any]) -> None:
    """Add a delta to running totals, in place; a value whose count falls to zero goes."""
    into["sum"] += delta["sum"]
    into["count"] += delta["count"]
    into["adjustment"] += delta["adjustment"]
    values = into["values"]
    for value, n in delta["values"].items():
        left = values.get(value, 0) + n
        if left > 0:
            values[value] = left
        else:
            values.pop(value, None)
    if into["aggregation"] == "latest":
        keep_latest(values)


def shape(existing: Mapping[str, Totals], meter: str, declared: Sequence[Any]) -> Totals:
    """Empty totals for a meter: a meter already folded keeps its first aggregation."""
    known = existing.get(meter)
    if known is not None:
        return new_totals(known["aggregation"], known["field"])
    return new_totals(declared[0], declared[1])


def usage_deltas(
    records: Iterable[Sequence[Any]],
    meters: Mapping[str, Sequence[Any]],
    existing: Mapping[str, Totals],
) -> dict[str, Totals]:
    """Per meter, what one event's records add: [event_id, customer, meter, quantity,
    occurred_at, properties] each, `meters` giving each meter's [aggregation, field]."""
    deltas: dict[str, Totals] = {}
    for record in map(UsageRecord._make, records):
        meter = record.meter
        delta = deltas.get(meter)
        if delta is None:
            delta = deltas[meter] = shape(existing, meter, meters[meter])
        quantity = Decimal(record.quantity)
        if delta["aggregation"] == "latest":
            before = existing[meter]["count"] if meter in existing else 0
            delta["values"][latest_key(record.occurred_at, before + delta["count"], quantity)] = 1
            keep_latest(delta["values"])
        delta["sum"] += quantity
        delta["count"] += 1
        if delta["aggregation"] in TRACKED:
            value = tracked_value(delta, quantity, record.properties)
            if value is not None:
                delta["values"][value] = delta["values"].get(value, 0) + 1
    return deltas


def compensation_delta(
    totals: Mapping[str, Any], quantity: Decimal, net_before: Decimal, properties: dict[str, Any]
) -> Totals:
    """Taking `quantity` off a record whose net quantity was `net_before`: its value moves in
    the multiset, and a record compensated to zero stops counting."""
    delta = new_totals(totals["aggregation"], totals["field"])
    delta["sum"] = -quantity
    net_after = net_before - quantity
    before = tracked_value(delta, net_before, properties)
    after = tracked_value(delta, net_after, properties)
    values = delta["values"]
    if before is not None:
        values[before] = values.get(before, 0) - 1
    if net_after <= 0:
        delta["count"] = -1
    elif after is not None:
        values[after] = values.get(after, 0) + 1
    return delta


def adjustment_delta(aggregation: str, field: str | None, quantity: Decimal) -> Totals:
    delta = new_totals(aggregation, field)
    delta["adjustment"] = quantity
    return delta


def fold(meters: dict[str, Totals], deltas: Mapping[str, Mapping[str, Any]]) -> None:
    """Add each meter's delta to a period's running totals (created as the delta's shape)."""
    for meter, delta in deltas.items():
        totals = meters.get(meter)
        if totals is None:
            totals = meters[meter] = new_totals(delta["aggregation"], delta["field"])
        add_totals(totals, delta)


# Lineage -------------------------------------------------------------------------------------


def grow(
    peaks: list[str] | None, count: int, accumulator: int, items: Iterable[int]
) -> tuple[int, int]:
    """Append billed items to the lineage tree's compact range (in place; None for a period
    still on the sum scheme) and to the sum; return the new (count, accumulator)."""
    for item in items:
        accumulator = (accumulator + item) % DIGEST_MODULUS
        if peaks is not None:
            append(peaks, count, item)
        count += 1
    return count, accumulator


def source_items(sources: Iterable[Sequence[Any]]) -> Iterator[int]:
    """A carried-forward entry's sources ([kind, id, hex item hash]) as lineage items."""
    return (int(source[2], 16) for source in sources)


# Carried forward -----------------------------------------------------------------------------


def add_carried(
    entries: dict[str, dict[str, Any]],
    from_period: str,
    meter: str,
    quantity: Decimal,
    amount: Decimal,
) -> None:
    """Sum carried-forward late usage per earlier period and meter (a line each)."""
    entry = entries.setdefault(
        f"{from_period}|{meter}",
        {"from_period": from_period, "meter": meter, "quantity": ZERO, "amount": ZERO},
    )
    entry["quantity"] += quantity
    entry["amount"] += amount


def snapshot(known: Mapping[str, Totals], meters: Iterable[str]) -> dict[str, Totals]:
    """The totals of some meters as they are now, to price a late change against."""
    return {m: copy_totals(known[m]) for m in meters if m in known}


def late_sources(
    records: Iterable[Sequence[Any]], received_at: str, emitter: str, key_id: str
) -> dict[str, list[list[Any]]]:
    """Per meter, the late records carried forward as lineage sources [kind, id, item hash]."""
    sources: dict[str, list[list[Any]]] = {}
    for record in map(UsageRecord._make, records):
        item = usage_hash(list(record), received_at, emitter, key_id)
        sources.setdefault(record.meter, []).append(["usage", record.event_id, f"{item:064x}"])
    return sources


def carried_entries(
    period: str,
    issued: Mapping[str, Any],
    before: Mapping[str, Totals],
    known: Mapping[str, Totals],
    sources: Mapping[str, list[list[Any]]],
) -> list[dict[str, Any]]:
    """What a late change made to a closed period's issued charge, per meter: the price of
    the known totals after it minus before it, each side rounded as the invoice line is."""
    charges = {c.meter: c for c in parse_charges(issued["charges"])}
    currency = issued["currency"]
    entries = []
    for meter in sorted(sources):
        after = known[meter]
        prior = before.get(meter) or new_totals(after["aggregation"], after["field"])
        charge = charges.get(meter)
        amount = ZERO
        if charge is not None:
            amount = charge_amount(charge, after, currency) - charge_amount(charge, prior, currency)
        entries.append(
            {
                "from_period": period,
                "meter": meter,
                "quantity": aggregate_quantity(after) - aggregate_quantity(prior),
                "amount": amount,
                "sources": sources[meter],
            }
        )
    return entries
