"""`billing projections run|status|rebuild|quarantine|retry`: the worker, and the operator's
view, rebuilds and quarantined events."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from api.bootstrap import build
from projections.errors import NotQuarantined, StillQuarantined, UnknownProjection
from projections.rebuild import base_name


class RateColumn(ProgressColumn):
    """Usage records per second, the figure rebuild throughput is judged by."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0
        records = task.fields.get("records", 0)
        rate = records / elapsed if elapsed > 0 else 0
        return Text(f"{records:,} records  {rate:,.0f} rec/s", style="progress.data.speed")


@click.group(help="Read models: run the worker, list versions, rebuild one from the log.")
def projections() -> None:
    pass


@projections.command("run")
@click.option("--once", is_flag=True, help="Catch up once and exit instead of following the log.")
def run(once: bool) -> None:
    """Keep every live projection current (the long-running worker process)."""
    from api.logs import configure

    configure()  # its log lines in the format `serve` writes (BILLING_LOG_FORMAT)
    services = build()
    models = services.read_models
    console = Console(stderr=True)
    try:
        if once:
            console.print(f"caught up to position {models.catch_up()}")
            return
        signal.signal(signal.SIGTERM, lambda *_: models.stop_background())
        services.start_deliveries()
        console.print("projection worker following the log; Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            models.run_forever()
    finally:
        services.close()


@projections.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json: bool) -> None:
    """List every projection version with its position, lag and state."""
    services = build()
    try:
        rows = services.read_models.status()
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "version", "logic", "state", "position", "lag", "quarantined")
    for row in rows:
        table.add_row(
            row["name"],
            str(row["version"]),
            str(row["logic"]),
            row["state"],
            f"{row['position']:,}",
            f"{row['lag']:,}",
            f"{row['quarantined']:,}",
        )
    Console().print(table)


@projections.command("quarantine")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def quarantine(name: str | None, as_json: bool) -> None:
    """List the stored events NAME (or every projection) set aside because applying them failed."""
    services = build()
    try:
        rows = services.read_models.quarantined(name)
    except UnknownProjection as error:
        raise click.BadParameter(error.reason, param_hint="NAME") from None
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        Console().print("nothing quarantined")
        return
    table = Table("projection", "notification", "topic", "stage", "error", "first seen", "attempts")
    for row in rows:
        table.add_row(
            row["key"],
            str(row["notification_id"]),
            row["topic"].rpartition(":")[2],
            row["stage"],
            f"{row['error_type']}: {row['error']}",
            row["first_seen"],
            str(row["attempts"]),
        )
    Console().print(table)


@projections.command("retry")
@click.argument("name")
@click.argument("notification_id", type=int)
def retry(name: str, notification_id: int) -> None:
    """Apply a quarantined event of NAME again (after a fix); exit 1 if it still fails."""
    services = build()
    try:
        outcome = services.read_models.retry(name, notification_id)
    except (UnknownProjection, NotQuarantined) as error:
        raise click.BadParameter(error.reason) from None
    except StillQuarantined as error:
        Console(stderr=True).print(f"[red]{error.reason}[/red]; it stays quarantined")
        sys.exit(1)
    finally:
        services.close()
    Console().print(
        f"notification {notification_id} applied to {outcome['key']}; no longer quarantined"
    )


@projections.command("rebuild")
@click.argument("name")
@click.option(
    "--switch", "switch_now", is_flag=True, help="Switch reads to the new version without asking."
)
@click.option(
    "--show", default=20, show_default=True, help="How many changed invoices to print in full."
)
def rebuild(name: str, switch_now: bool, show: int) -> None:
    """Build the next version of NAME from the log, show what changes, then switch reads."""
    try:
        name = base_name(name)
    except UnknownProjection as error:
        raise click.BadParameter(error.reason, param_hint="NAME") from None
    services = build()
    console = Console(stderr=True)
    try:
        models = services.read_models
        version = models.rebuilds.begin(name)
        head = models.max_position()
        started = time.monotonic()
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} events"),
            RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task(f"{name}_v{version.version}", total=max(head, 1), records=0)

            def progress(position: int, weight: int) -> None:
                records = bar.tasks[task].fields["records"] + weight
                bar.update(task, completed=min(position, head), records=records)

            models.rebuilds.build(version, progress=progress)
        seconds = time.monotonic() - started
        console.print(f"built {name}_v{version.version} to position {head:,} in {seconds:.1f} s")
        changes = models.rebuilds.diff(version)
        print_changes(console, changes, show)
        if not switch_now and not click.confirm(
            f"Switch reads of {name} to version {version.version}?", default=False
        ):
            console.print(
                f"left {name}_v{version.version} ready beside the live version; reads unchanged"
            )
            return
        live = models.rebuilds.switch(version)
        console.print(
            f"reads of {name} now use version {live.version} (position {live.position:,})"
        )
    finally:
        services.close()


def print_changes(console: Console, changes: list[dict[str, Any]], show: int) -> None:
    if not changes:
        console.print("no differences from the live version")
        return
    console.print(f"{len(changes)} difference(s) from the live version:")
    for change in changes[:show]:
        console.print_json(json.dumps(change, default=str))
    if len(changes) > show:
        console.print(f"... and {len(changes) - show} more")


def register(group: click.Group) -> None:
    """Add this family's commands to the `billing` group."""
    group.add_command(projections)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(projections())
