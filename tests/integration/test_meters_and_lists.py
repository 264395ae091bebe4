"""Meters independent of pricing, and the catalogue listed a page at a time (both stores).

A meter is registered once (by POST /v1/meters or by the first plan charge naming it) and its
aggregation never changes; usage of any registered meter is recorded whatever the customer's
plan, and billed from the log once a plan in force prices it."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from click.testing import CliRunner
from eventsourcing.persistence import StoredEvent

from api.cli import main
from billing_domain.ids import invoice_id
from billing_domain.reducer import add_totals, fold, usage_deltas
from billing_domain.usage import aggregate_quantity, new_totals
from tests.api_support import ADMIN, event, http, setup_acme

FIXTURES = Path(__file__).parents[1] / "fixtures"


def per_unit(meter: str, amount: str, **extra: Any) -> dict[str, Any]:
    return {"meter": meter, "model": "per_unit", "unit_amount": amount, **extra}


def publish(client: Any, plan_id: str, *charges: dict[str, Any]) -> Any:
    return client.post(
        "/v1/plans", headers=ADMIN, json={"plan_id": plan_id, "currency": "USD", "charges": charges}
    )


def register(client: Any, meter: str, aggregation: str, **extra: Any) -> Any:
    body = {"meter": meter, "name": meter.replace("_", " ").title(), "aggregation": aggregation}
    return client.post("/v1/meters", headers=ADMIN, json={**body, **extra})


def lines_of(client: Any, customer_id: str, period: str) -> dict[str, dict[str, Any]]:
    invoice = client.get(f"/v1/invoices/{invoice_id(customer_id, period)}", headers=ADMIN).json()
    return {line["meter"]: line for line in invoice["lines"]}


def test_a_meter_is_registered_once_read_back_and_never_redefined(
    settings: Any, clock: Any
) -> None:
    with http(settings, clock) as (client, _):
        first = register(client, "seats", "latest", unit="seat")
        assert first.status_code == 201
        assert first.json() == {
            "meter": "seats",
            "name": "Seats",
            "aggregation": "latest",
            "field": None,
            "unit": "seat",
            "registered_by": "api",
        }
        again = register(client, "seats", "latest", name="Seats again")
        assert again.status_code == 200 and again.json() == first.json()
        other = register(client, "seats", "max")
        assert other.status_code == 409
        assert other.json()["errors"][0]["field"] == "aggregation"
        moved = register(client, "seats", "latest", field="count")
        assert moved.status_code == 409 and moved.json()["errors"][0]["field"] == "field"
        assert register(client, "users", "unique_count").json()["errors"][0]["field"] == "field"
        assert register(client, "bad", "median").status_code == 422

        assert client.get("/v1/meters/seats", headers=ADMIN).json() == first.json()
        missing = client.get("/v1/meters/nope", headers=ADMIN)
        assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "meter"

        for meter in ("a_meter", "b_meter", "c_meter"):
            assert register(client, meter, "sum").status_code == 201
        listed = pages(client, "/v1/meters", limit=2)
        assert [len(p) for p in listed] == [2, 2]
        seen = [m["meter"] for p in listed for m in p]
        assert seen == ["a_meter", "b_meter", "c_meter", "seats"]


def test_a_plan_registers_the_meters_it_charges_and_may_not_contradict_one(
    settings: Any, clock: Any
) -> None:
    with http(settings, clock) as (client, _):
        setup_acme(client)
        implied = client.get("/v1/meters/api_calls", headers=ADMIN).json()
        assert (implied["aggregation"], implied["registered_by"]) == ("sum", "plan:std")

        assert register(client, "seats", "latest").status_code == 201
        assert register(client, "users", "unique_count", field="user_id").status_code == 201
        wrong = publish(
            client, "p", per_unit("api_calls", "1"), per_unit("seats", "1", aggregation="sum")
        )
        assert wrong.status_code == 422
        assert wrong.json()["errors"][0]["field"] == "charges[1].aggregation"
        renamed = publish(
            client,
            "p",
            per_unit("users", "1", aggregation="unique_count", field="account_id"),
        )
        assert renamed.status_code == 422
        assert renamed.json()["errors"][0]["field"] == "charges[0].field"
        assert client.get("/v1/plans/p", headers=ADMIN).status_code == 404

        # A charge that names no aggregation takes its meter's.
        taken = publish(client, "p", per_unit("seats", "3"), per_unit("users", "2"))
        assert taken.status_code == 201
        charges = taken.json()["charges"]
        assert [(c["aggregation"], c.get("field")) for c in charges] == [
            ("latest", None),
            ("unique_count", "user_id"),
        ]


def test_unpriced_usage_is_recorded_then_billed_from_the_log_once_a_plan_prices_it(
    settings: Any, clock: Any
) -> None:
    with http(settings, clock) as (client, _):
        setup_acme(client)  # std prices api_calls only
        assert register(client, "exports", "sum", unit="export").status_code == 201
        sent = [
            event("e1", "3", meter="exports", occurred_at="2026-11-02T10:00:00Z"),
            event("e2", "4.5", meter="exports", occurred_at="2026-11-03T10:00:00Z"),
            event("c1", "100", occurred_at="2026-11-03T11:00:00Z"),
        ]
        for body in sent:
            answer = client.post("/v1/usage", headers=ADMIN, json=body)
            assert answer.status_code == 202 and answer.json()["status"] == "accepted"
        unknown = client.post("/v1/usage", headers=ADMIN, json=event("x", meter="nothing"))
        assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "meter"

        # Recorded, not priced: no invoice line for it while std is in force.
        draft = lines_of(client, "acme", "2026-11")
        assert set(draft) == {"api_calls"} and draft["api_calls"]["amount"] == "1.00"
        read = client.get("/v1/customers/acme/usage?period=2026-11", headers=ADMIN).json()
        assert {i["meter"]: (i["quantity"], i["amount"]) for i in read["items"]} == {
            "api_calls": ("100", "1.00"),
            "exports": ("7.5", "0.00"),
        }
        check = client.get("/v1/reconciliation?period=2026-11", headers=ADMIN).json()
        assert check["ok"] is True, check["findings"]
        exports = next(m for m in check["meters"] if m["meter"] == "exports")
        assert (exports["raw"], exports["replayed"], exports["projected"]) == ("7.5",) * 3
        assert exports["amount"] == "0.00"

        # From this open period on the customer's plan prices exports: billed from the log.
        assert (
            publish(client, "plus", per_unit("api_calls", "0.01"), per_unit("exports", "1.50"))
        ).status_code == 201
        assert (
            client.put(
                "/v1/customers/acme/subscription",
                headers=ADMIN,
                json={"plan_id": "plus", "effective_from": "2026-11"},
            ).status_code
            == 200
        )
        clock.advance(days=7)  # 2026-12-01 12:00: November has ended
        closed = client.post("/v1/customers/acme/periods/2026-11/close", headers=ADMIN).json()
        billed = {line["meter"]: line for line in closed["lines"]}
        assert billed["exports"]["quantity"] == "7.5"
        assert billed["exports"]["amount"] == "11.25"
        assert billed["api_calls"]["amount"] == "1.00"
        assert closed["total"] == "12.25"
        assert lines_of(client, "acme", "2026-11")["exports"]["amount"] == "11.25"
        read = client.get("/v1/customers/acme/usage?period=2026-11", headers=ADMIN).json()
        assert {i["meter"]: i["amount"] for i in read["items"]} == {
            "api_calls": "1.00",
            "exports": "11.25",
        }
        check = client.get("/v1/reconciliation?period=2026-11", headers=ADMIN).json()
        assert check["ok"] is True, check["findings"]


def test_usage_before_any_subscription_is_billed_by_the_subscription_covering_its_period(
    settings: Any, clock: Any
) -> None:
    with http(settings, clock) as (client, _):
        client.post("/v1/customers", headers=ADMIN, json={"customer_id": "acme", "name": "A"})
        assert register(client, "api_calls", "sum").status_code == 201
        early = client.post("/v1/usage", headers=ADMIN, json=event("early", "40"))
        assert early.status_code == 202 and early.json()["period"] == "2026-10"

        assert publish(client, "std", per_unit("api_calls", "0.25")).status_code == 201
        client.put(
            "/v1/customers/acme/subscription",
            headers=ADMIN,
            json={"plan_id": "std", "effective_from": "2026-10"},
        )
        closed = client.post("/v1/customers/acme/periods/2026-10/close", headers=ADMIN).json()
        assert closed["lines"][0]["quantity"] == "40" and closed["total"] == "10.00"


def test_a_latest_meter_bills_the_last_reading_by_occurred_at(settings: Any, clock: Any) -> None:
    with http(settings, clock) as (client, _):
        client.post("/v1/customers", headers=ADMIN, json={"customer_id": "acme", "name": "A"})
        assert register(client, "seats", "latest").status_code == 201
        publish(client, "seats", per_unit("seats", "10"), per_unit("api_calls", "0.01"))
        client.put(
            "/v1/customers/acme/subscription",
            headers=ADMIN,
            json={"plan_id": "seats", "effective_from": "2026-10"},
        )

        def seats(event_id: str, quantity: str, day: int) -> dict[str, Any]:
            return event(
                event_id, quantity, meter="seats", occurred_at=f"2026-10-{day:02d}T09:00:00Z"
            )

        batch = [seats("s1", "5", 3), seats("s2", "8", 20), seats("s3", "12", 10)]
        client.post("/v1/usage/batch", headers=ADMIN, json={"events": batch})
        assert lines_of(client, "acme", "2026-10")["seats"]["quantity"] == "8"
        # Received later, occurred earlier: not the latest reading.
        client.post("/v1/usage", headers=ADMIN, json=seats("s4", "30", 15))
        assert lines_of(client, "acme", "2026-10")["seats"]["quantity"] == "8"
        # The same instant as the latest: the one received last is the latest.
        client.post("/v1/usage", headers=ADMIN, json=seats("s5", "6", 20))
        refused = client.post(
            "/v1/customers/acme/usage/s5/compensations",
            headers=ADMIN,
            json={"compensation_id": "k", "reason": "wrong"},
        )
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "event_id"

        closed = client.post("/v1/customers/acme/periods/2026-10/close", headers=ADMIN).json()
        line = next(x for x in closed["lines"] if x["meter"] == "seats")
        assert (line["quantity"], line["amount"]) == ("6", "60.00")
        assert lines_of(client, "acme", "2026-10")["seats"]["amount"] == "60.00"
        check = client.get("/v1/reconciliation?period=2026-10", headers=ADMIN).json()
        assert check["ok"] is True, check["findings"]


def pages(client: Any, path: str, **params: Any) -> list[list[dict[str, Any]]]:
    found, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = client.get(path, headers=ADMIN, params=query)
        assert answer.status_code == 200, answer.text
        found.append(answer.json()["items"])
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            return found


def test_customers_and_plans_are_listed_a_page_at_a_time(settings: Any, clock: Any) -> None:
    with http(settings, clock) as (client, _):
        setup_acme(client)
        publish(client, "pro", per_unit("api_calls", "0.02"))
        for n in range(6):
            name = "Acme Labs" if n % 2 else f"Other {n}"
            client.post("/v1/customers", headers=ADMIN, json={"customer_id": f"c{n}", "name": name})
        client.put(
            "/v1/customers/c1/subscription",
            headers=ADMIN,
            json={"plan_id": "pro", "effective_from": "2026-11"},
        )

        listed = pages(client, "/v1/customers", limit=3)
        assert [len(p) for p in listed][:2] == [3, 3]
        ids = [c["customer_id"] for p in listed for c in p]
        assert ids == ["acme", "c0", "c1", "c2", "c3", "c4", "c5"]
        acme = listed[0][0]
        assert (acme["name"], acme["plan_id"], acme["plan_version"]) == ("Acme", "std", 1)

        labs = [
            c["customer_id"] for p in pages(client, "/v1/customers", q="acme L", limit=2) for c in p
        ]
        assert labs == ["c1", "c3", "c5"]
        on_pro = [
            c["customer_id"] for p in pages(client, "/v1/customers", plan_id="pro") for c in p
        ]
        assert on_pro == ["c1"]
        every = pages(client, "/v1/customers", q="", plan_id="")
        assert [c["customer_id"] for p in every for c in p] == ids
        bad = client.get("/v1/customers", headers=ADMIN, params={"cursor": "x1"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"

        for n in range(3):
            publish(client, "pro", per_unit("api_calls", f"0.0{n + 3}"))
        plans = pages(client, "/v1/plans", limit=1)
        assert [p[0]["plan_id"] for p in plans if p] == ["std", "pro"]
        assert plans[1][0]["versions"] == 4
        versions = pages(client, "/v1/plans/pro/versions", limit=3)
        assert [[v["version"] for v in p] for p in versions] == [[1, 2, 3], [4]]
        assert versions[1][0]["charges"][0]["unit_amount"] == "0.05"
        assert client.get("/v1/plans/nope/versions", headers=ADMIN).status_code == 404

        finance = client.post(
            "/v1/keys", headers=ADMIN, json={"role": "finance", "name": "f"}
        ).json()["key"]
        as_finance = {"Authorization": f"Bearer {finance}"}
        assert client.get("/v1/customers", headers=as_finance).status_code == 200
        assert client.get("/v1/meters", headers=as_finance).status_code == 200
        assert register(client, "x", "sum").status_code == 201
        refused = client.post(
            "/v1/meters", headers=as_finance, json={"meter": "y", "name": "Y", "aggregation": "sum"}
        )
        assert refused.status_code == 403


def test_meters_of_plans_published_before_meters_existed_are_listed_and_accepted(
    settings: Any, clock: Any
) -> None:
    fixture = json.loads((FIXTURES / "plan_published_before_meters.json").read_text())
    with http(settings, clock) as (client, services):
        services.app.recorder.insert_events(
            [
                StoredEvent(
                    originator_id=UUID(e["originator_id"]),
                    originator_version=e["originator_version"],
                    topic=e["topic"],
                    state=e["state"].encode(),
                )
                for e in fixture["events"]
            ]
        )
        meters = client.get("/v1/meters", headers=ADMIN).json()["items"]
        assert [(m["meter"], m["aggregation"], m["field"], m["registered_by"]) for m in meters] == [
            ("legacy_calls", "sum", None, "plan:legacy-plan"),
            ("legacy_users", "unique_count", "user_id", "plan:legacy-plan"),
        ]
        # A customer on another plan still sends usage of these meters.
        setup_acme(client)
        sent = client.post("/v1/usage", headers=ADMIN, json=event("u1", meter="legacy_users"))
        assert sent.status_code == 202
        contradiction = publish(client, "new", per_unit("legacy_calls", "1", aggregation="max"))
        assert contradiction.json()["errors"][0]["field"] == "charges[0].aggregation"
        named = register(client, "legacy_calls", "sum", unit="call")
        assert named.status_code == 201 and named.json()["unit"] == "call"
        assert register(client, "legacy_calls", "sum").status_code == 200
        assert (
            client.get("/v1/plans/legacy-plan/versions", headers=ADMIN).json()["items"][0][
                "charges"
            ][1]["field"]
            == "user_id"
        )


def test_the_cli_lists_customers_plans_and_meters(settings: Any, clock: Any) -> None:
    with http(settings, clock) as (client, _):
        setup_acme(client)
        register(client, "seats", "latest", unit="seat")
    env = {"BILLING_DATABASE_URL": settings.database_url}
    runner = CliRunner()
    customers = runner.invoke(main, ["customers", "list", "--json"], env=env)
    assert customers.exit_code == 0, customers.output
    assert [c["customer_id"] for c in json.loads(customers.output)["items"]] == ["acme"]
    plans = runner.invoke(main, ["plans", "list"], env=env)
    assert plans.exit_code == 0 and "std" in plans.output and "api_calls" in plans.output
    meters = runner.invoke(main, ["meters", "list", "--limit", "1", "--json"], env=env)
    page = json.loads(meters.output)
    assert [m["meter"] for m in page["items"]] == ["api_calls"] and page["next_cursor"]
    table = runner.invoke(main, ["meters", "list"], env=env)
    assert "seats" in table.output and "latest" in table.output
    bad = runner.invoke(main, ["customers", "list", "--cursor", "nope"], env=env)
    assert bad.exit_code == 2 and "cursor" in bad.output


def test_latest_readings_fold_to_the_same_figure_in_any_order_of_deltas() -> None:
    meters = {"seats": ["latest", None]}
    readings = [
        ["r1", "acme", "seats", "5", "2026-10-03T09:00:00Z", {}],
        ["r2", "acme", "seats", "8", "2026-10-20T09:00:00.5Z", {}],
        ["r3", "acme", "seats", "12", "2026-10-20T09:00:00Z", {}],
    ]
    period: dict[str, Any] = {}
    deltas = []
    for record in readings:
        delta = usage_deltas([record], meters, period)
        fold(period, delta)
        deltas.append(delta["seats"])
    assert aggregate_quantity(period["seats"]) == Decimal(8)
    backwards = new_totals("latest", None)
    for delta in reversed(deltas):
        add_totals(backwards, delta)
    assert aggregate_quantity(backwards) == Decimal(8) and len(backwards["values"]) == 1
    # The same instant: the reading received last is the latest.
    fold(
        period,
        usage_deltas([["r4", "acme", "seats", "3", "2026-10-20T09:00:00.5Z", {}]], meters, period),
    )
    assert aggregate_quantity(period["seats"]) == Decimal(3)
