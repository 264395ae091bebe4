"""Reconciliation and verification on both stores: a clean store has no finding, and each
defect injected with SQL into the stored tables is named with its cause."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.bootstrap import Services, build
from api.cli import main as cli
from billing_domain import verification
from billing_domain.errors import CompensationExceedsUsage
from billing_domain.ids import invoice_id
from billing_domain.pricing import Charge
from projections.reconciliation import reconcile, verify
from projections.reconciliation import scan as scan_module
from tests import defects
from tests.scenario import at, customer, usage

PERIOD_TOPIC = "billing_domain.period:BillingPeriod."
API_CALLS = {"api_calls": ["sum", None]}


@pytest.fixture
def world(settings: Any, clock: Any) -> Iterator[Services]:
    """Two customers' October issued (one restated by late usage), November open."""
    services = build(settings, clock=clock)
    app = services.app
    customer(app, "acme")
    customer(app, "beta", policy="restate")
    app.record_usage(
        [
            usage("e1", "12.5", at(3)),
            usage("e2", 3, at(4), meter="storage_gb"),
            usage("e3", 1500, at(5), customer_id="beta"),
        ]
    )
    app.compensate("acme", "e1", "c1", Decimal("2"), "duplicate call")
    app.adjust("acme", "a1", "api_calls", Decimal("5"), at(6), "support credit reversal")
    app.close_period("acme", "2026-10")
    app.close_period("beta", "2026-10")
    app.record_usage(
        [
            usage("late1", 7, at(9)),
            usage("late2", 9, at(9), customer_id="beta"),
            usage("n1", 4, at(2, month=11)),
        ]
    )
    services.read_models.catch_up()
    yield services
    services.close()


def causes(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(f["check"], f["cause"]) for f in report["findings"]}


def finding(report: dict[str, Any], **match: Any) -> dict[str, Any]:
    for f in report["findings"]:
        if all(f[k] == v for k, v in match.items()):
            return f
    raise AssertionError(f"no finding with {match} in {json.dumps(report['findings'], indent=1)}")


def row(report: dict[str, Any], customer_id: str, meter: str) -> dict[str, Any]:
    return next(
        r for r in report["meters"] if r["customer_id"] == customer_id and r["meter"] == meter
    )


def test_a_clean_store_reconciles_with_no_finding(world):
    october = reconcile(world, "2026-10")
    assert october["ok"] is True and october["findings"] == []
    assert october["checked"]["periods"] == 2 and october["checked"]["invoices"] == 3
    assert october["checked"]["records"] == 5  # e1 e2 e3 late2, and late1 carried
    acme = row(october, "acme", "api_calls")
    # 12.5 - 2 compensated + 5 adjusted, at 0.01 a unit: 0.155 rounds half-up to 0.16
    assert (acme["raw"], acme["replayed"], acme["projected"], acme["issued"]) == (
        "15.5",
        "15.5",
        "15.5",
        "15.5",
    )
    assert (acme["amount"], acme["issued_amount"]) == ("0.16", "0.16")
    beta = row(october, "beta", "api_calls")
    # restated: 1509 units = 1000 x 0.01 + 509 x 0.005 + 2 flat = 14.545 -> 14.55
    assert (beta["issued"], beta["issued_amount"], beta["projected"]) == ("1509", "14.55", "1509")
    november = reconcile(world, "2026-11", customer_id="acme")
    assert november["ok"] is True, november["findings"]
    assert row(november, "acme", "api_calls")["projected"] == "4"
    checked = verify(world.app)
    assert checked["ok"] is True and checked["checked"]["revisions"] == 3


def test_the_scan_hashes_each_usage_event_once_and_still_names_a_bad_digest(
    world, settings, monkeypatch
):
    """The ledger and the replay share each event's leaf hashes (one computation per billed
    usage event in scope), yet each folds its own tree: a reconciliation with sharing gives
    the same report as one without, clean and after tampering."""
    calls: list[int] = []
    computed = verification._usage_hashes

    def counted(records: Any, *tail: Any) -> Any:
        calls.append(len(records))
        return computed(records, *tail)

    monkeypatch.setattr(verification, "_usage_hashes", counted)
    october = reconcile(world, "2026-10")
    assert october["ok"] is True
    # In October's scope: acme's e1+e2 event, beta's e3 event, beta's late2 (restated): each
    # hashed once by the scan; late1 is carried to November (not billed in October).
    scanned = list(calls)
    assert sorted(scanned) == [1, 1, 2], scanned
    with monkeypatch.context() as m:
        m.setattr(verification, "leaves_shared", contextlib.nullcontext)
        m.setattr(scan_module, "leaves_shared", contextlib.nullcontext)
        calls.clear()
        unshared = reconcile(world, "2026-10")
        assert sorted(calls) == [1, 1, 1, 1, 2, 2]  # each event twice: ledger and replay
    assert _comparable(unshared) == _comparable(october)
    defects.alter_usage_quantity(settings, "e1", "125")
    tampered = reconcile(world, "2026-10")
    assert finding(tampered, check="digest", customer_id="acme")["cause"] == "tampering"


