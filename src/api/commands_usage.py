"""`billing usage series`: a customer's usage of a meter per hour, day or month, from the
series read model, as a table (or `--json`)."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from api.bootstrap import build
from billing_domain import bounds
from billing_domain.errors import BillingError
from billing_domain.usage import period_bounds, period_of
from projections.series_reads import MAX_LIMIT, SeriesReads, check


@click.group(help="Usage reads.")
def usage() -> None:
    pass


@usage.command("series")
@click.argument("customer_id")
@click.argument("meter")
@click.option("--from", "from_", default=None, help="RFC 3339; default: this period's start.")
@click.option("--to", default=None, help="RFC 3339, exclusive; default: this period's end.")
@click.option("--window", type=click.Choice(["hour", "day", "month"]), default="day")
@click.option("--group-by", default=None, help="A record property to group by.")
@click.option("--as-of", default=None, help="RFC 3339: as known at that ingestion time.")
@click.option("--cursor", default=None, help="next_cursor of the page before.")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=MAX_LIMIT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def series(
    customer_id: str,
    meter: str,
    from_: str | None,
    to: str | None,
    window: str,
    group_by: str | None,
    as_of: str | None,
    cursor: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The meter's aggregation per window (GET /v1/customers/{customer_id}/usage/series)."""
    services = build()
    try:
        start = bounds.parse_time(from_, "from") if from_ else None
        end = bounds.parse_time(to, "to") if to else None
        moment = bounds.parse_time(as_of, "as_of") if as_of else None
        this_period = period_bounds(period_of(services.app.clock()))
        start, end = start or this_period[0], end or this_period[1]
        check(start, end, window, group_by, limit)
        services.app.get_customer(customer_id)
        services.app.meter(meter)
        services.read_models.catch_up()
        page = SeriesReads(services.read_models).series(
            customer_id, meter, start, end, window, group_by, moment, cursor, limit
        )
    except BillingError as error:
        field = f"{error.field}: " if error.field else ""
        raise click.UsageError(f"{field}{error.reason}") from None
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    table = Table("window_start", "window_end", *(["group"] if group_by else []), "value")
    for item in page["items"]:
        group = [json.dumps(item["group"][group_by])] if group_by else []
        table.add_row(item["window_start"], item["window_end"], *group, item["value"])
    Console(width=120).print(table)
    if page["next_cursor"] is not None:
        Console(stderr=True).print(f"more: --cursor {page['next_cursor']}")


def register(main: click.Group) -> None:
    main.add_command(usage)
