"""The series projection: usage per customer, meter and UTC hour, for time-series reads and charts.

Why hourly buckets of totals, and not a fact table per record aggregated in SQL: SQLite has no
exact decimal arithmetic (its SUM of text is a float), and a customer with a million records
in a month would make every read scan a million rows. A bucket holds the same plain-dict
totals the period aggregate keeps (`sum`, `count`, the multiset of values for `max` and
`unique_count`, the latest reading for `latest`, the signed `adjustment`), so folding the
hours of a window with the domain's reducer (`add_totals`, `aggregate_quantity`) gives the
window's exact value for every aggregation: a multiset union is exact where a sum of hourly
maxima or distinct counts would not be. A month of hourly series reads at most 744 rows.

Tables (`pj_series_v<N>_…`):

- `hours`: per (customer, meter, dim, dim_value, hour) the running totals. `dim` is '' for the
  meter's whole usage, else the name of a record property, with `dim_value` its JSON text
  (the first MAX_DIMS scalar top-level properties of a record, by name; strings up to
  MAX_DIM_VALUE characters): `group_by` reads those rows. The customer is the billed one (the
  period's), so a merged customer's usage from the merge on is under the survivor.
- `changes`: what each stored event added to each bucket, with its `received_at`: `as_of`
  reads fold the changes received by then instead of `hours` (exact, but their cost grows
  with the events of the range, as the invoices projection's `deltas`).
- `records`: per submitted (customer, event_id) the hour its record occurred in, its shape and
  what was compensated of it, because a compensation names the event, not its time.
- `days` and `day_changes`: per (meter, UTC day) the totals of every customer together (the
  console overview's chart), and what each event added, for its `as_of`.
- `periods`: the period aggregate's id to its (billed) customer.

A batch is applied as a set: one read per table (periods, records, hours, days), the events
folded in memory, one write per table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billing_domain.reducer import TRACKED, add_totals, adjustment_delta, compensation_delta
from billing_domain.usage import decimal_text, keep_latest, new_totals, tracked_value
from projections.base import Projection, dec, dumps, stamp
from projections.batch import totals_from_row
from projections.invoice_writes import upsert
from projections.store import Cursor

MAX_DIMS = 16  # groupable properties per record
MAX_DIM_VALUE = 256  # characters of a groupable string value
TOTALS = "aggregation TEXT NOT NULL, field TEXT, sum TEXT NOT NULL, count BIGINT NOT NULL, "
TOTALS += "vals TEXT NOT NULL, adjustment TEXT NOT NULL"
TOTAL_COLUMNS = ("aggregation", "field", "sum", "count", "vals", "adjustment")
HOUR_KEY = ("customer_id", "meter", "dim", "hour", "dim_value")
DAY_KEY = ("meter", "day")

Key = tuple[str, ...]
Totals = dict[str, Any]


def when(text: Any) -> datetime:
    if isinstance(text, datetime):
        return text.astimezone(UTC)
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(UTC)


def hour_of(moment: datetime) -> str:
    return stamp(moment.replace(minute=0, second=0, microsecond=0))


def hour_text(occurred_at: str) -> str:
    """A record's hour, cut from its stored UTC time (`usage.iso`) without parsing it."""
    if occurred_at.endswith("Z") and occurred_at[10:11] == "T" and occurred_at[13:14] == ":":
        return occurred_at[:13] + ":00:00.000000Z"
    return hour_of(when(occurred_at))


def dims(properties: Any) -> list[tuple[str, str]]:
    """('', '') for the meter's whole usage, then each groupable property and its value."""
    found = [("", "")]
    if not isinstance(properties, dict):
        return found
    for name in sorted(properties):
        value = properties[name]
        if len(found) > MAX_DIMS:
            break
        if isinstance(value, bool | int | float | Decimal) or (
            isinstance(value, str) and len(value) <= MAX_DIM_VALUE
        ):
            found.append((name, dumps(value)))
    return found


def merge_delta(into: Totals, delta: Totals) -> None:
    """Add a delta to another delta: unlike `add_totals`, a value's negative count is kept (a
    compensation's move out of the multiset, to be applied after the usage it corrects)."""
    into["sum"] += delta["sum"]
    into["count"] += delta["count"]
    into["adjustment"] += delta["adjustment"]
    values = into["values"]
    for value, n in delta["values"].items():
        values[value] = values.get(value, 0) + n
        if values[value] == 0:
            del values[value]
    if into["aggregation"] == "latest":
        keep_latest(values)


def _merge(into: dict[Key, Totals], key: Key, delta: Totals) -> None:
    totals = into.get(key)
    if totals is None:
        totals = into[key] = new_totals(delta["aggregation"], delta["field"])
    merge_delta(totals, delta)


def totals_row(totals: Totals) -> tuple[Any, ...]:
    return (
        totals["aggregation"],
        totals["field"],
        str(totals["sum"]),
        totals["count"],
        dumps(totals["values"]) if totals["values"] else "{}",
        str(totals["adjustment"]),
    )


