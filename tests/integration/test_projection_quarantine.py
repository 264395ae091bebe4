"""One bad stored event never stops the read models: it is quarantined, everybody else is
billed exactly, /health and reconciliation say so, and a retry after the fix clears it."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from api.bootstrap import Services, build
from api.cli import main as cli
from api.http.app import create_app
from billing_domain.ids import invoice_id
from billing_domain.settings import Settings
from projections import runner
from projections.errors import StillQuarantined
from projections.ledger import InvoicesProjection
from projections.reconciliation import reconcile
from tests import defects
from tests.api_support import ADMIN
from tests.conftest import Clock
from tests.scenario import at, customer, usage

PERIOD = "2026-11"
USAGE_TOPIC = "billing_domain.period:BillingPeriod.UsageRecorded"
API_CALLS = {"api_calls": ["sum", None]}


@pytest.fixture
def services(settings: Settings, clock: Clock) -> Iterator[Services]:
    built = build(settings, clock=clock)
    yield built
    built.close()


def poison_between_good_events(services: Services, settings: Settings) -> int:
    """acme's usage of 1e400 api calls (a quantity pricing cannot round) lands in the log
    between good usage of globex, acme and initech, all read by the projections in one batch.
    Returns the poison event's position."""
    app = services.app
    for name in ("acme", "globex", "initech"):
        customer(app, name)
    app.record_usage([usage("a1", 50, at(2, month=11))])
    services.read_models.catch_up()
    app.record_usage([usage("g1", 100, at(3, month=11), customer_id="globex")])
    record = [["p1", "acme", "api_calls", "1e400", "2026-11-04T12:00:00Z", {}]]
    defects.insert_raw(
        settings,
        "acme",
        PERIOD,
        USAGE_TOPIC,
        defects.usage_state(record, "2026-11-24T12:00:00Z", API_CALLS),
    )
    poison: int = services.read_models.max_position()
    app.record_usage([usage("i1", 300, at(5, month=11), customer_id="initech")])
    app.record_usage([usage("a2", 20, at(6, month=11))])
    assert services.read_models.max_position() - poison == 3  # initech opened, i1, a2
    return poison


def billed(services: Services, customer_id: str) -> tuple[str, str, str]:
    """(quantity, amount, invoice total) of a customer's November api calls, from the views."""
    item = next(
        i
        for i in services.read_models.usage(customer_id, PERIOD)["items"]
        if i["meter"] == "api_calls"
    )
    invoice = services.read_models.invoice(invoice_id(customer_id, PERIOD))
    return item["quantity"], item["amount"], invoice["total"]


def test_a_poison_event_is_quarantined_and_everybody_else_is_billed_exactly(
    services: Services, settings: Settings
) -> None:
    poison = poison_between_good_events(services, settings)
    models = services.read_models
    assert models.catch_up() == models.max_position()
    assert billed(services, "globex") == ("100", "1.00", "1.00")
    assert billed(services, "initech") == ("300", "3.00", "3.00")
    assert billed(services, "acme") == ("70", "0.70", "0.70")  # a1 + a2, not the poison
    [held] = models.quarantined("invoices")
    assert held["notification_id"] == poison and held["topic"] == USAGE_TOPIC
    assert (held["key"], held["stage"], held["attempts"]) == ("invoices_v1", "apply", 1)
    assert held["error_type"] and held["first_seen"]
    invoices = next(r for r in models.status() if r["name"] == "invoices")
    assert invoices["quarantined"] == 1 and invoices["lag"] == 0


def test_health_and_reconciliation_name_it_and_a_retry_after_the_fix_clears_it(
    services: Services, settings: Settings
) -> None:
    poison = poison_between_good_events(services, settings)
    with TestClient(create_app(services, background=False)) as client:
        client.get(f"/v1/invoices/{invoice_id('globex', PERIOD)}", headers=ADMIN)  # catch up
        health = client.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "degraded" and body["store"]["status"] == "ok"
        assert any("invoices_v1" in r and "quarantined" in r for r in body["reasons"])
        listed = client.get("/v1/projections", headers=ADMIN).json()["items"]
        assert {(i["name"], i["quarantined"]) for i in listed} == {
            ("activity", 0),
            ("audit", 0),
            ("invoices", 1),
            ("series", 0),
            ("webhooks", 0),
        }
        held = client.get("/v1/projections/invoices/quarantine", headers=ADMIN).json()["items"]
        assert [h["notification_id"] for h in held] == [poison]

        report = reconcile(services, PERIOD)
        assert report["ok"] is False
        finding = next(
            f for f in report["findings"] if f["check"] == "projection" and f["position"] == poison
        )
        assert (finding["check"], finding["cause"]) == ("projection", "quarantined")
        assert finding["customer_id"] == "acme" and "invoices_v1" in finding["detail"]
        assert reconcile(services, "2026-10")["ok"] is False  # every period says so

        again = client.post(f"/v1/projections/invoices/quarantine/{poison}/retry", headers=ADMIN)
        assert again.status_code == 409
        [held_again] = services.read_models.quarantined("invoices")
        assert held_again["attempts"] == 2
        assert billed(services, "acme") == ("70", "0.70", "0.70")  # nothing half-applied

        defects.alter_usage_quantity(settings, "p1", "5")  # the repair
        fixed = client.post(f"/v1/projections/invoices/quarantine/{poison}/retry", headers=ADMIN)
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["outcome"] == "applied"
        assert billed(services, "acme") == ("75", "0.75", "0.75")
        assert billed(services, "globex") == ("100", "1.00", "1.00")
        assert services.read_models.quarantined() == []
        assert client.get("/health").json()["status"] == "ok"
        assert not [
            f for f in reconcile(services, PERIOD)["findings"] if f["check"] == "projection"
        ]
        gone = client.post(f"/v1/projections/invoices/quarantine/{poison}/retry", headers=ADMIN)
        assert gone.status_code == 404


