"""The lineage digest is a Merkle tree over a period's items in log order: tampering of any kind
changes it, one record's inclusion can be proved, and revisions issued under the earlier sum
scheme still verify under it."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from click.testing import CliRunner
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import StoredEvent

from api.bootstrap import build
from api.cli import main as cli
from billing_domain import merkle
from billing_domain.application import BillingApplication
from billing_domain.ids import invoice_id, period_uuid
from billing_domain.merkle import MERKLE_SCHEME, SUM_SCHEME
from billing_domain.period import BillingPeriod
from billing_domain.usage import digest_text
from billing_domain.verification import adjustment_hash, compensation_hash, usage_hash
from projections.reconciliation import verify
from tests import defects
from tests.api_support import ADMIN, bearer, event, http, setup_acme
from tests.scenario import at, customer, usage

FIXTURE = Path(__file__).parents[1] / "fixtures" / "period_closed_v1.json"


def reference_items(app: BillingApplication, customer_id: str, period: str) -> list[int]:
    """The period's billed items in the order its events recorded them, hashed from the
    domain events themselves (not from any digest state)."""
    items: list[int] = []
    carried: set[str] = set()
    for stored in app.recorder.select_events(period_uuid(customer_id, period)):
        e: Any = app.mapper.to_domain_event(stored)
        name = type(e).__name__
        if name == "UsageRecorded":
            for record in e.records:
                if e.treatment == "carried_forward":
                    carried.add(record[0])
                else:
                    items.append(usage_hash(record, e.received_at, e.emitter, e.key_id))
        elif name == "UsageCompensated":
            if e.treatment != "carried_forward" and e.event_id not in carried:
                items.append(
                    compensation_hash(
                        e.compensation_id,
                        e.event_id,
                        e.submitted_customer_id,
                        e.meter,
                        e.quantity,
                        e.reason,
                        e.received_at,
                        e.actor,
                    )
                )
        elif name == "UsageAdjusted":
            if e.treatment != "carried_forward":
                items.append(
                    adjustment_hash(
                        e.adjustment_id,
                        e.meter,
                        e.quantity,
                        e.occurred_at,
                        e.reason,
                        e.received_at,
                        e.actor,
                    )
                )
        elif name == "LateUsageCarriedForward":
            items += [int(source[2], 16) for source in e.sources]
    return items


def test_every_digest_of_a_period_is_the_reference_tree_of_its_items(settings, clock):
    services = build(settings, clock=clock)
    app = services.app
    try:
        customer(app, "acme")
        app.record_usage(
            [
                usage("e1", "12.5", at(3)),
                usage("e2", 3, at(4), meter="storage_gb"),
                usage("e3", 40, at(5)),
            ]
        )
        app.compensate("acme", "e1", "c1", Decimal("2"), "duplicate call")
        app.adjust("acme", "a1", "api_calls", Decimal("5"), at(6), "support credit reversal")
        app.close_period("acme", "2026-10")
        app.record_usage([usage("n1", 4, at(2, month=11)), usage("late1", 7, at(9))])
        app.compensate("acme", "late1", "c2", Decimal("1"), "partly failed")
        services.read_models.catch_up()

        october = reference_items(app, "acme", "2026-10")
        assert len(october) == 5
        issued = app.invoice("acme", "2026-10")
        assert issued["lineage_digest"] == merkle.tree_root(october)
        assert (
            services.read_models.invoice(invoice_id("acme", "2026-10"))["lineage_digest"]
            == (issued["lineage_digest"])
        )

        november = reference_items(app, "acme", "2026-11")
        assert len(november) == 3  # n1 and the two carried-forward sources
        draft = app.invoice("acme", "2026-11")
        assert draft["lineage_digest"] == merkle.tree_root(november)
        assert (
            services.read_models.invoice(invoice_id("acme", "2026-11"))["lineage_digest"]
            == (draft["lineage_digest"])
        )
        assert services.read_models.lineage_digest("acme", "2026-11") == draft["lineage_digest"]

        result = verify(app)
        assert result["ok"] and result["checked"]["schemes"] == {MERKLE_SCHEME: 1}
    finally:
        services.close()


def _records(n: int) -> list[list[Any]]:
    return [
        [f"e{i}", "acme", "api_calls", str(i + 1), "2026-10-05T10:00:00+00:00", {}]
        for i in range(n)
    ]


def _root(records: list[list[Any]]) -> str:
    items = [usage_hash(r, "2026-10-05T10:00:01+00:00", "svc", "k1") for r in records]
    peaks: list[str] = []
    for count, item in enumerate(items):
        merkle.append(peaks, count, item)
    assert merkle.root(peaks) == merkle.tree_root(items)
    return merkle.root(peaks)


def test_a_changed_reordered_dropped_or_added_record_changes_the_root():
    records = _records(7)
    original = _root(records)

    tampered = [list(r) for r in records]
    tampered[3][3] = "400"
    reordered = [*records[:2], records[3], records[2], *records[4:]]
    dropped = records[:5] + records[6:]
    added = [*records, _records(8)[7]]

    for forged in (tampered, reordered, dropped, added):
        assert _root(forged) != original

    # The sum scheme this replaces could not see a reordering at all.
    def summed(rs: list[list[Any]]) -> str:
        items = [usage_hash(r, "2026-10-05T10:00:01+00:00", "svc", "k1") for r in rs]
        return digest_text(sum(items) % (1 << 256), len(items))

    assert summed(reordered) == summed(records)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_every_record_of_a_tree_has_an_inclusion_proof_and_no_other_record_passes(size):
    items = [usage_hash(r, "2026-10-05T10:00:01+00:00", "svc", "k1") for r in _records(size)]
    root = merkle.tree_root(items)
    outsider = merkle.leaf_hash(usage_hash(_records(20)[19], "t", "svc", "k1")).hex()
    for index, item in enumerate(items):
        leaf = merkle.leaf_hash(item).hex()
        path = merkle.audit_path(items, index)
        assert merkle.verify_inclusion(leaf, index, size, path, root)
        assert not merkle.verify_inclusion(outsider, index, size, path, root)
        if size > 1:
            other = merkle.leaf_hash(items[(index + 1) % size]).hex()
            assert not merkle.verify_inclusion(other, index, size, path, root)
            assert not merkle.verify_inclusion(leaf, (index + 1) % size, size, path, root)


def _load_v1_fixture(app: BillingApplication) -> None:
    fixture = json.loads(FIXTURE.read_text())
    app.recorder.insert_events(
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


def test_a_revision_issued_under_the_sum_scheme_still_verifies_under_it(
    settings, clock, database_url
):
    services = build(settings, clock=clock)
    app = services.app
    try:
        _load_v1_fixture(app)
        closed = next(
            json.loads(e["state"])
            for e in json.loads(FIXTURE.read_text())["events"]
            if e["topic"].endswith("BillingPeriod.Closed")
        )
        assert "lineage_scheme" not in closed and "class_version" not in closed

        issued = app.invoice("vintage", "2026-10")
        assert issued["lineage_digest"] == closed["lineage_digest"]
        result = verify(app)
        assert result["ok"], result
        assert [(r["revision"], r["scheme"]) for r in result["revisions"]] == [(1, SUM_SCHEME)]

        # Late usage restates the period: the new revision is digested as a Merkle tree.
        app.record_usage([usage("v-late", 9, at(9), customer_id="vintage")])
        restated = app.invoice("vintage", "2026-10")
        assert restated["revision"] == 2
        assert restated["lineage_digest"] == merkle.tree_root(
            reference_items(app, "vintage", "2026-10")
        )
        result = verify(app)
        assert result["ok"], result
        assert [(r["revision"], r["scheme"]) for r in result["revisions"]] == [
            (1, SUM_SCHEME),
            (2, MERKLE_SCHEME),
        ]
    finally:
        services.close()

    as_json = CliRunner().invoke(
        cli, ["verify", "--json"], env={"BILLING_DATABASE_URL": database_url}
    )
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    assert {(r["revision"], r["scheme"]) for r in report["revisions"]} == {
        (1, SUM_SCHEME),
        (2, MERKLE_SCHEME),
    }
    text = CliRunner().invoke(cli, ["verify"], env={"BILLING_DATABASE_URL": database_url})
    assert text.exit_code == 0, text.output
    vintage = invoice_id("vintage", "2026-10")
    assert f"ok   {vintage} revision 1 (vintage 2026-10, superseded) {SUM_SCHEME}" in text.output
    assert f"ok   {vintage} revision 2 (vintage 2026-10, issued) {MERKLE_SCHEME}" in text.output


def test_verify_names_the_scheme_of_a_tampered_merkle_revision(settings, clock, database_url):
    services = build(settings, clock=clock)
    try:
        customer(services.app, "acme")
        services.app.record_usage([usage("e1", 10, at(3)), usage("e2", 20, at(4))])
        services.app.close_period("acme", "2026-10")
    finally:
        services.close()
    defects.alter_usage_quantity(settings, "e2", "2")
    checked = CliRunner().invoke(
        cli, ["verify", "--json"], env={"BILLING_DATABASE_URL": database_url}
    )
    assert checked.exit_code == 1
    [failure] = json.loads(checked.output)["failures"]
    assert (failure["revision"], failure["scheme"]) == (1, MERKLE_SCHEME)


def test_the_proof_endpoint_proves_a_record_is_in_the_issued_digest(settings, clock):
    with http(settings, clock) as (client, services):
        setup_acme(client)
        for i in range(5):
            assert (
                client.post("/v1/usage", json=event(f"p{i}", i + 1), headers=ADMIN).status_code
                == 202
            )
        assert (
            client.post("/v1/customers/acme/periods/2026-10/close", headers=ADMIN).status_code
            == 200
        )
        finance = client.post("/v1/keys", json={"role": "finance", "name": "f"}, headers=ADMIN)
        who = bearer(finance.json()["key"])
        services.read_models.catch_up()
        october = invoice_id("acme", "2026-10")
        digest = client.get(f"/v1/invoices/{october}", headers=who).json()["lineage_digest"]

        for index in range(5):
            answer = client.get(
                f"/v1/invoices/{october}/lineage/proof",
                params={"event_id": f"p{index}"},
                headers=who,
            )
            assert answer.status_code == 200, answer.text
            proof = answer.json()
            assert proof["invoice_id"] == october and proof["revision"] == 1
            assert proof["scheme"] == MERKLE_SCHEME
            assert (proof["leaf_index"], proof["leaf_count"]) == (index, 5)
            assert proof["root"] == digest
            assert merkle.verify_inclusion(
                proof["leaf_hash"], proof["leaf_index"], proof["leaf_count"], proof["path"], digest
            )

        unknown = client.get(
            f"/v1/invoices/{october}/lineage/proof", params={"event_id": "nope"}, headers=who
        )
        assert unknown.status_code == 404
        assert (
            client.get(
                "/v1/invoices/inv_nope/lineage/proof", params={"event_id": "p1"}, headers=who
            ).status_code
            == 404
        )
        assert (
            client.get(
                f"/v1/invoices/{october}/lineage/proof", params={"event_id": "p1"}
            ).status_code
            == 401
        )


def test_the_proof_endpoint_refuses_a_sum_scheme_revision(settings, clock):
    with http(settings, clock) as (client, services):
        _load_v1_fixture(services.app)
        services.read_models.catch_up()
        vintage = invoice_id("vintage", "2026-10")
        answer = client.get(
            f"/v1/invoices/{vintage}/lineage/proof", params={"event_id": "v1"}, headers=ADMIN
        )
        assert answer.status_code == 409, answer.text
        assert SUM_SCHEME in answer.json()["detail"]


def test_a_period_restored_from_a_snapshot_older_than_the_tree_keeps_the_sum_scheme():
    period = BillingPeriod(customer_id="acme", period="2026-10")
    period.record_usage(
        "2026-10-05T10:00:01+00:00",
        "svc",
        "k1",
        "on_time",
        {"api_calls": ["sum", None]},
        _records(3),
    )
    snapshot = Snapshot.take(period)
    state = dict(snapshot.state)
    del state["lineage_peaks"], state["class_version"]  # as version 1 stored it
    restored = Snapshot(
        originator_id=snapshot.originator_id,
        originator_version=snapshot.originator_version,
        timestamp=snapshot.timestamp,
        topic=snapshot.topic,
        state=state,
    ).mutate(None)
    assert restored.lineage_scheme == SUM_SCHEME
    assert restored.lineage_digest == digest_text(period.digest_accumulator, 3)
    assert period.lineage_scheme == MERKLE_SCHEME
