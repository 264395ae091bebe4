"""`billing keys list|rotate` and `billing emitters list|activity|offboard`: the identity
lifecycle for operators, beside `keys create|revoke` and `emitters create`."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from api.commands_service import _fail, _services, emitters, keys
from billing_domain.errors import BillingError
from billing_domain.usage import iso
from projections.activity import IdentityReads

console = Console()
PAGE = 1000


def _table(title: str, columns: list[str], rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if row.get(c) is None else str(row[c]) for c in columns))
    return table


@keys.command("list")
@click.option("--stale-days", type=click.IntRange(1, 36500), default=None, help="unused for N days")
@click.option("--emitter-id", default=None, help="only this emitter's keys")
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of a table")
def list_keys(stale_days: int | None, emitter_id: str | None, as_json: bool) -> None:
    """Keys with their role, expiry and last use (accurate to a minute); never a secret."""
    services = _services()
    try:
        services.read_models.catch_up()
        reads = IdentityReads(services.read_models)
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = reads.keys(
                now=services.app.clock(),
                last_uses={},
                stale_days=stale_days,
                emitter_id=emitter_id,
                cursor=cursor,
                limit=PAGE,
            )
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps({"items": items}, indent=2))
        return
    columns = ["key_id", "role", "name", "emitter_id", "status", "expires_at", "last_used_at"]
    title = f"keys unused for {stale_days} days" if stale_days else "keys"
    console.print(_table(title, columns, items))


@keys.command("rotate")
@click.argument("key_id")
@click.option(
    "--overlap-seconds",
    type=click.IntRange(0, 30 * 86_400),
    default=None,
    help="how long the old key keeps working (default a day)",
)
def rotate_key(key_id: str, overlap_seconds: int | None) -> None:
    """Issue a key replacing KEY_ID and print it once; the old key works for the overlap."""
    services = _services()
    try:
        rotated = services.app.rotate_key(key_id, overlap_seconds)
    except BillingError as error:
        _fail(error)
    finally:
        services.close()
    click.echo(f"key_id: {rotated['key_id']}")
    click.echo(f"key:    {rotated['key']}")
    click.echo(f"replaces {key_id}, which works until {iso(rotated['old_key_expires_at'])}")
    click.echo("Store the key now: it is not shown again.", err=True)


@emitters.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of a table")
def list_emitters(as_json: bool) -> None:
    """Emitters with their owners, unrevoked keys and offboarding."""
    services = _services()
    try:
        services.read_models.catch_up()
        reads = IdentityReads(services.read_models)
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = reads.emitters(cursor=cursor, limit=PAGE)
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps({"items": items}, indent=2))
        return
    columns = ["emitter_id", "name", "owner", "unrevoked_keys", "offboarded_at"]
    console.print(_table("emitters", columns, items))


@emitters.command("activity")
@click.argument("emitter_id")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), default=None)
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of a table")
def activity(emitter_id: str, start: Any, end: Any, as_json: bool) -> None:
    """An emitter's usage per UTC day: accepted, duplicate, conflict, refused."""
    services = _services()
    try:
        services.app.emitter(emitter_id)
        services.read_models.catch_up()
        first: date | None = start.date() if start else None
        last: date | None = end.date() if end else None
        found = IdentityReads(services.read_models).activity(emitter_id, first, last)
    except BillingError as error:
        _fail(error)
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    columns = ["day", "accepted", "duplicate", "conflict", "refused", "customers", "meters"]
    console.print(_table(f"activity of {emitter_id}", columns, found["items"]))


@emitters.command("offboard")
@click.argument("emitter_id")
@click.option("--reason", required=True, help="why, kept in the audit log")
def offboard(emitter_id: str, reason: str) -> None:
    """Revoke every key of EMITTER_ID and end its grants, in one write; no new keys."""
    services = _services()
    try:
        done = services.app.offboard_emitter(emitter_id, reason)
    except BillingError as error:
        _fail(error)
    finally:
        services.close()
    click.echo(
        f"emitter {emitter_id} offboarded: {len(done['keys_revoked'])} keys revoked, "
        f"{len(done['grants_ended'])} grants ended"
    )


def register(group: click.Group) -> None:
    """The commands above join the `keys` and `emitters` groups that commands_service adds."""
