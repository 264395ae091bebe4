"""The Identities page: emitters with their owners and grants, keys with expiry and last use
(stale ones marked), and for operators and admins offboarding, for admins rotation, each
behind a confirmation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
from litestar import Request, get, post
from litestar.response import Redirect, Template

from api.console import roles
from api.console.signin import check_csrf, current
from api.console.view import Page, check_role, fresh, open_page, path, whole
from billing_domain import bounds
from billing_domain.errors import InvalidInput
from billing_domain.identity import Principal
from billing_domain.usage import iso
from projections.activity import IdentityReads

STALE_DAYS = 30
LIST_SIZE = 500


def _listing(page: Page, stale_days: int) -> dict[str, Any]:
    app = page.services.app
    reads = IdentityReads(page.services.read_models)
    now = app.clock()
    fresh(page.services)
    emitters = reads.emitters(limit=LIST_SIZE)["items"]
    keys = reads.keys(now=now, last_uses=app.key_uses.snapshot(), limit=LIST_SIZE)["items"]
    cutoff = iso(now - timedelta(days=stale_days))
    for key in keys:
        key["stale"] = (
            key["status"] == "active" and (key["last_used_at"] or key["created_at"]) < cutoff
        )
    grants = {e["emitter_id"]: app.emitter(e["emitter_id"]).grant_views(now) for e in emitters}
    return {"emitters": emitters, "keys": keys, "grants": grants, "stale_days": stale_days}


@get("/identities", sync_to_thread=True, name="console:identities")
def identities(request: Request[Any, Any, Any]) -> Template:
    """Emitters, their owners and grants; keys with expiry and last use, stale ones marked."""
    page = open_page(request)
    stale_days = whole(request.query_params.get("stale_days"), "stale_days", STALE_DAYS, 1, 36500)
    page.context.update(_listing(page, stale_days), may_rotate=page.may("console:rotate"))
    return page.render("identities.html")


async def _confirmed(request: Request[Any, Any, Any]) -> tuple[Page, dict[str, Any]]:
    session = current(request)
    form = dict(await request.form())
    check_csrf(request, session, form)
    check_role(request, session)
    if form.get("confirm") != "yes":
        what = roles.access(request.route_handler.name).what
        raise InvalidInput(f"tick the box to confirm you mean to {what}", field="confirm")
    return open_page(request), form


@post("/identities/emitters/{emitter_id:str}/offboard", name="console:offboard", status_code=303)
async def offboard(request: Request[Any, Any, Any], emitter_id: str) -> Redirect:
    """Revoke every key of the emitter and end its grants (operators and admins)."""
    page, form = await _confirmed(request)
    reason = bounds.check_text(str(form.get("reason") or ""), "reason", bounds.MAX_REASON_LENGTH)

    def act() -> None:
        page.services.app.offboard_emitter(emitter_id, reason, _actor(page))

    await anyio.to_thread.run_sync(act)
    return Redirect(page.href(path("identities")), status_code=303)


@post("/identities/keys/{key_id:str}/rotate", name="console:rotate", status_code=200)
async def rotate(request: Request[Any, Any, Any], key_id: str) -> Template:
    """Issue the key's successor (admins); the new key is shown on this page only, once."""
    page, form = await _confirmed(request)
    overlap = whole(
        str(form.get("overlap_seconds") or ""), "overlap_seconds", 86_400, 0, 30 * 86_400
    )

    def act() -> dict[str, Any]:
        return page.services.app.rotate_key(key_id, overlap, _actor(page))

    rotated = await anyio.to_thread.run_sync(act)
    return page.render("identity_rotated.html", rotated=rotated)


def _actor(page: Page) -> Principal:
    return Principal(page.session.holder, page.session.key_id, page.session.role)
