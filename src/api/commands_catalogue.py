"""`billing customers list`, `billing plans list`, `billing meters list`: the catalogue as
tables (or `--json`), a page at a time."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from api.bootstrap import build
from api.http.catalogue import customer_summary, plan_summary
from billing_domain.bounds import check_id
from billing_domain.errors import BillingError
from billing_domain.usage import period_of


def _page_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)
    command = click.option("--cursor", default=None, help="next_cursor of the page before.")(
        command
    )
    return click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)(
        command
    )


def _show(
    page: dict[str, Any], columns: Sequence[str], as_json: bool, render: Callable[[Any], str]
) -> None:
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    table = Table(*columns)
    for item in page["items"]:
        table.add_row(*(render(item.get(c)) for c in columns))
    console = Console()
    console.print(table)
    if page["next_cursor"] is not None:
        Console(stderr=True).print(f"more: --cursor {page['next_cursor']}")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _read(read: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    services = build()
    try:
        return read(services.app)
    except BillingError as error:
        field = f"{error.field}: " if error.field else ""
        raise click.UsageError(f"{field}{error.reason}") from None
    finally:
        services.close()


@click.group(help="Customer accounts.")
def customers() -> None:
    pass


@customers.command("list")
@click.option("--q", default=None, help="A part of the customer id or name, any case.")
@click.option("--plan-id", default=None, help="Only customers on this plan this period.")
@_page_options
def list_customers(
    q: str | None, plan_id: str | None, limit: int, cursor: str | None, as_json: bool
) -> None:
    """Customers in the order they were opened, with the plan in force this period."""

    def read(app: Any) -> dict[str, Any]:
        page = app.list_customers(q=q, plan_id=plan_id, cursor=cursor, limit=limit)
        current = period_of(app.clock())
        return {
            "items": [customer_summary(c, current) for c in page.items],
            "next_cursor": page.next_cursor,
        }

    columns = ("customer_id", "name", "currency", "plan_id", "plan_version", "merged_into")
    _show(_read(read), columns, as_json, _text)


@click.group(help="Plans and their versions.")
def plans() -> None:
    pass


@plans.command("list")
@_page_options
def list_plans(limit: int, cursor: str | None, as_json: bool) -> None:
    """Plans in the order they were first published, with their latest version."""

    def read(app: Any) -> dict[str, Any]:
        page = app.list_plans(cursor=cursor, limit=limit)
        return {
            "items": [plan_summary(p) for p in page.items],
            "next_cursor": page.next_cursor,
        }

    columns = ("plan_id", "versions", "latest_version", "currency", "meters")
    _show(_read(read), columns, as_json, _text)


@click.group(help="Meters: what is measured and how it is aggregated.")
def meters() -> None:
    pass


@meters.command("list")
@_page_options
def list_meters(limit: int, cursor: str | None, as_json: bool) -> None:
    """Registered meters by id, those a plan's charges registered included."""

    def read(app: Any) -> dict[str, Any]:
        if cursor is not None:
            check_id(cursor, "cursor")
        found = app.meters(after=cursor, limit=limit + 1)
        items = found[:limit]
        return {
            "items": [m.to_dict() for m in items],
            "next_cursor": items[-1].meter if len(found) > limit else None,
        }

    columns = ("meter", "name", "aggregation", "field", "unit", "registered_by")
    _show(_read(read), columns, as_json, _text)


def register(main: click.Group) -> None:
    main.add_command(customers)
    main.add_command(plans)
    main.add_command(meters)
