"""Operations pages: reconciliation runs, the audit log, projection versions and rebuilds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from litestar import Request, get, post
from litestar.response import Redirect, Template

from api.console import queries, runs
from api.console.signin import check_csrf, current
from api.console.view import Page, check_role, is_htmx, open_page, path, whole, with_query
from billing_domain import bounds
from billing_domain.application import check_period
from billing_domain.errors import InvalidInput, NotFound
from billing_domain.identity import Principal
from billing_domain.usage import period_of
from projections.base import stamp
from projections.rebuild import base_name
from projections.reconciliation import reconcile

AUDIT_PAGE = 50


async def _acting(request: Request[Any, Any, Any]) -> tuple[Page, dict[str, Any]]:
    """A POST: signed in, with this session's CSRF token, by a role that may take it."""
    session = current(request)
    form = await request.form()
    check_csrf(request, session, form)
    check_role(request, session)
    return open_page(request), dict(form)


# Reconciliation ------------------------------------------------------------------------------


def _last_period(page: Page) -> str:
    start = (page.as_of or datetime.now(UTC)).replace(day=1)
    return period_of(start - timedelta(days=1))


@get("/reconciliation", sync_to_thread=True, name="console:reconciliation")
def reconciliation(request: Request[Any, Any, Any]) -> Template:
    """Choose a period (and customer), run it, read its findings; past runs are listed."""
    page = open_page(request)
    run_text = request.query_params.get("run")
    shown = None
    if run_text:
        shown = runs.one(page.services, whole(run_text, "run", 1, 1, 10**12))
        if shown is None:
            raise NotFound(f"no reconciliation run {run_text} is kept", field="run")
    page.context.update(
        runs=runs.listed(page.services, until=page.as_of_stamp),
        shown=shown,
        period=request.query_params.get("period") or _last_period(page),
        customer_id=request.query_params.get("customer_id") or "",
        keep=runs.KEEP_RUNS,
    )
    return page.render("reconciliation.html")


@post("/reconciliation", name="console:reconcile", status_code=303)
async def run_reconciliation(request: Request[Any, Any, Any]) -> Redirect:
    """Reconcile a period now (operator) and keep the result."""
    page, form = await _acting(request)
    period = str(form.get("period") or "").strip()
    check_period(period)
    customer_id = str(form.get("customer_id") or "").strip() or None
    actor = f"{page.session.holder}/{page.session.key_id}"

    def run() -> int:
        report = reconcile(page.services, period=period, customer_id=customer_id)
        caller = Principal(page.session.holder, page.session.key_id, page.session.role)
        page.services.app.note_reconciliation(report, period, customer_id, caller)
        return runs.keep(page.services, actor, report)

    run_id = await anyio.to_thread.run_sync(run)
    return Redirect(
        with_query("/reconciliation", {"run": run_id, "as_of": page.as_of_text}),
        status_code=303,
    )


# Audit ----------------------------------------------------------------------------------------


def _time(text: str | None, field: str) -> str | None:
    if not text:
        return None
    if len(text) in (16, 19) and "T" in text:  # the picker's UTC wall time
        text = text + (":00Z" if len(text) == 16 else "Z")
    return stamp(bounds.parse_time(text, field))


@get("/audit", sync_to_thread=True, name="console:audit")
def audit(request: Request[Any, Any, Any]) -> Template:
    """Who did what: filter by actor, action and time, newest first, paged."""
    page = open_page(request)
    q = request.query_params
    actor = (q.get("actor") or "").strip() or None
    action = (q.get("action") or "").strip() or None
    since = _time(q.get("since"), "since")
    until = _time(q.get("until"), "until")
    if page.as_of_stamp and (until is None or until > page.as_of_stamp):
        until = page.as_of_stamp
    before_text = q.get("before")
    before = None if not before_text else whole(before_text, "before", 0, 0, 10**15)
    items, more = queries.audit(
        page.services,
        actor=actor,
        action=action,
        since=since,
        until=until,
        before=before,
        limit=AUDIT_PAGE,
    )
    filters = {
        "actor": actor or "",
        "action": action or "",
        "since": q.get("since") or "",
        "until": q.get("until") or "",
    }
    page.context.update(
        items=items,
        more=more,
        filters=filters,
        actions=queries.audit_actions(page.services),
        before=before,
    )
    if is_htmx(request) and request.headers.get("hx-target") == "audit-table":
        return page.render("_audit_table.html")
    return page.render("audit.html")


# Projections ------------------------------------------------------------------------------------


def _projections(page: Page) -> dict[str, Any]:
    models = page.services.read_models
    rows = models.status()
    names = sorted({r["name"] for r in rows})
    # a rebuild runs in the worker process that started it: its state is known there only, the
    # versions' rows (state, position, lag) in every worker
    rebuilds = {name: models.rebuild_state(name) for name in names}
    building = any(r["state"] == "building" for r in rows) or any(
        r and r["state"] == "building" for r in rebuilds.values()
    )
    return {"rows": rows, "names": names, "rebuilds": rebuilds, "building": building}


@get("/projections", sync_to_thread=True, name="console:projections")
def projections(request: Request[Any, Any, Any]) -> Template:
    """Each projection's versions: state, position, lag, quarantined; rebuilds and switches."""
    page = open_page(request)
    page.context.update(_projections(page))
    if is_htmx(request) and request.headers.get("hx-target") == "projections-table":
        return page.render("_projections_table.html")
    return page.render("projections.html")


@post("/projections/{name:str}/rebuild", name="console:rebuild", status_code=200)
async def rebuild(request: Request[Any, Any, Any], name: str) -> Template | Redirect:
    """Build the next version from the log in the background; reads switch when it is done."""
    page, _ = await _acting(request)
    base_name(name)
    await anyio.to_thread.run_sync(page.services.read_models.start_rebuild, name)
    return await _after_action(request, page)


@post("/projections/{name:str}/switch", name="console:switch", status_code=200)
async def switch(request: Request[Any, Any, Any], name: str) -> Template | Redirect:
    """Switch reads to a version that was built but not switched (state `ready`)."""
    page, form = await _acting(request)
    number = whole(str(form.get("version") or ""), "version", 1, 1, 10**6)
    models = page.services.read_models
    ready = [
        v
        for v in models.runner.versions()
        if v.name == base_name(name) and v.version == number and v.state == "ready"
    ]
    if not ready:
        raise InvalidInput(f"{name} has no ready version {number} to switch to", field="version")
    await anyio.to_thread.run_sync(models.rebuilds.switch, ready[0])
    return await _after_action(request, page)


async def _after_action(request: Request[Any, Any, Any], page: Page) -> Template | Redirect:
    if is_htmx(request):
        page.context.update(await anyio.to_thread.run_sync(_projections, page))
        return page.render("_projections_table.html")
    return Redirect(page.href(path("projections")), status_code=303)