def test_a_rebuild_quarantines_the_same_event_and_bills_the_rest(
    services: Services, settings: Settings
) -> None:
    poison = poison_between_good_events(services, settings)
    models = services.read_models
    version = models.rebuilds.begin("invoices")
    models.rebuilds.build(version)
    models.rebuilds.switch(version)
    assert models.runner.live("invoices").version == 2
    assert [(h["key"], h["notification_id"]) for h in models.quarantined("invoices")] == [
        ("invoices_v2", poison)
    ]
    assert billed(services, "initech") == ("300", "3.00", "3.00")
    assert billed(services, "acme") == ("70", "0.70", "0.70")


def test_a_build_keeping_rows_in_memory_quarantines_an_event_that_fails_alone(
    services: Services, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build keeps folded rows in memory over several batches per checkpoint: an event whose
    handler raises (usage of a period never opened) rolls its checkpoint back, those batches
    are applied one transaction each, and it alone is set aside."""
    models = services.read_models
    for name in ("acme", "globex"):
        customer(services.app, name)
    services.app.record_usage([usage("a1", 50, at(2, month=11))])
    services.app.record_usage([usage("g1", 100, at(3, month=11), customer_id="globex")])
    record = [["x1", "nobody", "api_calls", "5", "2026-11-04T12:00:00Z", {}]]
    defects.insert_usage(settings, "nobody", PERIOD, record, "2026-11-24T12:00:00Z", API_CALLS)
    orphan = models.max_position()
    services.app.record_usage([usage("a2", 20, at(6, month=11))])
    services.app.record_usage([usage("g2", 7, at(7, month=11), customer_id="globex")])
    models.runner.batch_size = models.runner.big_batch = 2
    monkeypatch.setattr(runner, "CHECKPOINT", 100)
    version = models.rebuilds.begin("invoices")
    models.rebuilds.build(version)
    models.rebuilds.switch(version)
    assert models.runner.live("invoices").version == version.version
    held = [(h["key"], h["notification_id"], h["stage"]) for h in models.quarantined("invoices")]
    assert held == [(version.key, orphan, "apply")]
    assert billed(services, "acme") == ("70", "0.70", "0.70")
    assert billed(services, "globex") == ("107", "1.07", "1.07")


def test_a_live_version_far_behind_keeps_rows_and_still_sets_a_poison_quantity_aside(
    services: Services, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Far behind, a live version keeps rows in memory and prices drafts once per checkpoint;
    the poison quantity fails there, not in a batch: the checkpoint rolls back, its batches
    are applied one transaction each, and only the poison event is set aside."""
    poison = poison_between_good_events(services, settings)
    for n in range(30):
        services.app.record_usage([usage(f"g{n + 2}", 1, at(7, month=11), customer_id="globex")])
    models = services.read_models
    models.runner.batch_size = 2
    monkeypatch.setattr(runner, "KEEP_BEHIND", 20)  # 30 notifications behind
    keeps: list[bool] = []
    keep = InvoicesProjection.keep

    def noted(self: InvoicesProjection) -> bool:
        keeps.append(keep(self))
        return keeps[-1]

    monkeypatch.setattr(InvoicesProjection, "keep", noted)
    models.catch_up()
    assert True in keeps
    held = [(h["key"], h["notification_id"]) for h in models.quarantined("invoices")]
    assert held == [("invoices_v1", poison)]
    assert billed(services, "initech") == ("300", "3.00", "3.00")
    assert billed(services, "acme") == ("70", "0.70", "0.70")
    assert billed(services, "globex") == ("130", "1.30", "1.30")


def test_a_stored_event_that_does_not_decode_is_quarantined_as_schema_drift(
    services: Services, settings: Settings
) -> None:
    customer(services.app, "acme")
    customer(services.app, "globex")
    services.app.record_usage([usage("a1", 50, at(2, month=11))])
    record = [["b1", "acme", "api_calls", "1", "2026-11-03T00:00:00Z", {}]]
    state = defects.usage_state(record, "2026-11-24T12:00:00Z", API_CALLS)
    defects.insert_raw(settings, "acme", PERIOD, USAGE_TOPIC, state[:40])
    broken = services.read_models.max_position()
    services.app.record_usage([usage("g1", 100, at(3, month=11), customer_id="globex")])
    services.read_models.catch_up()
    assert billed(services, "globex") == ("100", "1.00", "1.00")
    [held] = services.read_models.quarantined("invoices")
    assert (held["notification_id"], held["stage"]) == (broken, "decode")
    with pytest.raises(StillQuarantined):
        services.read_models.retry("invoices", broken)
    finding = next(f for f in reconcile(services, PERIOD)["findings"] if f["check"] == "projection")
    assert finding["cause"] == "schema_drift" and finding["position"] == broken


def test_the_cli_lists_and_retries_quarantined_events(
    services: Services, settings: Settings, database_url: str
) -> None:
    poison = poison_between_good_events(services, settings)
    services.read_models.catch_up()
    env = {"BILLING_DATABASE_URL": database_url}
    listed = CliRunner().invoke(cli, ["projections", "quarantine", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [h["notification_id"] for h in json.loads(listed.output)] == [poison]
    table = CliRunner().invoke(cli, ["projections", "quarantine", "invoices"], env=env)
    assert table.exit_code == 0 and str(poison) in table.output
    failed = CliRunner().invoke(cli, ["projections", "retry", "invoices", str(poison)], env=env)
    assert failed.exit_code == 1
    defects.alter_usage_quantity(settings, "p1", "5")
    retried = CliRunner().invoke(cli, ["projections", "retry", "invoices", str(poison)], env=env)
    assert retried.exit_code == 0, retried.output
    assert billed(services, "acme") == ("75", "0.75", "0.75")


# Health -----------------------------------------------------------------------------------------


def test_a_healthy_service_says_ok(services: Services) -> None:
    customer(services.app, "acme")
    services.app.record_usage([usage("a1", 50, at(2, month=11))])
    services.read_models.catch_up()
    with TestClient(create_app(services, background=False)) as client:
        health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert (body["status"], body["reasons"]) == ("ok", [])
    assert body["store"] == {"status": "ok", "position": services.read_models.max_position()}
    assert {(p["name"], p["lag"], p["quarantined"]) for p in body["projections"]} == {
        ("activity", 0, 0),
        ("audit", 0, 0),
        ("invoices", 0, 0),
        ("series", 0, 0),
        ("webhooks", 0, 0),
    }


def test_a_projection_too_far_behind_is_degraded(services: Services) -> None:
    customer(services.app, "acme")
    services.read_models.max_lag = 2
    health = services.read_models.health()
    assert health["status"] == "degraded"
    assert any("lags" in r and "invoices_v1" in r for r in health["reasons"])
    services.read_models.catch_up()
    assert services.read_models.health()["status"] == "ok"


class Proxy:
    """A TCP hop between the service and its PostgreSQL, cut at will like a lost network."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    def cut(self) -> None:
        for sock in [self.server, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def clobber(settings: Settings) -> None:
    """Overwrite the SQLite store's files: the file is no longer a database."""
    events = Path(settings.eventsourcing_env()["SQLITE_DBNAME"])
    for path in events.parent.glob(f"{events.name}*"):
        with path.open("r+b") as f:
            f.write(b"\xff" * max(path.stat().st_size, 4096))


def test_an_unreachable_store_is_down_with_503(settings: Settings, store: str) -> None:
    proxy = None
    url = settings.database_url
    if store == "postgres":
        host = url.split("@", 1)[1].split("/", 1)[0]
        proxy = Proxy(int(host.rsplit(":", 1)[1]))
        url = url.replace(host, f"127.0.0.1:{proxy.port}")
    services = build(Settings(database_url=url))
    try:
        with TestClient(create_app(services, background=False)) as client:
            assert client.get("/health").json()["status"] == "ok"
            if proxy is not None:
                proxy.cut()
            else:
                clobber(settings)
            started = time.monotonic()
            health = client.get("/health")
            assert time.monotonic() - started < 5
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "down" and body["store"]["status"] == "down"
        assert "event store does not answer" in body["reasons"][0]
    finally:
        if proxy is not None:
            proxy.cut()
        services.close()
