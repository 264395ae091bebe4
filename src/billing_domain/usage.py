"""Usage values, their canonical form, and the running per-meter aggregates of a period."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from billing_domain.numbers import ZERO as ZERO  # also imported from here

DIGEST_MODULUS = 1 << 256


@dataclass(frozen=True)
class UsageInput:
    """One usage event as a product backend submits it."""

    event_id: str
    customer_id: str
    meter: str
    quantity: Decimal
    occurred_at: datetime
    properties: dict[str, Any] = field(default_factory=dict)


class UsageRecord(NamedTuple):
    """One usage record as a period's `UsageRecorded` stores it. Stored events keep the JSON
    array shape (a NamedTuple encodes as one), so old and new events read the same: code
    reading stored records takes them through `UsageRecord._make` or unpacks them by name,
    never by position."""

    event_id: str
    customer_id: str  # as submitted (a merged customer's id stays)
    meter: str
    quantity: str  # canonical decimal text
    occurred_at: str  # RFC 3339, UTC
    properties: dict[str, Any]


@dataclass(frozen=True)
class UsageResult:
    event_id: str
    status: str  # accepted | duplicate | conflict | rejected
    period: str | None = None
    treatment: str | None = None
    detail: str | None = None
    field: str | None = None
    code: str | None = None
    received_at: str | None = None


def period_of(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


def period_bounds(period: str) -> tuple[datetime, datetime]:
    year, month = int(period[:4]), int(period[5:7])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def next_period(period: str) -> str:
    return period_of(period_bounds(period)[1])


def iso(moment: datetime) -> str:
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def decimal_text(value: Decimal) -> str:
    """Canonical text of a quantity: 1, 1.0 and 1.00 are the same payload. Exact:
    no context rounding (normalize() would round to the context's precision)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def payload_hash(item: UsageInput) -> str:
    canonical = "\x1f".join(
        (
            item.customer_id,
            item.event_id,
            item.meter,
            decimal_text(item.quantity),
            iso(item.occurred_at),
            _part(item.properties),
        )
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _part(value: Any) -> str:
    if isinstance(value, str):
        return value
    if type(value) is dict:
        if not value:
            return "{}"
        flat = _flat_json(value)
        if flat is not None:
            return flat
    return canonical_json(value)


def canonical_json(value: Any) -> str:
    """The canonical JSON of a value in hashes: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# Printable ASCII but '"' and '\\': json.dumps writes such text verbatim between quotes.
_VERBATIM = re.compile(r"[ !#-\[\]-~]*", re.ASCII)
_FLAT_MAX = 16


def _flat_json(value: dict[Any, Any]) -> str | None:
    """`canonical_json` of a small object of plain string keys and values (the usual
    properties, hashed twice per usage record), written without the encoder; None for
    anything else. A property test holds it equal to `canonical_json`."""
    if len(value) > _FLAT_MAX:
        return None
    verbatim = _VERBATIM.fullmatch
    for key, item in value.items():
        if type(key) is not str or type(item) is not str:
            return None
        if verbatim(key) is None or verbatim(item) is None:
            return None
    if len(value) == 1:
        return f'{{"{key}":"{item}"}}'
    return "{" + ",".join(f'"{key}":"{value[key]}"' for key in sorted(value)) + "}"


def item_hash(*parts: Any) -> int:
    """Hash of one contributing record for the period's order-independent lineage digest."""
    canonical = "\x1f".join(map(_part, parts))
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest(), "big")


def digest_text(accumulator: int, items: int) -> str:
    return hashlib.sha256(f"{accumulator:064x}|{items}".encode()).hexdigest()


# A meter's running totals are plain dicts so aggregate snapshots stay transcodable.
# "values" is kept only for max and unique_count meters: a multiset of net values; a latest
# meter keeps there its latest reading alone (latest_key).


def new_totals(aggregation: str, field_name: str | None) -> dict[str, Any]:
    return {
        "aggregation": aggregation,
        "field": field_name,
        "sum": ZERO,
        "count": 0,
        "values": {},
        "adjustment": ZERO,
    }


def copy_totals(totals: dict[str, Any]) -> dict[str, Any]:
    return {**totals, "values": dict(totals["values"])}


def tracked_value(
    totals: dict[str, Any], quantity: Decimal, properties: dict[str, Any]
) -> str | None:
    if totals["aggregation"] == "max":
        return decimal_text(quantity)
    if totals["aggregation"] == "unique_count":
        value = properties.get(totals["field"] or "")
        return None if value is None else json.dumps(value, sort_keys=True)
    return None


def add_record(totals: dict[str, Any], quantity: Decimal, value: str | None) -> None:
    totals["sum"] += quantity
    totals["count"] += 1
    if value is not None:
        totals["values"][value] = totals["values"].get(value, 0) + 1


def remove_value(totals: dict[str, Any], value: str | None) -> None:
    if value is not None and value in totals["values"]:
        totals["values"][value] -= 1
        if totals["values"][value] <= 0:
            del totals["values"][value]


def compensate_record(
    totals: dict[str, Any],
    quantity: Decimal,
    *,
    net_before: Decimal,
    value_before: str | None,
    value_after: str | None,
) -> None:
    """Reduce one record's net quantity; a record compensated to zero stops counting."""
    totals["sum"] -= quantity
    net_after = net_before - quantity
    remove_value(totals, value_before)
    if net_after <= 0:
        totals["count"] -= 1
    elif value_after is not None:
        totals["values"][value_after] = totals["values"].get(value_after, 0) + 1


def latest_key(occurred_at: str, ordinal: int, quantity: Decimal) -> str:
    """A `latest` meter's reading as a value whose text orders readings by occurred_at, then
    by the order they were received (`ordinal`, the meter's record count before it)."""
    moment = datetime.fromisoformat(occurred_at).astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S.%f}|{ordinal:012d}|{decimal_text(quantity)}"


def keep_latest(values: dict[str, int]) -> None:
    """A `latest` meter keeps only its latest reading: the greatest key."""
    if len(values) > 1:
        latest = max(values)
        values.clear()
        values[latest] = 1


def aggregate_quantity(totals: dict[str, Any]) -> Decimal:
    """The meter's aggregate, net of compensations, plus signed manual adjustments."""
    aggregation = totals["aggregation"]
    base: Decimal
    if aggregation == "sum":
        base = Decimal(totals["sum"])
    elif aggregation == "count":
        base = Decimal(totals["count"])
    elif aggregation == "max":
        base = max((Decimal(v) for v in totals["values"]), default=ZERO)
    elif aggregation == "latest":
        base = Decimal(max(totals["values"]).rsplit("|", 1)[1]) if totals["values"] else ZERO
    else:
        base = Decimal(len(totals["values"]))
    adjustment: Decimal = totals["adjustment"]
    return base + adjustment
