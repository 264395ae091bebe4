"""Usage over time (GET /v1/customers/{customer_id}/usage/series), on SQLite and PostgreSQL.

A finance person charts a customer's usage per hour, day or month: each window holds the
meter's aggregation of the usage that occurred in it, compensations and adjustments applied,
and a month's window is exactly the period's quantity the usage read shows."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from api.cli import main
from tests.api_support import ADMIN, bearer, event, http, setup_acme

SERIES = "/v1/customers/{}/usage/series"
NOV = {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}


@pytest.fixture
def api(settings: Any, clock: Any) -> Any:
    with http(settings, clock) as pair:
        yield pair


def register(client: Any, meter: str, aggregation: str, **extra: Any) -> None:
    body = {"meter": meter, "name": meter, "aggregation": aggregation, **extra}
    assert client.post("/v1/meters", headers=ADMIN, json=body).status_code == 201


def send(client: Any, *events: dict[str, Any]) -> None:
    answer = client.post("/v1/usage/batch", headers=ADMIN, json={"events": list(events)})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["accepted"] * len(events), [
        r.get("detail") for r in results
    ]


def series(client: Any, meter: str, customer: str = "acme", **params: Any) -> dict[str, Any]:
    answer = client.get(
        SERIES.format(customer), headers=ADMIN, params={"meter": meter, **NOV, **params}
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def values(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i["window_start"], i["value"]) for i in body["items"] if i["value"] != "0"]


def period_quantity(client: Any, meter: str, customer: str = "acme", **params: Any) -> str:
    usage = client.get(
        f"/v1/customers/{customer}/usage", headers=ADMIN, params={"period": "2026-11", **params}
    ).json()
    return str(next(i["quantity"] for i in usage["items"] if i["meter"] == meter))


def meters_with_usage(client: Any) -> None:
    """Five meters, one per aggregation, with usage over three days of November, a partial
    and a full compensation, and an adjustment."""
    setup_acme(client)
    register(client, "peak", "max")
    register(client, "users", "unique_count", field="user")
    register(client, "requests", "count")
    register(client, "seats", "latest")
    day = "2026-11-0{}T{:02d}:{:02d}:00Z"
    usage = [
        ("c1", "api_calls", "10", day.format(1, 9, 0), {"region": "eu"}),
        ("c2", "api_calls", "5", day.format(1, 9, 30), {"region": "us"}),
        ("c3", "api_calls", "7.5", day.format(2, 23, 59), {"region": "eu"}),
        ("p1", "peak", "4", day.format(1, 8, 0), {}),
        ("p2", "peak", "9", day.format(2, 8, 0), {}),
        ("p3", "peak", "6", day.format(2, 9, 0), {}),
        ("u1", "users", "1", day.format(1, 8, 0), {"user": "ann"}),
        ("u2", "users", "1", day.format(1, 9, 0), {"user": "bob"}),
        ("u3", "users", "1", day.format(2, 9, 0), {"user": "ann"}),
        ("u4", "users", "1", day.format(3, 9, 0), {"user": "cy"}),
        ("r1", "requests", "1", day.format(1, 8, 0), {}),
        ("r2", "requests", "1", day.format(1, 8, 5), {}),
        ("r3", "requests", "1", day.format(3, 8, 0), {}),
        ("s1", "seats", "3", day.format(1, 8, 0), {}),
        ("s2", "seats", "8", day.format(2, 8, 0), {}),
        ("s3", "seats", "5", day.format(3, 8, 0), {}),
    ]
    send(
        client,
        *(event(i, q, at, meter=m, properties=p, customer_id="acme") for i, m, q, at, p in usage),
    )
    compensations = [("c1", "k1", "4"), ("p2", "k2", None), ("u4", "k3", None), ("r2", "k4", None)]
    for event_id, compensation_id, quantity in compensations:
        body: dict[str, Any] = {"compensation_id": compensation_id, "reason": "refund"}
        if quantity is not None:
            body["quantity"] = quantity
        answer = client.post(
            f"/v1/customers/acme/usage/{event_id}/compensations", headers=ADMIN, json=body
        )
        assert answer.status_code == 201, answer.text
    adjusted = client.post(
        "/v1/customers/acme/adjustments",
        headers=ADMIN,
        json={
            "adjustment_id": "a1",
            "meter": "api_calls",
            "quantity": "-2",
            "occurred_at": day.format(3, 12, 0),
            "reason": "goodwill",
        },
    )
    assert adjusted.status_code == 201, adjusted.text


def test_each_aggregation_per_day_and_the_month_is_the_period_quantity(api: Any) -> None:
    client, _ = api
    meters_with_usage(client)
    days = {m: values(series(client, m, window="day")) for m in ("api_calls", "peak")}
    d = "2026-11-0{}T00:00:00Z".format
    assert days["api_calls"] == [(d(1), "11"), (d(2), "7.5"), (d(3), "-2")]
    assert days["peak"] == [(d(1), "4"), (d(2), "6")]  # p2's 9 fully compensated
    assert values(series(client, "users", window="day")) == [(d(1), "2"), (d(2), "1")]
    assert values(series(client, "requests", window="day")) == [(d(1), "1"), (d(3), "1")]
    assert values(series(client, "seats", window="day")) == [(d(1), "3"), (d(2), "8"), (d(3), "5")]
    expected = {"api_calls": "16.5", "peak": "6", "users": "2", "requests": "2", "seats": "5"}
    for meter, quantity in expected.items():
        month = series(client, meter, window="month")
        assert values(month) == [("2026-11-01T00:00:00Z", quantity)], meter
        assert period_quantity(client, meter) == quantity, meter
    for meter in ("api_calls", "requests"):  # sums of windows are the period's
        for window in ("hour", "day"):
            body = series(client, meter, window=window)
            assert sum(Decimal(i["value"]) for i in body["items"]) == Decimal(expected[meter])
    hours = series(client, "api_calls", window="hour", to="2026-11-02T00:00:00Z")
    assert len(hours["items"]) == 24 and hours["next_cursor"] is None
    assert values(hours) == [("2026-11-01T09:00:00Z", "11")]
    assert hours["aggregation"] == "sum" and hours["window"] == "hour"


def test_grouped_by_a_property_and_its_bounds(api: Any, monkeypatch: Any) -> None:
    client, _ = api
    meters_with_usage(client)
    grouped = series(client, "api_calls", window="day", group_by="region")
    assert [(i["window_start"][:10], i["group"], i["value"]) for i in grouped["items"]] == [
        ("2026-11-01", {"region": "eu"}, "6"),
        ("2026-11-01", {"region": "us"}, "5"),
        ("2026-11-02", {"region": "eu"}, "7.5"),
    ]
    unknown = client.get(
        SERIES.format("acme"), headers=ADMIN, params={"meter": "api_calls", "group_by": "zone"}
    )
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "group_by"
    monkeypatch.setattr("projections.series_reads.MAX_GROUPS", 1)
    wide = client.get(
        SERIES.format("acme"), headers=ADMIN, params={"meter": "api_calls", "group_by": "region"}
    )
    assert wide.status_code == 422
    assert wide.json()["errors"][0]["field"] == "group_by"
    assert "more than 1 values" in wide.json()["errors"][0]["reason"]


def test_pages_hold_whole_windows_and_follow_next_cursor(api: Any) -> None:
    client, _ = api
    meters_with_usage(client)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"window": "hour", "limit": 7, "to": "2026-11-02T00:00:00Z"}
        if cursor:
            params["cursor"] = cursor
        body = series(client, "api_calls", **params)
        seen += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 4 and len(seen) == 24
    assert [i["window_start"][11:13] for i in seen] == [f"{h:02d}" for h in range(24)]
    grouped = series(client, "api_calls", window="day", group_by="region", limit=2)
    assert len(grouped["items"]) == 2 and grouped["next_cursor"] is not None


def test_as_of_before_a_late_event_shows_what_was_known(api: Any, clock: Any) -> None:
    client, _ = api
    setup_acme(client)
    send(client, event("early", 100, "2026-11-03T10:00:00Z"))
    before = clock.now.isoformat()
    clock.advance(hours=2)
    send(client, event("late", 50, "2026-11-02T10:00:00Z"))
    then = series(client, "api_calls", as_of=before)
    now = series(client, "api_calls")
    assert values(then) == [("2026-11-03T00:00:00Z", "100")]
    assert values(now) == [("2026-11-02T00:00:00Z", "50"), ("2026-11-03T00:00:00Z", "100")]
    assert then["as_of"] is not None
    assert period_quantity(client, "api_calls", as_of=before) == "100"


def test_a_merged_customers_usage_is_under_the_survivor_from_the_merge(api: Any) -> None:
    client, _ = api
    setup_acme(client)
    answer = client.post(
        "/v1/customers", headers=ADMIN, json={"customer_id": "oldco", "name": "Old Co"}
    )
    assert answer.status_code == 201
    merged = client.post(
        "/v1/customers/oldco/merge",
        headers=ADMIN,
        json={"into": "acme", "effective_at": "2026-11-10T00:00:00Z"},
    )
    assert merged.status_code == 200, merged.text
    send(
        client,
        event("o1", 3, "2026-11-09T12:00:00Z", customer_id="oldco"),
        event("o2", 4, "2026-11-11T12:00:00Z", customer_id="oldco"),
        event("a1", 5, "2026-11-11T13:00:00Z"),
    )
    assert values(series(client, "api_calls", "oldco")) == [("2026-11-09T00:00:00Z", "3")]
    assert values(series(client, "api_calls")) == [("2026-11-11T00:00:00Z", "9")]
    assert period_quantity(client, "api_calls") == "9"


def test_unknown_resources_and_out_of_bounds_input_are_refused(api: Any) -> None:
    client, _ = api
    setup_acme(client)
    url = SERIES.format("acme")
    missing = client.get(SERIES.format("nobody"), headers=ADMIN, params={"meter": "api_calls"})
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "customer_id"
    no_meter = client.get(url, headers=ADMIN, params={"meter": "nope"})
    assert no_meter.status_code == 404 and no_meter.json()["errors"][0]["field"] == "meter"
    refused = {
        "window": {"window": "week"},
        "to": {"from": "2026-11-05T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
        "limit": {"limit": 0},
        "cursor": {"cursor": "bm9wZQ=="},
        "as_of": {"as_of": "yesterday"},
        "from": {"from": "2026-11-01"},
        "group_by": {"group_by": "x" * 129},
    }
    for field, params in refused.items():
        answer = client.get(url, headers=ADMIN, params={"meter": "api_calls", **params})
        assert answer.status_code == 422, (field, answer.text)
        assert answer.json()["errors"][0]["field"] == field, answer.json()
    too_many = client.get(
        url,
        headers=ADMIN,
        params={"meter": "api_calls", "window": "hour", "from": "2025-01-01T00:00:00Z"},
    )
    assert too_many.status_code == 422 and "10000 hour windows" in too_many.json()["detail"]
    key = client.post("/v1/keys", headers=ADMIN, json={"role": "operator", "name": "ops"})
    operator = client.get(url, headers=bearer(key.json()["key"]), params={"meter": "api_calls"})
    assert operator.status_code == 403


def test_a_rebuild_of_the_series_answers_the_same(api: Any) -> None:
    client, services = api
    meters_with_usage(client)
    queries = [
        ("api_calls", {"window": "hour"}),
        ("api_calls", {"window": "day", "group_by": "region"}),
        ("peak", {"window": "day"}),
        ("users", {"window": "month"}),
        ("seats", {"window": "day"}),
    ]
    before = [series(client, meter, **params)["items"] for meter, params in queries]
    models = services.read_models
    version = models.rebuilds.begin("series")
    models.rebuilds.build(version)
    assert models.rebuilds.diff(version) == []
    models.rebuilds.switch(version)
    assert models.runner.live("series").version == version.version == 2
    after = [series(client, meter, **params)["items"] for meter, params in queries]
    assert after == before


def test_the_cli_prints_a_series(api: Any, settings: Any) -> None:
    from click.testing import CliRunner

    client, _ = api
    setup_acme(client)
    send(client, event("c1", 12, "2026-11-03T10:00:00Z"))
    env = {"BILLING_DATABASE_URL": settings.database_url, "BILLING_ADMIN_KEY": "test-admin-key"}
    args = ["usage", "series", "acme", "api_calls", "--from", NOV["from"], "--to", NOV["to"]]
    result = CliRunner().invoke(main, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert '"value": "12"' in result.output
    table = CliRunner().invoke(main, args, env=env)
    assert table.exit_code == 0 and "2026-11-03" in table.output and "12" in table.output


AGGREGATIONS = {
    "m_sum": ("sum", None),
    "m_count": ("count", None),
    "m_max": ("max", None),
    "m_unique": ("unique_count", "user"),
    "m_latest": ("latest", None),
}
records = st.lists(
    st.tuples(
        st.sampled_from(sorted(AGGREGATIONS)),
        st.integers(min_value=1, max_value=23),  # day (the clock is at the 24th)
        st.integers(min_value=0, max_value=23),  # hour
        st.decimals(min_value=0, max_value=1000, places=2),
        st.sampled_from(["ann", "bob", "cy"]),
        st.sampled_from([None, "all", "part"]),  # compensation
    ),
    min_size=1,
    max_size=12,
)
adjustments = st.none() | st.tuples(
    st.sampled_from(sorted(AGGREGATIONS)),
    st.integers(min_value=1, max_value=23),
    st.decimals(min_value=-50, max_value=50, places=1),
)


def test_series_sums_equal_the_period_quantities_for_any_usage(settings: Any, clock: Any) -> None:
    """For random usage of every aggregation, with compensations and an adjustment, the month's
    window is the period quantity; the day windows of sum and count add up to it; without an
    adjustment the largest day window of a max meter is it, and a unique count lies between the
    largest day's and the days' sum."""
    with http(settings, clock) as (client, _):
        for meter, (aggregation, field) in AGGREGATIONS.items():
            register(client, meter, aggregation, **({"field": field} if field else {}))
        customers = iter(range(1000))

        @hsettings(
            max_examples=15,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(records, adjustments)
        def check(
            drawn: list[tuple[str, int, int, Decimal, str, str | None]],
            adjustment: tuple[str, int, Decimal] | None,
        ) -> None:
            customer = f"c{next(customers)}"
            created = client.post(
                "/v1/customers", headers=ADMIN, json={"customer_id": customer, "name": customer}
            )
            assert created.status_code == 201
            sent = []
            for n, (meter, day, hour, quantity, user, _) in enumerate(drawn):
                at = f"2026-11-{day:02d}T{hour:02d}:00:{n:02d}Z"
                sent.append(
                    event(f"e{n}", str(quantity), at, meter=meter, customer_id=customer)
                    | {"properties": {"user": user}}
                )
            send(client, *sent)
            for n, (meter, _, _, quantity, _, compensation) in enumerate(drawn):
                if compensation is None or meter == "m_latest" or quantity == 0:
                    continue
                body: dict[str, Any] = {"compensation_id": f"k{n}", "reason": "test"}
                if compensation == "part":
                    body["quantity"] = str(quantity / 2)
                answer = client.post(
                    f"/v1/customers/{customer}/usage/e{n}/compensations", headers=ADMIN, json=body
                )
                assert answer.status_code == 201, answer.text
            if adjustment is not None:
                meter, day, quantity = adjustment
                body = {
                    "adjustment_id": "a",
                    "meter": meter,
                    "quantity": str(quantity),
                    "occurred_at": f"2026-11-{day:02d}T06:00:00Z",
                    "reason": "test",
                }
                answer = client.post(
                    f"/v1/customers/{customer}/adjustments", headers=ADMIN, json=body
                )
                assert answer.status_code == 201, answer.text
            for meter in {d[0] for d in drawn}:
                total = Decimal(period_quantity(client, meter, customer))
                month = series(client, meter, customer, window="month")["items"]
                assert [Decimal(i["value"]) for i in month] == [total], meter
                days = [Decimal(i["value"]) for i in series(client, meter, customer)["items"]]
                if meter in ("m_sum", "m_count"):
                    assert sum(days) == total, meter
                elif adjustment is None and meter == "m_max":
                    assert max(days) == total, meter
                elif adjustment is None and meter == "m_unique":
                    assert max(days) <= total <= sum(days), meter

        check()
