"""`billing serve`, keys, emitters, grants, closing periods and the demo data set."""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal
from types import FrameType
from typing import Any
from uuid import UUID

import click
import uvicorn
from eventsourcing.utils import get_topic
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from api.bootstrap import Services, build
from billing_domain.bounds import parse_time
from billing_domain.errors import BillingError, InvalidInput
from billing_domain.identity import Key
from billing_domain.usage import UsageInput, next_period, period_of

console = Console()


class StartupError(click.ClickException):
    """A mistake in the configuration or the environment: one line on stderr, exit 2."""

    exit_code = 2


def _fail(error: BillingError) -> None:
    where = f"{error.field}: " if error.field else ""
    raise click.ClickException(f"{where}{error.reason}")


def _services() -> Services:
    return build()


def when(text: str | None) -> datetime | None:
    """An RFC 3339 time given on the command line, with its UTC offset."""
    if text is None:
        return None
    try:
        return parse_time(text, "time")
    except InvalidInput as error:
        raise click.BadParameter(error.reason) from None


# uvicorn stops waiting for open requests after GRACE_SECONDS; whatever still holds the
# process (a statement stuck behind a lock, a thread) is cut at STOP_DEADLINE_SECONDS.
GRACE_SECONDS = 5
STOP_DEADLINE_SECONDS = 8


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bind the port before saying anything, so a port in use is one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that name it, and without
    # it a reused connection waits ~40 ms (Nagle against delayed ACK) on every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port} ({error.strerror or error}); stop whatever "
            "holds the port or choose another with --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def _has_admin_key(services: Services) -> bool:
    app = services.app
    topic = get_topic(Key.Issued)
    start: int | None = None
    while True:
        page = app.recorder.select_notifications(start, 1000, topics=[topic])
        for notification in page:
            issued = app.mapper.to_domain_event(notification)
            if getattr(issued, "role", None) == "admin":
                key: Key = app.repository.get(UUID(str(notification.originator_id)))
                if not key.revoked:
                    return True
        if len(page) < 1000:
            return False
        start = page[-1].id + 1


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            threading.Thread(target=_stop_deadline, name="stop-deadline", daemon=True).start()
        super().handle_exit(sig, frame)


def _stop_deadline() -> None:
    time.sleep(STOP_DEADLINE_SECONDS)
    sys.stderr.write(
        f"billing: still busy {STOP_DEADLINE_SECONDS} s after the stop signal; exiting now "
        "(requests not yet answered were not acknowledged)\n"
    )
    sys.stderr.flush()
    os._exit(1)


def _default_workers() -> int:
    return max(os.cpu_count() or 1, 1)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="API processes on the port (default: the number of cores). With more than one, the "
    "read models are kept current by one supervised `billing projections run` child; "
    "1 serves and projects in this process.",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    default=None,
    help="log lines as JSON objects or plain text (default: BILLING_LOG_FORMAT, else json "
    "unless stderr is a terminal)",
)
def serve(host: str, port: int, workers: int | None, log_format: str | None) -> None:
    """Run the HTTP API (BILLING_DATABASE_URL, BILLING_ADMIN_KEY)."""
    from api.http.app import create_app
    from api.logs import FORMAT_ENV, configure

    if log_format is not None:
        os.environ[FORMAT_ENV] = log_format  # the workers inherit it
    configure()
    workers = workers or _default_workers()
    sock = _listening_socket(host, port)
    services: Services | None
    try:
        services = _services()
    except BaseException:
        sock.close()
        raise
    try:
        if not services.settings.admin_key and not _has_admin_key(services):
            click.echo(
                "billing: no admin key yet; create one with "
                "`billing keys create --role admin --name NAME` (or set BILLING_ADMIN_KEY)",
                err=True,
            )
        console.print(
            f"billing on http://{host}:{port}  (OpenAPI: /schema, store: "
            f"{'PostgreSQL' if services.settings.is_postgres else 'SQLite'}, "
            f"{workers} worker{'s' if workers > 1 else ''})"
        )
        if workers > 1:
            # The workers build their own services; this process only supervises.
            external = services.read_models.external_worker
            services.close()
            services = None
            from api.supervisor import run_workers

            run_workers(sock, workers, external_projections=external)
            return
        config = uvicorn.Config(
            create_app(services),
            log_level="warning",
            log_config=None,  # api.logs formats uvicorn's lines too
            access_log=False,  # one request line each, from api.http.observe
            timeout_graceful_shutdown=GRACE_SECONDS,
        )
        _Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if services is not None:
            services.close()


