"""Reads of the series projection: a customer's usage of a meter per hour, day or month, and the
daily charts of the console.

Bounds, checked before any query: `window` one of WINDOWS; `to` after `from`; at most
MAX_WINDOWS windows in the range; `limit` 1 to MAX_LIMIT windows (or items) a page; a
`group_by` property name of at most MAX_PROPERTY_NAME characters with at most MAX_GROUPS
values in the range. `from` is aligned down and `to` up to whole windows (UTC).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from billing_domain.errors import InvalidInput
from billing_domain.reducer import add_totals
from billing_domain.usage import aggregate_quantity, decimal_text, iso, new_totals
from projections.base import stamp
from projections.batch import totals_from_row
from projections.reads import decode_cursor, encode_cursor
from projections.series import SeriesProjection

WINDOWS = ("hour", "day", "month")
MAX_WINDOWS = 10_000
MAX_LIMIT = 1000
MAX_GROUPS = 100
MAX_PROPERTY_NAME = 128
KEY_LENGTH = {"hour": 13, "day": 10, "month": 7}  # a bucket's hour text cut to its window
TOTALS = "aggregation, field, sum, count, vals, adjustment"


def align(moment: datetime, window: str) -> datetime:
    """The start of the window holding `moment`."""
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if window == "hour":
        return moment
    moment = moment.replace(hour=0)
    return moment if window == "day" else moment.replace(day=1)


def following(start: datetime, window: str) -> datetime:
    """The start of the window after the one starting at `start`."""
    if window == "hour":
        return start + timedelta(hours=1)
    if window == "day":
        return start + timedelta(days=1)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def count_windows(start: datetime, end: datetime, window: str) -> int:
    if window == "month":
        return (end.year - start.year) * 12 + end.month - start.month
    size = 3600 if window == "hour" else 86400
    return int((end - start).total_seconds()) // size


def windows(start: datetime, end: datetime, window: str, n: int) -> Iterator[datetime]:
    while start < end and n > 0:
        yield start
        start, n = following(start, window), n - 1


def window_key(moment: datetime, window: str) -> str:
    return stamp(moment)[: KEY_LENGTH[window]]


def check(
    start: datetime, end: datetime, window: str, group_by: str | None, limit: int
) -> tuple[datetime, datetime]:
    """The range aligned to whole windows, or InvalidInput naming the field out of bounds."""
    if window not in WINDOWS:
        raise InvalidInput("must be one of hour, day, month", field="window")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"must be between 1 and {MAX_LIMIT}", field="limit")
    if group_by is not None and not 1 <= len(group_by) <= MAX_PROPERTY_NAME:
        raise InvalidInput(f"must be 1 to {MAX_PROPERTY_NAME} characters", field="group_by")
    if end <= start:
        raise InvalidInput("must be after from", field="to")
    first = align(start, window)
    last = align(end, window)
    if last < end:
        last = following(last, window)
    if count_windows(first, last, window) > MAX_WINDOWS:
        raise InvalidInput(
            f"the range holds more than {MAX_WINDOWS} {window} windows; narrow it or take a "
            "larger window",
            field="to",
        )
    return first, last


class SeriesReads:
    """Reads of the live series view, through the projection service's runner and store."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def _view(self) -> tuple[Any, SeriesProjection]:
        version = self.service.runner.live("series")
        projection = self.service.runner.projection(version)
        assert isinstance(projection, SeriesProjection)
        return version, projection

    def series(
        self,
        customer_id: str,
        meter: str,
        start: datetime,
        end: datetime,
        window: str = "day",
        group_by: str | None = None,
        as_of: datetime | None = None,
        cursor: str | None = None,
        limit: int = MAX_LIMIT,
    ) -> dict[str, Any]:
        """The meter's aggregate per window, oldest first; without `group_by` every window of
        the range is listed (0 where nothing was recorded), with it each (window, value) that
        has usage. Pages hold whole windows."""
        first, last = check(start, end, window, group_by, limit)
        page_start = first
        after = decode_cursor(cursor, str)
        if after is not None:
            page_start = datetime.fromisoformat(after[0].replace("Z", "+00:00"))
            if not first <= page_start < last or align(page_start, window) != page_start:
                raise InvalidInput("cursor is not one of this range", field="cursor")
        version, view = self._view()
        dim = group_by or ""
        base = [customer_id, meter, dim]
        with self.service.store.read() as cur:
            per_page = limit
            if group_by is not None:
                groups = self._groups(cur, view, base, first, last)
                per_page = max(1, limit // max(1, groups))
            starts = list(windows(page_start, last, window, per_page))
            page_end = following(starts[-1], window)
            table, params = view.t("hours"), [*base, stamp(page_start), stamp(page_end)]
            received = order = ""
            if as_of is not None:  # changes in log order: a compensation after its usage
                table, received = view.t("changes"), " AND received_at <= ?"
                order = " ORDER BY position"
                params.append(stamp(as_of))
            rows = cur.all(
                f"SELECT hour, dim_value, {TOTALS} FROM {table} WHERE customer_id = ? AND "
                f"meter = ? AND dim = ? AND hour >= ? AND hour < ?{received}{order}",
                params,
            )
        folded: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            key = (row["hour"][: KEY_LENGTH[window]], row["dim_value"])
            totals = folded.get(key)
            if totals is None:
                totals = folded[key] = new_totals(row["aggregation"], row["field"])
            add_totals(totals, totals_from_row(row))
        by_window: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for (name, dim_value), totals in sorted(folded.items()):
            by_window.setdefault(name, []).append((dim_value, totals))
        items: list[dict[str, Any]] = []
        for moment in starts:
            span = {"window_start": iso(moment), "window_end": iso(following(moment, window))}
            found = by_window.get(window_key(moment, window), [])
            if group_by is None:
                value = decimal_text(aggregate_quantity(found[0][1])) if found else "0"
                items.append({**span, "value": value})
                continue
            for dim_value, totals in found:
                value = decimal_text(aggregate_quantity(totals))
                items.append({**span, "value": value, "group": {group_by: _load(dim_value)}})
        return {
            "customer_id": customer_id,
            "meter": meter,
            "window": window,
            "range_start": iso(first),
            "range_end": iso(last),
            "group_by": group_by,
            "as_of": None if as_of is None else iso(as_of),
            "items": items,
            "next_cursor": encode_cursor(iso(page_end)) if page_end < last else None,
            "position": version.position,
        }

    @staticmethod
    def _groups(
        cur: Any, view: SeriesProjection, base: list[str], first: datetime, last: datetime
    ) -> int:
        """How many values the grouped property takes in the range; a property no usage of the
        meter ever had, or more than MAX_GROUPS values, is refused."""
        seen = cur.one(
            f"SELECT 1 AS found FROM {view.t('hours')} WHERE customer_id = ? AND meter = ? LIMIT 1",
            base[:2],
        )
        if seen is not None:
            named = cur.one(
                f"SELECT 1 AS found FROM {view.t('hours')} WHERE customer_id = ? AND meter = ? "
                "AND dim = ? LIMIT 1",
                base,
            )
            if named is None:
                raise InvalidInput(
                    f"no usage of meter {base[1]!r} has a property {base[2]!r} to group by",
                    field="group_by",
                )
        rows = cur.all(
            f"SELECT DISTINCT dim_value FROM {view.t('hours')} WHERE customer_id = ? AND "
            "meter = ? AND dim = ? AND hour >= ? AND hour < ? LIMIT ?",
            [*base, stamp(first), stamp(last), MAX_GROUPS + 1],
        )
        if len(rows) > MAX_GROUPS:
            raise InvalidInput(
                f"{base[2]!r} takes more than {MAX_GROUPS} values in the range; narrow it",
                field="group_by",
            )
        return len(rows)

    def daily(
        self,
        start: datetime,
        end: datetime,
        as_of: datetime | None = None,
        customer_id: str | None = None,
    ) -> dict[str, list[dict[str, str]]]:
        """Per meter, every UTC day of [start, end) with the meter's aggregate that day: of one
        customer, or of every customer together (their usage folded as one)."""
        first, last = check(start, end, "day", None, 1)
        _, view = self._view()
        if customer_id is None:
            table = view.t("day_changes") if as_of is not None else view.t("days")
            sql = f"SELECT meter, day AS k, {TOTALS} FROM {table} WHERE day >= ? AND day < ?"
            params: list[Any] = [stamp(first)[:10], stamp(last)[:10]]
        else:
            table = view.t("changes") if as_of is not None else view.t("hours")
            sql = (
                f"SELECT meter, hour AS k, {TOTALS} FROM {table} WHERE customer_id = ? "
                "AND dim = '' AND hour >= ? AND hour < ?"
            )
            params = [customer_id, stamp(first), stamp(last)]
        if as_of is not None:
            sql += " AND received_at <= ? ORDER BY position"
            params.append(stamp(as_of))
        with self.service.store.read() as cur:
            rows = cur.all(sql, params)
        folded: dict[str, dict[str, dict[str, Any]]] = {}
        for row in rows:
            days = folded.setdefault(row["meter"], {})
            totals = days.get(row["k"][:10])
            if totals is None:
                totals = days[row["k"][:10]] = new_totals(row["aggregation"], row["field"])
            add_totals(totals, totals_from_row(row))
        charts = {}
        for meter in sorted(folded):
            charts[meter] = [
                {
                    "day": day.date().isoformat(),
                    "value": decimal_text(aggregate_quantity(folded[meter][day_text]))
                    if (day_text := day.date().isoformat()) in folded[meter]
                    else "0",
                }
                for day in windows(first, last, "day", MAX_WINDOWS)
            ]
        return charts


def _load(value: str) -> Any:
    return json.loads(value)
