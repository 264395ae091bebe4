"""Rebuilding a projection after a change of logic; reads as known at an ingestion time."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

import pytest
from click.testing import CliRunner

from api.bootstrap import Services, build
from api.cli import main
from billing_domain.ids import invoice_id
from billing_domain.pricing import Charge
from billing_domain.settings import Settings
from projections import invoice_writes, runner
from projections.ledger import InvoicesProjection
from projections.runner import REGISTRY, Version
from tests.conftest import Clock
from tests.integration.test_projections import a_month_of_business
from tests.scenario import at, customer, usage


@pytest.fixture
def services(settings: Settings, clock: Clock) -> Iterator[Services]:
    built = build(settings, clock=clock)
    yield built
    built.close()


class WholeUnitDrafts(InvoicesProjection):
    """A change of pricing logic: draft lines are rounded up to whole currency units."""

    logic = 2

    def draft_lines(
        self,
        period: str,
        meters: dict[str, dict[str, Any]],
        charges: Sequence[Charge],
        carried: list[dict[str, Any]],
        currency: str,
    ) -> list[dict[str, Any]]:
        lines = super().draft_lines(period, meters, charges, carried, currency)
        for line in lines:
            line["amount"] = str(
                Decimal(line["amount"]).to_integral_value(ROUND_CEILING).quantize(Decimal("0.01"))
            )
        return lines


@pytest.fixture
def whole_unit_logic() -> Iterator[None]:
    REGISTRY["invoices"][2] = WholeUnitDrafts
    yield
    del REGISTRY["invoices"][2]


def test_a_full_rebuild_equals_the_live_view(services: Services, clock: Clock) -> None:
    a_month_of_business(services, clock)
    models = services.read_models
    models.catch_up()
    before = models.invoices(limit=1000)["items"]
    version = models.rebuilds.begin("invoices")
    models.rebuilds.build(version)
    assert models.rebuilds.diff(version) == []
    models.rebuilds.switch(version)
    assert models.runner.live("invoices").version == version.version
    assert models.invoices(limit=1000)["items"] == before


def test_a_build_stopped_early_stays_building_and_its_switch_prices_every_draft(
    services: Services, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build defers open periods' drafts to one pass at its end (in chunks, here of one
    period); stopped before then, the version is not `ready`, and switching to it prices
    them first."""
    monkeypatch.setattr(invoice_writes, "SETTLE_CHUNK", 1)
    a_month_of_business(services, clock)
    models = services.read_models
    models.catch_up()
    before = models.invoices(limit=1000)["items"]
    assert any(item["status"] == "draft" for item in before)
    version = models.rebuilds.begin("invoices")
    head = models.max_position()
    batches: list[int] = []
    position = models.rebuilds.build(  # stopped after its last batch, before the drafts
        version,
        progress=lambda at, _: batches.append(at),
        should_stop=lambda: batches[-1] >= head,
    )
    assert position == head and len(batches) > 1
    with models.store.read() as cur:
        drafts = cur.all(
            f"SELECT * FROM pj_invoices_v{version.version}_invoices WHERE status = 'draft'"
        )
    assert drafts == []  # deferred: the issued invoices are there, no draft yet
    states = {(s["name"], s["version"]): s["state"] for s in models.status()}
    assert states[("invoices", version.version)] == "building"
    models.rebuilds.switch(version)
    assert models.runner.live("invoices").version == version.version
    assert models.invoices(limit=1000)["items"] == before


def every_row(services: Services, version: Version) -> dict[str, list[tuple[Any, ...]]]:
    """Each table of an invoices version: its rows, sorted."""
    models = services.read_models
    projection = models.runner.projection(version)
    with models.store.read() as cur:
        return {
            table: sorted(
                tuple(row.values()) for row in cur.all(f"SELECT * FROM {projection.t(table)}")
            )
            for table in projection.tables()
        }