def _comparable(report: dict[str, Any]) -> str:
    return json.dumps(
        {k: v for k, v in report.items() if k not in ("seconds", "run_id")},
        default=str,
        sort_keys=True,
    )


def test_an_altered_stored_quantity_is_named_as_tampering(world, settings):
    assert defects.alter_usage_quantity(settings, "e1", "125") == "12.5"
    report = reconcile(world, "2026-10")
    assert report["ok"] is False
    altered = finding(report, check="index", event_id="e1")
    assert altered["cause"] == "tampering"
    assert (altered["expected"], altered["actual"]) == ("api_calls 12.5", "api_calls 125")
    digest = finding(report, check="digest", customer_id="acme")
    assert digest["cause"] == "tampering" and digest["revision"] == 1
    assert digest["invoice_id"] == invoice_id("acme", "2026-10")
    # The read model was built from the event as ingested; the report blames the tampering.
    stale = finding(report, check="replay_vs_projection", meter="api_calls")
    assert stale["cause"] == "tampering" and stale["expected"].startswith("128 /")
    assert finding(report, check="issued_vs_log", meter="api_calls")["actual"] == "128"
    assert not any(f["customer_id"] == "beta" for f in report["findings"])
    failed = verify(world.app)
    assert failed["ok"] is False
    assert [(f["invoice_id"], f["revision"]) for f in failed["failures"]] == [
        (invoice_id("acme", "2026-10"), 1)
    ]


def test_a_deleted_balance_row_is_a_partial_write(world, settings):
    assert defects.delete_balance(settings, "acme", "2026-10", "api_calls") == 1
    report = reconcile(world, "2026-10")
    missing = finding(report, check="replay_vs_projection", meter="api_calls")
    assert missing["cause"] == "partial_write"
    assert (missing["expected"], missing["actual"]) == ("15.5 / 0.16", "0 / 0.00")
    assert {f["cause"] for f in report["findings"]} == {"partial_write"}
    assert verify(world.app)["ok"] is True  # the log itself is intact


def test_an_altered_or_missing_invoice_row_is_a_partial_write(world, settings):
    assert defects.alter_invoice_total(settings, "acme", "2026-10", "0.01") == 1
    report = reconcile(world, "2026-10")
    altered = finding(report, check="replay_vs_projection", revision=1, customer_id="acme")
    assert altered["cause"] == "partial_write"
    assert (altered["expected"], altered["actual"]) == ("0.91", "0.01")
    assert defects.delete_invoice(settings, "beta", "2026-10") == 2
    report = reconcile(world, "2026-10")
    gone = finding(report, check="replay_vs_projection", customer_id="beta", revision=2)
    assert gone["cause"] == "partial_write" and "missing" in gone["detail"]


def test_an_inserted_event_with_a_drifted_clock_is_named(world, settings):
    defects.insert_usage(
        settings,
        "acme",
        "2026-11",
        [["drift1", "acme", "api_calls", "3", "2026-11-24T13:00:00Z", {}]],
        "2026-11-24T12:00:00Z",
        API_CALLS,
    )
    report = reconcile(world, "2026-11")
    drift = finding(report, check="event_time", event_id="drift1")
    assert drift["cause"] == "clock_drift" and drift["actual"] == "2026-11-24T13:00:00Z"
    # Nobody ingested it: it is also named as written outside the application.
    assert finding(report, check="index", event_id="drift1")["cause"] == "tampering"
    assert reconcile(world, "2026-10")["ok"] is True


def test_the_same_event_id_in_two_periods_is_named(world, settings):
    defects.insert_usage(
        settings,
        "acme",
        "2026-11",
        [["e1", "acme", "api_calls", "12.5", "2026-11-02T08:00:00Z", {}]],
        "2026-11-24T12:00:00Z",
        API_CALLS,
    )
    for period in ("2026-10", "2026-11"):
        report = reconcile(world, period)
        twice = finding(report, check="event_id", event_id="e1")
        assert twice["cause"] == "duplicate_event_id"
        assert (twice["expected"], twice["actual"]) == (
            "2026-10-03T12:00:00Z",
            "2026-11-02T08:00:00Z",
        )
        assert "acme/2026-10" in twice["detail"] and "acme/2026-11" in twice["detail"]