def latest_value(moment: datetime, position: int, index: int, quantity: Decimal) -> str:
    """A `latest` reading ordered by occurred_at, then by the order it was received."""
    return f"{moment:%Y-%m-%dT%H:%M:%S.%f}|{position:016d}{index:06d}|{decimal_text(quantity)}"


class SeriesProjection(Projection):
    name = "series"
    topics = frozenset(
        {
            "BillingPeriod.Opened",
            "BillingPeriod.UsageRecorded",
            "BillingPeriod.UsageCompensated",
            "BillingPeriod.UsageAdjusted",
        }
    )

    def tables(self) -> dict[str, str]:
        return {
            "periods": "period_uuid TEXT PRIMARY KEY, customer_id TEXT NOT NULL",
            "records": "customer_id TEXT NOT NULL, event_id TEXT NOT NULL, hour TEXT NOT NULL, "
            "aggregation TEXT NOT NULL, field TEXT, compensated TEXT NOT NULL, "
            "PRIMARY KEY (customer_id, event_id)",
            "hours": "customer_id TEXT NOT NULL, meter TEXT NOT NULL, dim TEXT NOT NULL, "
            f"hour TEXT NOT NULL, dim_value TEXT NOT NULL, {TOTALS}, "
            "PRIMARY KEY (customer_id, meter, dim, hour, dim_value)",
            "changes": "customer_id TEXT NOT NULL, meter TEXT NOT NULL, dim TEXT NOT NULL, "
            "hour TEXT NOT NULL, dim_value TEXT NOT NULL, position BIGINT NOT NULL, "
            f"received_at TEXT NOT NULL, {TOTALS}, "
            "PRIMARY KEY (customer_id, meter, dim, hour, dim_value, position)",
            "days": f"meter TEXT NOT NULL, day TEXT NOT NULL, {TOTALS}, PRIMARY KEY (meter, day)",
            "day_changes": "meter TEXT NOT NULL, day TEXT NOT NULL, position BIGINT NOT NULL, "
            f"received_at TEXT NOT NULL, {TOTALS}, PRIMARY KEY (meter, day, position)",
        }

    def apply(self, cur: Cursor, events: Sequence[tuple[int, str, Any]]) -> None:
        batch = SeriesBatch(self, cur, events)
        for position, topic, e in events:
            if topic == "BillingPeriod.Opened":
                batch.periods[e.originator_id.hex] = e.customer_id
                batch.new_periods.append((e.originator_id.hex, e.customer_id))
            elif topic == "BillingPeriod.UsageRecorded":
                batch.usage(position, e)
            elif topic == "BillingPeriod.UsageCompensated":
                batch.compensation(position, e)
            else:
                batch.adjustment(position, e)
        batch.write()

    def changes(self, cur: Cursor, live: Projection) -> list[dict[str, Any]]:
        """Hourly buckets of the meters' whole usage that differ between the live view and this."""
        columns = ("sum", "count", "vals", "adjustment")
        rows = cur.all(
            "SELECT COALESCE(o.customer_id, n.customer_id) AS customer_id, "
            "COALESCE(o.meter, n.meter) AS meter, COALESCE(o.hour, n.hour) AS hour "
            f"FROM (SELECT * FROM {live.t('hours')} WHERE dim = '') o FULL OUTER JOIN "
            f"(SELECT * FROM {self.t('hours')} WHERE dim = '') n "
            "ON o.customer_id = n.customer_id AND o.meter = n.meter AND o.hour = n.hour "
            "WHERE o.hour IS NULL OR n.hour IS NULL "
            + "".join(f"OR o.{c} <> n.{c} " for c in columns)
        )
        return [dict(r) for r in rows]


