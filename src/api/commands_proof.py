"""`billing reconcile|verify|export|audit`: the checks and records finance and auditors rely on.

Each prints a table with a summary line, or JSON with `--json`, and exits 1 when a check finds
anything that disagrees (2 for bad input, as click does).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.bootstrap import Services, build
from api.commands_service import StartupError, when
from billing_domain.application import check_period
from billing_domain.errors import BillingError
from billing_domain.usage import iso

# Piped into a file, the tables keep their columns whole instead of an 80-column guess.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)


def _period(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_period(value)
    except BillingError as error:
        raise click.BadParameter(error.reason) from None


def _moment(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    return when(value)


@contextmanager
def _services() -> Iterator[Services]:
    services = build()
    try:
        yield services
    finally:
        services.close()


@contextmanager
def _log_progress(label: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar over log positions, on stderr so `--json` output stays clean."""
    if quiet:
        yield lambda _position, _total: None
        return
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} events"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=1)

        def progress(position: int, total: int) -> None:
            bar.update(task, completed=position, total=max(total, 1))

        yield progress


# reconcile ------------------------------------------------------------------------------------


@click.command()
@click.option("--period", required=True, callback=_period, help="The month, YYYY-MM.")
@click.option("--customer", "customer_id", help="Only this customer's period.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def reconcile(period: str, customer_id: str | None, as_json: bool) -> None:
    """Compare raw events, replayed aggregates, read models and issued invoices for a period.

    Exits 1 when anything disagrees; every finding names what disagrees and why."""
    from projections.reconciliation import reconcile as run

    with _services() as services, _log_progress("reading the log", as_json) as progress:
        try:
            report = run(services, period, customer_id, progress=progress)
            services.app.note_reconciliation(report, period, customer_id)
        except BillingError as error:
            raise click.ClickException(error.reason) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
    if not report["ok"]:
        raise SystemExit(1)


def print_report(report: dict[str, Any]) -> None:
    meters = Table(
        "customer",
        "meter",
        "status",
        "raw",
        "replayed",
        "projected",
        "issued",
        "amount",
        "issued amount",
        title=f"Reconciliation {report['period']}",
    )
    for row in report["meters"]:
        meters.add_row(
            row["customer_id"],
            row["meter"],
            row["status"],
            row["raw"],
            row["replayed"],
            row["projected"] or "-",
            row["issued"] or "-",
            row["amount"],
            row["issued_amount"] or "-",
        )
    out.print(meters)
    if report["findings"]:
        findings = Table(
            "cause",
            "check",
            "customer",
            "meter",
            "event / revision",
            "expected",
            "actual",
            "detail",
            title="Findings",
        )
        for f in report["findings"]:
            where = (
                f["event_id"]
                or (f"revision {f['revision']}" if f["revision"] else "")
                or (f"position {f['position']}" if f["position"] else "")
            )
            findings.add_row(
                f["cause"],
                f["check"],
                f["customer_id"] or "-",
                f["meter"] or "-",
                where,
                f["expected"] or "-",
                f["actual"] or "-",
                f["detail"],
            )
        out.print(findings)
    checked = report["checked"]
    verdict = (
        "no differences"
        if report["ok"]
        else "findings: "
        + ", ".join(f"{cause} {count}" for cause, count in report["summary"].items())
    )
    out.print(
        f"{report['period']}: {checked['customers']} customers, {checked['records']:,} "
        f"records, {checked['invoices']} invoice revisions, "
        f"{checked['stored_events']:,} stored events read in {report['seconds']} s: "
        f"{verdict}"
    )


# verify ---------------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(as_json: bool) -> None:
    """Recompute every issued invoice's lineage digest from the log; exit 1 naming failures."""
    from projections.reconciliation import verify as run

    with _services() as services, _log_progress("reading the log", as_json) as progress:
        result = run(services.app, progress=progress)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        failed = {(f["invoice_id"], f["revision"]): f for f in result["failures"]}
        for rev in result["revisions"]:
            where = (
                f"{rev['invoice_id']} revision {rev['revision']} "
                f"({rev['customer_id']} {rev['period']}, {rev['status']}) {rev['scheme']}"
            )
            failure = failed.get((rev["invoice_id"], rev["revision"]))
            if failure is None:
                out.print(f"ok   {where}")
            else:
                out.print(
                    f"FAIL {where}: recorded {failure['recorded']}, "
                    f"events give {failure['recomputed']}"
                )
        for event in result["undecodable"]:
            out.print(
                f"UNREADABLE position {event['position']}: {event['actual']}: {event['detail']}"
            )
        checked = result["checked"]
        verdict = (
            "all digests match"
            if result["ok"]
            else (
                f"{len(result['failures'])} revision(s) fail, "
                f"{len(result['undecodable'])} stored event(s) unreadable"
            )
        )
        schemes = ", ".join(f"{n} {scheme}" for scheme, n in checked["schemes"].items())
        out.print(
            f"{checked['revisions']} issued revisions ({schemes or 'none'}) "
            f"of {checked['periods']} periods, "
            f"{checked['stored_events']:,} stored events, in {result['seconds']} s: "
            f"{verdict}"
        )
    if not result["ok"]:
        raise SystemExit(1)


# export ---------------------------------------------------------------------------------------

INVOICE_COLUMNS = [
    "invoice_id",
    "customer_id",
    "period",
    "revision",
    "status",
    "currency",
    "total",
    "lineage_digest",
    "plan_id",
    "plan_version",
    "issued_at",
]
LINE_COLUMNS = [
    "invoice_id",
    "revision",
    "line",
    "kind",
    "meter",
    "usage_period",
    "quantity",
    "amount",
    "currency",
]
LINEAGE_COLUMNS = [
    "invoice_id",
    "revision",
    "line",
    "kind",
    "id",
    "quantity",
    "occurred_at",
    "received_at",
    "emitter",
    "key_id",
]


def export_rows(
    services: Services, period: str, customer_id: str | None
) -> dict[str, list[dict[str, Any]]]:
    """Every revision of the period's invoices, their lines, and the latest revision's lineage,
    from the read models once they have caught up with the log."""
    models = services.read_models
    models.wait(models.max_position(), timeout=60.0)
    invoices, lines, lineage = [], [], []
    cursor = None
    while True:
        page = models.invoices(customer_id=customer_id, period=period, cursor=cursor, limit=500)
        for item in page["items"]:
            invoice = models.invoice(item["invoice_id"], item["revision"])
            invoices.append({c: invoice.get(c) for c in INVOICE_COLUMNS})
            for index, line in enumerate(invoice["lines"]):
                lines.append(
                    {
                        "invoice_id": invoice["invoice_id"],
                        "revision": invoice["revision"],
                        "line": index,
                        "currency": invoice["currency"],
                        **{
                            c: line[c]
                            for c in ("kind", "meter", "usage_period", "quantity", "amount")
                        },
                    }
                )
                if invoice["status"] in ("issued", "draft"):
                    lineage += _lineage(models, invoice, index)
        cursor = page["next_cursor"]
        if cursor is None:
            return {"invoices": invoices, "lines": lines, "lineage": lineage}


def _lineage(models: Any, invoice: dict[str, Any], line: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = models.lineage(invoice["invoice_id"], line, cursor=cursor, limit=1000)
        if page is None:
            return rows
        rows += [
            {
                "invoice_id": invoice["invoice_id"],
                "revision": invoice["revision"],
                "line": line,
                **{c: item.get(c) for c in LINEAGE_COLUMNS[3:]},
            }
            for item in page["items"]
        ]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


@click.command()
@click.option("--period", required=True, callback=_period, help="The month, YYYY-MM.")
@click.option("--customer", "customer_id", help="Only this customer's invoices.")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option(
    "--out",
    "target",
    required=True,
    type=click.Path(path_type=Path),
    help="CSV: a directory for invoices.csv, invoice_lines.csv and lineage.csv. JSON: a file.",
)
def export(period: str, customer_id: str | None, fmt: str, target: Path) -> None:
    """Export a period's invoices, their lines and lineage for finance (amounts as decimal
    strings, stable column names)."""
    if fmt == "csv" and target.exists() and not target.is_dir():
        raise StartupError(
            f"--out {target}: is a file, and a CSV export writes three files into a directory; "
            "give a directory (new or existing), or use --format json to write one file"
        )
    if fmt == "json" and target.is_dir():
        raise StartupError(
            f"--out {target}: is a directory, and a JSON export writes one file; give a file "
            f"path, e.g. {target / (period + '.json')}"
        )
    with _services() as services:
        rows = export_rows(services, period, customer_id)
    if fmt == "json":
        target.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "period": period,
            "customer_id": customer_id,
            "exported_at": iso(datetime.now(UTC)),
            **rows,
        }
        target.write_text(json.dumps(document, indent=2))
        written = [target]
    else:
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for name, columns, data in (
            ("invoices.csv", INVOICE_COLUMNS, rows["invoices"]),
            ("invoice_lines.csv", LINE_COLUMNS, rows["lines"]),
            ("lineage.csv", LINEAGE_COLUMNS, rows["lineage"]),
        ):
            path = target / name
            with path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(data)
            written.append(path)
    out.print(
        f"{len(rows['invoices'])} invoice revisions, {len(rows['lines'])} lines, "
        f"{len(rows['lineage']):,} lineage records -> " + ", ".join(str(p) for p in written)
    )


# audit ----------------------------------------------------------------------------------------


@click.command()
@click.option("--since", callback=_moment, help="From this time (RFC 3339), inclusive.")
@click.option("--until", callback=_moment, help="Before this time (RFC 3339).")
@click.option("--actor", help="Only entries by this actor (emitter/key_id) or emitter.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def audit(
    since: datetime | None, until: datetime | None, actor: str | None, limit: int, as_json: bool
) -> None:
    """Who did what, from the log: keys, grants, plans, subscriptions, merges, corrections,
    closes, restatements and refused requests."""
    items: list[dict[str, Any]] = []
    with _services() as services:
        models = services.read_models
        models.wait(models.max_position(), timeout=60.0)
        cursor = None
        while len(items) < limit:
            page = models.audit(
                since=since,
                until=until,
                actor=actor,
                cursor=cursor,
                limit=min(1000, limit - len(items)),
            )
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    if as_json:
        for item in items:
            click.echo(json.dumps(item))
        return
    table = Table("position", "at", "action", "actor", "subject", "detail")
    for item in items:
        table.add_row(
            str(item["position"]),
            item["at"],
            item["action"],
            item["actor"],
            item["subject"] or "-",
            json.dumps(item["detail"], sort_keys=True),
        )
    out.print(table)
    out.print(f"{len(items)} entries" + (" (limit reached)" if len(items) >= limit else ""))


def register(group: click.Group) -> None:
    """Add this family's commands to the `billing` group."""
    for command in (reconcile, verify, export, audit):
        group.add_command(command)