@pytest.mark.parametrize("defect", ["unknown topic", "newer class version", "broken state"])
def test_a_stored_event_that_no_longer_loads_is_schema_drift(world, settings, defect):
    record = [["v9", "acme", "api_calls", "1", "2026-11-03T00:00:00Z", {}]]
    state = defects.usage_state(record, "2026-11-24T12:00:00Z", API_CALLS)
    topic = PERIOD_TOPIC + "UsageRecorded"
    if defect == "unknown topic":
        topic = PERIOD_TOPIC + "UsageRecordedV9"
    elif defect == "newer class version":
        state = json.dumps({**json.loads(state), "class_version": 7}).encode()
    else:
        state = state[:40]
    version = defects.insert_raw(settings, "acme", "2026-11", topic, state)
    report = reconcile(world, "2026-11")
    drift = finding(report, check="decode")
    assert drift["cause"] == "schema_drift" and drift["customer_id"] == "acme"
    assert f" v{version} of " in drift["actual"]
    expected_reason = {
        "unknown topic": "names no class",
        "newer class version": "class version 7",
        "broken state": "does not decode",
    }[defect]
    assert expected_reason in drift["detail"]
    # The period no longer replays, and the report says why.
    assert finding(report, check="raw_vs_replay")["cause"] == "schema_drift"
    assert verify(world.app)["ok"] is False
    october = reconcile(world, "2026-10")
    if defect == "broken state":
        # The read models set aside an event of a topic they read that does not decode, and
        # go on; every period says so until it is retried.
        assert causes(october) == {("projection", "schema_drift")}
        assert "could not decode" in october["findings"][0]["detail"]
        assert october["findings"][0]["position"] == world.read_models.max_position()
    else:
        assert october["ok"] is True  # other periods are unaffected


def test_issued_amounts_that_current_pricing_would_change_are_logic_drift(world, monkeypatch):
    priced = Charge.price
    monkeypatch.setattr(Charge, "price", lambda self, quantity: priced(self, quantity) * 2)
    report = reconcile(world, "2026-10", customer_id="acme")
    drift = finding(report, check="pricing", meter="api_calls")
    assert drift["cause"] == "logic_drift" and drift["revision"] == 1
    assert (drift["expected"], drift["actual"]) == ("0.16", "0.31")
    assert "stands" in drift["detail"]
    assert world.app.invoice("acme", "2026-10")["total"] == "0.91"  # never "fixed"


def test_the_http_report_names_a_defect(world, settings):
    from litestar.testing import TestClient

    from api.http.app import create_app
    from tests.api_support import ADMIN

    with TestClient(create_app(world, background=False)) as client:
        clean = client.get("/v1/reconciliation?period=2026-10", headers=ADMIN)
        assert clean.status_code == 200 and clean.json()["ok"] is True
        defects.delete_balance(settings, "beta", "2026-10", "api_calls")
        broken = client.get(
            "/v1/reconciliation?period=2026-10&customer_id=beta", headers=ADMIN
        ).json()
        assert broken["ok"] is False and broken["summary"] == {"partial_write": 1}
        assert broken["findings"][0]["meter"] == "api_calls"
        bad = client.get("/v1/reconciliation?period=2026-13", headers=ADMIN)
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "period"


def _cli(database_url: str, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"BILLING_DATABASE_URL": database_url})


def test_cli_reconcile_and_verify_exit_non_zero_naming_the_defect(world, settings, database_url):
    clean = _cli(database_url, "reconcile", "--period", "2026-10", "--json")
    assert clean.exit_code == 0, clean.output
    assert json.loads(clean.output)["ok"] is True
    table = _cli(database_url, "reconcile", "--period", "2026-10")
    assert table.exit_code == 0 and "no differences" in table.output
    defects.alter_usage_quantity(settings, "e3", "1")
    broken = _cli(database_url, "reconcile", "--period", "2026-10")
    assert broken.exit_code == 1
    assert "tampering" in broken.output and "e3" in broken.output
    checked = _cli(database_url, "verify")
    assert checked.exit_code == 1
    assert f"FAIL {invoice_id('beta', '2026-10')} revision 1" in checked.output
    assert f"FAIL {invoice_id('beta', '2026-10')} revision 2" in checked.output
    assert f"ok   {invoice_id('acme', '2026-10')} revision 1" in checked.output