def build_in_small_steps(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rebuild batches of 2 notifications and a checkpoint every 5; returns a list that
    collects the position of each checkpoint's flush."""
    services.read_models.runner.batch_size = services.read_models.runner.big_batch = 2
    monkeypatch.setattr(runner, "CHECKPOINT", 5)
    flushed: list[int] = []
    flush = InvoicesProjection.flush

    def counted(self: InvoicesProjection, cur: Any) -> None:
        flush(self, cur)
        row = cur.one(
            "SELECT position FROM projection_versions WHERE name = ? AND version = ?",
            ["invoices", self.version],
        )
        flushed.append(int(row["position"]))

    monkeypatch.setattr(InvoicesProjection, "flush", counted)
    return flushed


@pytest.mark.parametrize("keep_rows", [200_000, 1])
def test_a_build_keeps_rows_across_batches_and_writes_every_table_as_the_live_view(
    services: Services, clock: Clock, monkeypatch: pytest.MonkeyPatch, keep_rows: int
) -> None:
    """Balances, periods, customers and compensations stay in memory across a build's
    batches and are written at checkpoints: every table ends as the live version's. Over
    `KEEP_ROWS` rows held, a checkpoint ends early."""
    monkeypatch.setattr(runner, "KEEP_ROWS", keep_rows)
    a_month_of_business(services, clock)
    models = services.read_models
    models.catch_up()
    live = models.runner.live("invoices")
    flushed = build_in_small_steps(services, monkeypatch)
    version = models.rebuilds.begin("invoices")
    models.rebuilds.build(version)
    assert len(flushed) >= 3  # several checkpoints, each over several batches
    assert every_row(services, version) == every_row(services, live)


class Killed(BaseException):
    """The process dies mid-checkpoint."""


def test_a_build_killed_between_checkpoints_resumes_from_the_last_one_exactly(
    services: Services, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a checkpoint's batches wrote is rolled back with their positions when the build
    dies before the checkpoint commits; built again, the version is the live one's copy."""
    a_month_of_business(services, clock)
    models = services.read_models
    models.catch_up()
    live = models.runner.live("invoices")
    head = models.max_position()
    flushed = build_in_small_steps(services, monkeypatch)
    version = models.rebuilds.begin("invoices")
    seen: list[int] = []

    def die_after_the_second_checkpoint(at: int, _: int) -> None:
        seen.append(at)
        if len(flushed) == 2 and at > flushed[-1] + 2:
            raise Killed

    with pytest.raises(Killed):
        models.rebuilds.build(version, progress=die_after_the_second_checkpoint)
    stored = next(v for v in models.runner.versions() if v.key == version.key)
    assert stored.position == flushed[-1] < seen[-1] < head  # the last checkpoint, not later
    rows = every_row(services, version)
    assert rows["balances"] != every_row(services, live)["balances"]  # only part of the log
    models.rebuilds.build(version)
    assert every_row(services, version) == every_row(services, live)


def test_a_new_rounding_rule_changes_exactly_the_drafts_it_should(
    services: Services, clock: Clock, whole_unit_logic: None
) -> None:
    a_month_of_business(services, clock)
    customer(services.app, "initech")
    services.app.record_usage([usage("i1", 100, at(2, 11), customer_id="initech")])
    models = services.read_models
    models.catch_up()
    acme_draft = invoice_id("acme", "2026-11")
    before = models.invoice(acme_draft)
    result = CliRunner().invoke(
        main,
        ["projections", "rebuild", "invoices"],
        input="n\n",
        env={"BILLING_DATABASE_URL": services.settings.database_url},
    )
    assert result.exit_code == 0, result.output
    assert "1 difference(s)" in result.output and acme_draft in result.output
    assert "reads unchanged" in result.output
    assert models.invoice(acme_draft)["total"] == before["total"]
    ready = [s for s in models.status() if s["name"] == "invoices" and s["state"] == "ready"]
    assert len(ready) == 1 and ready[0]["logic"] == 2

    version = models.rebuilds.begin("invoices")
    models.rebuilds.build(version)
    changes = models.rebuilds.diff(version)
    assert [(c["invoice_id"], c["revision"]) for c in changes] == [(acme_draft, 1)]
    assert changes[0]["before"]["total"] == before["total"]
    assert Decimal(changes[0]["after"]["total"]) > Decimal(before["total"])
    models.rebuilds.switch(version)
    after = models.invoice(acme_draft)
    assert after["total"] == changes[0]["after"]["total"]
    assert (
        models.invoice(invoice_id("acme", "2026-10"))["total"]
        == services.app.invoice("acme", "2026-10")["total"]
    )


def test_a_rebuild_requested_over_the_api_switches_when_caught_up(
    services: Services, clock: Clock
) -> None:
    a_month_of_business(services, clock)
    models = services.read_models
    models.catch_up()
    state = models.start_rebuild("invoices_v1")
    assert state["state"] == "building"
    deadline = time.monotonic() + 20
    while models.rebuild_state("invoices")["state"] == "building":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert models.rebuild_state("invoices")["state"] == "live"
    assert models.runner.live("invoices").version == 2
    assert (
        models.invoice(invoice_id("acme", "2026-11"))["total"]
        == services.app.invoice("acme", "2026-11")["total"]
    )


def test_as_of_answers_as_known_before_and_after_a_late_event(
    services: Services, clock: Clock
) -> None:
    app, models = services.app, services.read_models
    customer(app, "acme")
    app.record_usage([usage("e1", 1200, at(5)), usage("s1", 4, at(5), meter="storage_gb")])
    first_known = clock.advance(hours=1)
    clock.advance(days=30)
    app.record_usage([usage("late", 300, at(30)), usage("s2", 9, at(31), meter="storage_gb")])
    then_draft = clock.advance(minutes=1)
    clock.advance(hours=1)
    app.close_period("acme", "2026-10")
    models.catch_up()
    october = invoice_id("acme", "2026-10")

    early = models.usage("acme", "2026-10", as_of=first_known)["items"]
    assert [(i["meter"], i["quantity"]) for i in early] == [
        ("api_calls", "1200"),
        ("storage_gb", "4"),
    ]
    late = models.usage("acme", "2026-10")["items"]
    assert [(i["meter"], i["quantity"]) for i in late] == [
        ("api_calls", "1500"),
        ("storage_gb", "9"),
    ]

    draft_then = models.invoice(october, as_of=first_known)
    assert draft_then["status"] == "draft"
    assert draft_then["total"] == "14.00"  # 1000 x 0.01 + 200 x 0.005 + 2 flat + 4 GB x 0.25
    draft_later = models.invoice(october, as_of=then_draft)
    assert draft_later["status"] == "draft" and draft_later["total"] == "16.75"
    issued = models.invoice(october)
    assert (
        issued["status"] == "issued"
        and issued["total"] == app.invoice("acme", "2026-10")["total"] == "16.75"
    )
    assert draft_later["lineage_digest"] == issued["lineage_digest"]
    assert models.invoice(october, as_of=clock.now)["status"] == "issued"


def test_as_of_before_late_usage_shows_no_carried_line(services: Services, clock: Clock) -> None:
    a_month_of_business(services, clock)
    models = services.read_models
    models.catch_up()
    november = invoice_id("acme", "2026-11")
    before_late = clock.now - timedelta(minutes=30)
    kinds_then = [ln["kind"] for ln in models.invoice(november, as_of=before_late)["lines"]]
    kinds_now = [ln["kind"] for ln in models.invoice(november)["lines"]]
    assert "carried_forward" not in kinds_then and "carried_forward" in kinds_now
    assert models.invoice(invoice_id("acme", "2026-10"), as_of=before_late)["status"] == "issued"


def test_merged_usage_is_read_on_the_surviving_customer(services: Services) -> None:
    app, models = services.app, services.read_models
    customer(app, "acme")
    customer(app, "acme-eu")
    app.merge_customer("acme-eu", "acme", at(15, 11))
    app.record_usage(
        [
            usage("x1", 10, at(10, 11), customer_id="acme-eu"),
            usage("x2", 20, at(16, 11), customer_id="acme-eu"),
            usage("x3", 5, at(17, 11)),
        ]
    )
    models.catch_up()
    for customer_id in ("acme", "acme-eu"):
        replay = app.invoice(customer_id, "2026-11")
        assert models.invoice(invoice_id(customer_id, "2026-11"))["lines"] == replay["lines"]
    records = models.lineage(invoice_id("acme", "2026-11"), 0)["items"]
    assert [(r["id"], r["customer_id"]) for r in records] == [("x2", "acme-eu"), ("x3", "acme")]