@click.group()
def keys() -> None:
    """Create and revoke API keys."""


@keys.command("create")
@click.option(
    "--role", required=True, type=click.Choice(["admin", "operator", "finance", "emitter"])
)
@click.option("--name", required=True, help="what the key is for, e.g. 'finance laptop'")
@click.option("--emitter-id", default=None, help="the emitter an emitter key belongs to")
def create_key(role: str, name: str, emitter_id: str | None) -> None:
    """Create a key and print it once; only its hash is stored."""
    services = _services()
    try:
        key_id, key = services.app.create_key(role, name, emitter_id)
    except BillingError as error:
        _fail(error)
    finally:
        services.close()
    click.echo(f"key_id: {key_id}")
    click.echo(f"key:    {key}")
    click.echo("Store the key now: it is not shown again.", err=True)


@keys.command("revoke")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke a key at once."""
    services = _services()
    try:
        services.app.revoke_key(key_id)
    except BillingError as error:
        _fail(error)
    finally:
        services.close()
    click.echo(f"revoked {key_id}")


@click.group()
def emitters() -> None:
    """Register emitters (services that send usage)."""


@emitters.command("create")
@click.argument("emitter_id")
@click.option("--name", required=True)
def create_emitter(emitter_id: str, name: str) -> None:
    """Register an emitter."""
    services = _services()
    try:
        services.app.register_emitter(emitter_id, name)
    except BillingError as error:
        _fail(error)
    finally:
        services.close()
    click.echo(f"emitter {emitter_id} registered")


@click.group()
def grants() -> None:
    """Say for which customers and meters an emitter may send usage."""


@grants.command("add")
@click.argument("emitter_id")
@click.option("--customer", "customer_id", required=True, help="a customer id, or '*'")
@click.option("--meter", "meters", multiple=True, required=True, help="repeatable; '*' = all")
@click.option("--valid-from", default=None)
@click.option("--valid-until", default=None)
def add_grant(
    emitter_id: str,
    customer_id: str,
    meters: tuple[str, ...],
    valid_from: str | None,
    valid_until: str | None,
) -> None:
    """Grant an emitter a customer and meters within an optional window."""
    services = _services()
    try:
        grant = services.app.grant(
            emitter_id, customer_id, list(meters), when(valid_from), when(valid_until)
        )
    except BillingError as error:
        _fail(error)
    finally:
        services.close()
    click.echo(json.dumps(grant))


@grants.command("revoke")
@click.argument("emitter_id")
@click.argument("grant_id")
def revoke_grant(emitter_id: str, grant_id: str) -> None:
    """Withdraw a grant at once."""
    services = _services()
    try:
        services.app.revoke_grant(emitter_id, grant_id)
    except BillingError as error:
        _fail(error)
    finally:
        services.close()
    click.echo(f"revoked {grant_id}")


@click.command("close-periods")
@click.option(
    "--before", default=None, help="close periods before this YYYY-MM (default: the current month)"
)
@click.option("--customer", "customers", multiple=True, help="only these customers")
def close_periods(before: str | None, customers: tuple[str, ...]) -> None:
    """Close every ended period that is still open and issue its invoice."""
    services = _services()
    try:
        ids = list(customers) or services.app.customer_ids()
        limit = before or period_of(services.app.clock())
        issued: list[dict[str, Any]] = []
        with _progress() as progress:
            task = progress.add_task("closing", total=len(ids))
            for customer_id in ids:
                issued += services.app.close_periods([customer_id], limit)
                progress.advance(task)
    except BillingError as error:
        _fail(error)
    finally:
        services.close()
    table = Table("invoice", "customer", "period", "revision", "total")
    for invoice in issued:
        table.add_row(
            invoice["invoice_id"],
            invoice["customer_id"],
            invoice["period"],
            str(invoice["revision"]),
            f"{invoice['total']} {invoice['currency']}",
        )
    console.print(table)
    console.print(f"{len(issued)} invoice(s) issued")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=console,
    )


DEMO_PLANS: dict[str, list[dict[str, Any]]] = {
    "starter": [
        {
            "meter": "api_calls",
            "aggregation": "sum",
            "model": "graduated",
            "tiers": [
                {"up_to": 10000, "unit_amount": "0.002"},
                {"up_to": 100000, "unit_amount": "0.0015", "flat_amount": "5"},
                {"up_to": None, "unit_amount": "0.001", "flat_amount": "20"},
            ],
        },
        {
            "meter": "sms",
            "aggregation": "count",
            "model": "package",
            "package_size": 100,
            "package_amount": "4.50",
            "included_quantity": "50",
        },
    ],
    "scale": [
        {
            "meter": "api_calls",
            "aggregation": "sum",
            "model": "volume",
            "tiers": [
                {"up_to": 50000, "unit_amount": "0.0012"},
                {"up_to": None, "unit_amount": "0.0008", "flat_amount": "10"},
            ],
        },
        {
            "meter": "storage_gb",
            "aggregation": "max",
            "model": "per_unit",
            "unit_amount": "0.25",
            "included_quantity": "10",
        },
        {
            "meter": "active_users",
            "aggregation": "unique_count",
            "field": "user",
            "model": "per_unit",
            "unit_amount": "1.00",
        },
    ],
}
DEMO_CUSTOMERS = [
    ("acme", "Acme Corp", "starter"),
    ("globex", "Globex Inc", "scale"),
    ("initech", "Initech", "starter"),
]


@click.command()
@click.option("--events", default=20000, show_default=True, help="usage events to load")
def demo(events: int) -> None:
    """Load a realistic sample: customers, plans, two months of usage, one closed month."""
    services = _services()
    app = services.app
    now = app.clock()
    this_month = period_of(now)
    last_month = period_of(
        datetime.fromisoformat(this_month + "-01T00:00:00+00:00") - timedelta(days=1)
    )
    rng = random.Random(7)
    try:
        for plan_id, charges in DEMO_PLANS.items():
            app.publish_plan(plan_id, "USD", charges)
        for customer_id, name, plan in DEMO_CUSTOMERS:
            if customer_id not in app.customer_ids():
                app.open_customer(customer_id, name)
            app.subscribe(customer_id, plan, last_month)
        start = datetime.fromisoformat(last_month + "-01T00:00:00+00:00")
        span = (now - start).total_seconds() - 600
        batch: list[UsageInput] = []
        with _progress() as progress:
            task = progress.add_task("loading usage", total=events)
            for i in range(events):
                customer_id, _, plan = DEMO_CUSTOMERS[i % len(DEMO_CUSTOMERS)]
                meter = rng.choice([c["meter"] for c in DEMO_PLANS[plan]])
                quantity = {
                    "api_calls": Decimal(rng.randint(1, 40)),
                    "storage_gb": Decimal(rng.randint(5, 120)),
                }.get(meter, Decimal(1))
                batch.append(
                    UsageInput(
                        f"demo-{i}",
                        customer_id,
                        meter,
                        quantity,
                        start + timedelta(seconds=rng.uniform(0, span)),
                        {"user": f"user-{rng.randint(1, 60)}"} if meter == "active_users" else {},
                    )
                )
                if len(batch) == 1000:
                    app.record_usage(batch)
                    progress.advance(task, len(batch))
                    batch = []
            if batch:
                app.record_usage(batch)
                progress.advance(task, len(batch))
        for customer_id, _, _ in DEMO_CUSTOMERS:
            app.close_period(customer_id, last_month)
        services.read_models.catch_up()
        table = Table("customer", "period", "status", "total", "invoice")
        for customer_id, _, _ in DEMO_CUSTOMERS:
            for period in (last_month, next_period(last_month)):
                listed = services.read_models.invoices(customer_id=customer_id, period=period)
                for invoice in listed["items"]:
                    table.add_row(
                        customer_id,
                        period,
                        invoice["status"],
                        f"{invoice['total']} {invoice['currency']}",
                        invoice["invoice_id"],
                    )
    except BillingError as error:
        _fail(error)
    finally:
        services.close()
    console.print(table)
    console.print(
        f"Loaded {events:,} events; {last_month} is closed and invoiced, "
        f"{this_month} is a draft. Start `billing serve` and read /v1/invoices."
    )


def register(group: click.Group) -> None:
    """Add serve, keys, emitters, grants, close-periods and demo to `billing`."""
    for command in (serve, keys, emitters, grants, close_periods, demo):
        group.add_command(command)