def test_cli_export_writes_invoices_lines_and_lineage(world, database_url, tmp_path):
    result = _cli(
        database_url,
        "export",
        "--period",
        "2026-10",
        "--customer",
        "acme",
        "--out",
        str(tmp_path / "csv"),
    )
    assert result.exit_code == 0, result.output
    with (tmp_path / "csv" / "invoices.csv").open() as handle:
        invoices = list(csv.DictReader(handle))
    assert [(i["invoice_id"], i["revision"], i["status"], i["total"]) for i in invoices] == [
        (invoice_id("acme", "2026-10"), "1", "issued", "0.91")
    ]
    with (tmp_path / "csv" / "invoice_lines.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert [(x["meter"], x["quantity"], x["amount"]) for x in lines] == [
        ("api_calls", "15.5", "0.16"),
        ("storage_gb", "3", "0.75"),
    ]
    with (tmp_path / "csv" / "lineage.csv").open() as handle:
        lineage = list(csv.DictReader(handle))
    assert sorted((x["line"], x["kind"], x["id"], x["quantity"]) for x in lineage) == [
        ("0", "adjustment", "a1", "5"),
        ("0", "compensation", "c1", "-2"),
        ("0", "usage", "e1", "12.5"),
        ("1", "usage", "e2", "3"),
    ]
    as_json = _cli(
        database_url,
        "export",
        "--period",
        "2026-10",
        "--format",
        "json",
        "--out",
        str(tmp_path / "all.json"),
    )
    assert as_json.exit_code == 0, as_json.output
    document = json.loads((tmp_path / "all.json").read_text())
    assert sorted(
        (i["customer_id"], i["revision"], i["status"], i["total"]) for i in document["invoices"]
    ) == [
        ("acme", 1, "issued", "0.91"),
        ("beta", 1, "superseded", "14.50"),
        ("beta", 2, "issued", "14.55"),
    ]


def test_cli_audit_lists_who_did_what(world, database_url):
    result = _cli(database_url, "audit", "--json", "--actor", "system/-")
    assert result.exit_code == 0, result.output
    actions = [json.loads(line)["action"] for line in result.output.splitlines()]
    for expected in (
        "customer.opened",
        "plan.published",
        "subscription.changed",
        "usage.compensated",
        "usage.adjusted",
        "period.closed",
        "period.restated",
    ):
        assert expected in actions
    none = _cli(database_url, "audit", "--json", "--actor", "nobody/-")
    assert none.exit_code == 0 and none.output == ""
    bad = _cli(database_url, "audit", "--since", "yesterday")
    assert bad.exit_code == 2 and "RFC 3339" in bad.output


_customers = iter(range(10**6))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("usage"), st.integers(0, 30), st.integers(1, 900), st.integers(1, 28)),
        st.tuples(st.just("retry"), st.integers(0, 30)),
        st.tuples(st.just("compensate"), st.integers(0, 30), st.integers(1, 5)),
        st.tuples(st.just("adjust"), st.integers(-50, 50)),
        st.tuples(
            st.just("close"),
        ),
    ),
    min_size=1,
    max_size=30,
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=operations, policy=st.sampled_from(["carry_forward", "restate"]))
def test_any_history_written_by_the_application_reconciles_clean(world, steps, policy):
    """Ingest, retries, compensations, adjustments, a close and late usage in any order:
    the four views agree and every issued digest verifies."""
    app = world.app
    cid = customer(app, f"prop-{next(_customers)}", policy=policy)
    sent: dict[int, Any] = {}
    for n, step in enumerate(steps):
        if step[0] == "usage" and step[1] not in sent:
            sent[step[1]] = usage(f"u{step[1]}", step[2], at(step[3]), cid)
            app.record_usage([sent[step[1]]])
        elif step[0] == "retry" and step[1] in sent:
            assert app.record_usage([sent[step[1]]])[0].status == "duplicate"
        elif step[0] == "compensate" and step[1] in sent:
            with contextlib.suppress(CompensationExceedsUsage):
                app.compensate(cid, f"u{step[1]}", f"c{n}", Decimal(step[2]), "correction")
        elif step[0] == "adjust":
            app.adjust(cid, f"a{n}", "api_calls", Decimal(step[1]), at(20), "manual")
        elif step[0] == "close":
            app.close_period(cid, "2026-10")
    for period in ("2026-10", "2026-11"):
        report = reconcile(world, period, customer_id=cid)
        assert report["findings"] == [] and report["ok"] is True, report["findings"]
        if period == "2026-10":
            assert report["checked"]["records"] == len(sent)  # late ones included
    assert verify(app)["ok"] is True