class SeriesBatch:
    """One batch's reads, in-memory folds and writes."""

    def __init__(
        self, p: SeriesProjection, cur: Cursor, events: Sequence[tuple[int, str, Any]]
    ) -> None:
        self.p, self.cur = p, cur
        self.periods: dict[str, str] = {}
        self.new_periods: list[tuple[str, str]] = []
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.new_records: set[tuple[str, str]] = set()
        self.compensated: set[tuple[str, str]] = set()
        self.hours: dict[Key, Totals] = {}  # deltas of the batch per hour bucket
        self.changes: dict[Key, Totals] = {}  # ... per event too, with received_at
        self.days: dict[Key, Totals] = {}
        self.day_changes: dict[Key, Totals] = {}
        uuids = {e.originator_id.hex for _, t, e in events if t != "BillingPeriod.Opened"}
        for row in cur.rows_in(p.t("periods"), ["period_uuid"], [[u] for u in uuids]):
            self.periods[row["period_uuid"]] = row["customer_id"]
        wanted = {
            (e.submitted_customer_id, e.event_id)
            for _, t, e in events
            if t == "BillingPeriod.UsageCompensated"
        }
        for row in cur.rows_in(p.t("records"), ["customer_id", "event_id"], wanted):
            row["compensated"] = dec(row["compensated"])
            self.records[(row["customer_id"], row["event_id"])] = row

    def customer(self, e: Any) -> str:
        customer = self.periods.get(e.originator_id.hex)
        if customer is None:
            raise LookupError(f"period aggregate {e.originator_id.hex} has no Opened event")
        return customer

    def _add(
        self,
        customer: str,
        meter: str,
        hour: str,
        buckets: Iterable[tuple[str, str]],
        position: int,
        received_at: str,
        delta: Totals,
    ) -> None:
        for dim, value in buckets:
            key = (customer, meter, dim, hour, value)
            _merge(self.hours, key, delta)
            _merge(self.changes, (*key, received_at, str(position)), delta)
        day = hour[:10]
        _merge(self.days, (meter, day), delta)
        _merge(self.day_changes, (meter, day, received_at, str(position)), delta)

    def usage(self, position: int, e: Any) -> None:
        customer = self.customer(e)
        received = stamp(e.received_at)
        for index, record in enumerate(e.records):
            event_id, submitted, meter, quantity = record[0], record[1], record[2], record[3]
            aggregation, field = e.meters[meter][0], e.meters[meter][1]
            quantity = Decimal(quantity)
            hour = hour_text(record[4])
            delta = new_totals(aggregation, field)
            delta["sum"], delta["count"] = quantity, 1
            if aggregation == "latest":
                moment = when(record[4])
                delta["values"][latest_value(moment, position, index, quantity)] = 1
            elif aggregation in TRACKED:
                value = tracked_value(delta, quantity, record[5])
                if value is not None:
                    delta["values"][value] = 1
            self._add(customer, meter, hour, dims(record[5]), position, received, delta)
            key = (submitted, event_id)
            self.records[key] = {
                "customer_id": submitted,
                "event_id": event_id,
                "hour": hour,
                "aggregation": aggregation,
                "field": field,
                "compensated": Decimal(0),
            }
            self.new_records.add(key)

    def compensation(self, position: int, e: Any) -> None:
        customer = self.customer(e)
        key = (e.submitted_customer_id, e.event_id)
        record = self.records.get(key)
        if record is None:
            raise LookupError(f"usage event {e.event_id!r} of a compensation is not projected")
        net_before = Decimal(e.original_quantity) - record["compensated"]
        quantity = Decimal(e.quantity)
        shape = new_totals(record["aggregation"], record["field"])
        delta = compensation_delta(shape, quantity, net_before, e.properties)
        record["compensated"] += quantity
        self.compensated.add(key)
        buckets = dims(e.properties)
        hour = record["hour"]
        self._add(customer, e.meter, hour, buckets, position, stamp(e.received_at), delta)

    def adjustment(self, position: int, e: Any) -> None:
        delta = adjustment_delta(e.aggregation, e.field, Decimal(e.quantity))
        hour = hour_of(when(e.occurred_at))
        received = stamp(e.received_at)
        self._add(self.customer(e), e.meter, hour, [("", "")], position, received, delta)

    # Writing, each table once -----------------------------------------------------------------

    def _folded(self, table: str, key: tuple[str, ...], deltas: dict[Key, Totals]) -> list[Any]:
        """The stored rows of `deltas`' keys with the deltas added, read in one query."""
        current: dict[Key, Totals] = {}
        for row in self.cur.rows_in(self.p.t(table), key, deltas):
            current[tuple(row[c] for c in key)] = totals_from_row(row)
        rows = []
        for k, delta in deltas.items():
            totals = current.get(k)
            if totals is None:
                totals = new_totals(delta["aggregation"], delta["field"])
            add_totals(totals, delta)
            if totals["aggregation"] == "latest":
                keep_latest(totals["values"])
            rows.append((*k, *totals_row(totals)))
        return rows

    def write(self) -> None:
        cur, p = self.cur, self.p
        t, cols = p.t, p.columns
        cur.write_rows(t("periods"), cols("periods"), self.new_periods, "ON CONFLICT DO NOTHING")
        records = [
            (
                r["customer_id"],
                r["event_id"],
                r["hour"],
                r["aggregation"],
                r["field"],
                str(r["compensated"]),
            )
            for k, r in self.records.items()
            if k in self.new_records or k in self.compensated
        ]
        cur.write_rows(
            t("records"),
            cols("records"),
            records,
            upsert(p, "records", ("customer_id", "event_id"), ("compensated",)),
        )
        update = upsert(p, "hours", HOUR_KEY, ("sum", "count", "vals", "adjustment"))
        cur.write_rows(
            t("hours"), cols("hours"), self._folded("hours", HOUR_KEY, self.hours), update
        )
        cur.write_rows(
            t("changes"),
            cols("changes"),
            [
                (c, m, d, h, v, int(pos), rx, *totals_row(delta))
                for (c, m, d, h, v, rx, pos), delta in self.changes.items()
            ],
        )
        update = upsert(p, "days", DAY_KEY, ("sum", "count", "vals", "adjustment"))
        cur.write_rows(t("days"), cols("days"), self._folded("days", DAY_KEY, self.days), update)
        cur.write_rows(
            t("day_changes"),
            cols("day_changes"),
            [
                (m, d, int(pos), rx, *totals_row(delta))
                for (m, d, rx, pos), delta in self.day_changes.items()
            ],
        )
