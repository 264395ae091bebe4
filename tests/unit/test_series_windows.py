"""Windows of the usage series: UTC hours, days and months, aligned and bounded before any read."""

from __future__ import annotations

from datetime import datetime

import pytest

from billing_domain.errors import InvalidInput
from projections.series import dims, hour_text
from projections.series_reads import MAX_WINDOWS, align, check, count_windows, following


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_range_is_aligned_to_whole_windows_in_utc() -> None:
    start, end = at("2026-11-05T10:30:00+02:00"), at("2026-12-31T23:00:01Z")
    assert check(start, end, "hour", None, 10) == (
        at("2026-11-05T08:00:00Z"),
        at("2027-01-01T00:00:00Z"),
    )
    assert check(start, end, "day", None, 10) == (
        at("2026-11-05T00:00:00Z"),
        at("2027-01-01T00:00:00Z"),
    )
    assert check(start, end, "month", None, 10) == (
        at("2026-11-01T00:00:00Z"),
        at("2027-01-01T00:00:00Z"),
    )
    assert following(at("2026-12-01T00:00:00Z"), "month") == at("2027-01-01T00:00:00Z")
    assert align(at("2026-12-31T23:59:59Z"), "month") == at("2026-12-01T00:00:00Z")
    assert count_windows(at("2026-11-01T00:00:00Z"), at("2027-02-01T00:00:00Z"), "month") == 3
    assert count_windows(at("2026-11-01T00:00:00Z"), at("2026-11-02T00:00:00Z"), "hour") == 24


@pytest.mark.parametrize(
    ("start", "end", "window", "group_by", "limit", "field"),
    [
        ("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", "week", None, 10, "window"),
        ("2026-11-02T00:00:00Z", "2026-11-01T00:00:00Z", "day", None, 10, "to"),
        ("2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z", "day", None, 10, "to"),
        ("2025-01-01T00:00:00Z", "2026-11-01T00:00:00Z", "hour", None, 10, "to"),
        ("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", "day", None, 0, "limit"),
        ("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", "day", None, 1001, "limit"),
        ("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", "day", "", 10, "group_by"),
    ],
)
def test_out_of_bounds_input_names_its_field(
    start: str, end: str, window: str, group_by: str | None, limit: int, field: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        check(at(start), at(end), window, group_by, limit)
    assert refused.value.field == field


def test_the_largest_range_is_accepted_and_one_more_window_is_not() -> None:
    start = at("2020-01-01T00:00:00Z")
    assert check(start, at("2021-02-20T16:00:00Z"), "hour", None, 1)  # 10,000 hours
    assert count_windows(start, at("2021-02-20T16:00:00Z"), "hour") == MAX_WINDOWS
    with pytest.raises(InvalidInput):
        check(start, at("2021-02-20T16:00:01Z"), "hour", None, 1)


def test_groupable_properties_and_hours() -> None:
    assert dims({"zone": "a", "n": 3, "big": "x" * 300, "list": [1], "flag": True}) == [
        ("", ""),
        ("flag", "true"),
        ("n", "3"),
        ("zone", '"a"'),
    ]
    assert hour_text("2026-11-05T10:59:59.999999Z") == "2026-11-05T10:00:00.000000Z"
    assert hour_text("2026-11-05T12:30:00+02:00") == "2026-11-05T10:00:00.000000Z"
