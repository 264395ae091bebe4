"""What every console page shares: its session, its `as_of`, links that keep it, and the
response headers (no caching, no framing, scripts and styles only from the console)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from litestar import Request
from litestar.response import Template

from api.bootstrap import Services
from api.console import roles
from api.console.sessions import Session
from api.console.signin import CSRF_FIELD, console_of, current, require
from billing_domain import bounds
from billing_domain.errors import InvalidInput
from projections.base import stamp

READ_WAIT_SECONDS = 5.0
PAGE_SIZES = (25, 50, 100, 500)

HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
}


class GoTo(Exception):
    """Answer with a redirect to `url` (303)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def path(*segments: str) -> str:
    return "/" + "/".join(quote(s, safe="") for s in segments)


def with_query(url: str, params: dict[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{url}?{urlencode(kept)}" if kept else url


@dataclass
class Page:
    request: Request[Any, Any, Any]
    session: Session
    services: Services
    as_of: datetime | None
    as_of_text: str | None
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def as_of_stamp(self) -> str | None:
        return None if self.as_of is None else stamp(self.as_of)

    @property
    def as_of_local(self) -> str | None:
        """as_of as the picker's UTC wall time."""
        if self.as_of is None:
            return None
        return self.as_of.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")

    def may(self, route: str) -> bool:
        """Whether this session's role may open the page or take the action named `route`."""
        return roles.may(self.session.role, route)

    @property
    def navigation(self) -> list[tuple[str, str]]:
        return roles.navigation(self.session.role)

    @property
    def home(self) -> str:
        return roles.home(self.session.role)

    def href(self, url: str, **params: Any) -> str:
        """A console link that keeps this page's as_of."""
        return with_query(url, {"as_of": self.as_of_text, **params})

    def now_href(self) -> str:
        """This page without as_of."""
        params = {k: v for k, v in self.request.query_params.items() if k != "as_of"}
        return with_query(self.request.url.path, params)

    def render(self, template: str, status_code: int = 200, **context: Any) -> Template:
        return Template(
            template_name=template,
            context={"page": self, "csrf_field": CSRF_FIELD, **self.context, **context},
            headers=HEADERS,
            status_code=status_code,
        )


def open_page(request: Request[Any, Any, Any]) -> Page:
    """The page's session (or SignInRequired; NotAuthorised for a role the route's entry in
    `roles.ACCESS` does not list) and its as_of (RFC 3339)."""
    session = current(request)
    check_role(request, session)
    picked = request.query_params.get("as_of_utc")
    if picked is not None:
        raise GoTo(_picked(request, picked))
    text = request.query_params.get("as_of") or None
    moment = None if text is None else bounds.parse_time(text, "as_of")
    services = console_of(request).services
    return Page(request, session, services, moment, text)


def check_role(request: Request[Any, Any, Any], session: Session) -> None:
    rule = roles.access(request.route_handler.name)
    require(session, rule.roles, rule.what)


def _picked(request: Request[Any, Any, Any], picked: str) -> str:
    """The as-of picker sends a UTC wall time (`2026-11-05T10:00`); the page takes RFC 3339."""
    params = {k: v for k, v in request.query_params.items() if k not in ("as_of_utc", "as_of")}
    params.pop("cursor", None)
    params.pop("page", None)
    if picked.strip():
        text = picked.strip()
        if len(text) == 16:
            text += ":00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInput(
                "pick a date and time (UTC), e.g. 2026-11-05T10:00", field="as_of"
            ) from None
        if moment.tzinfo is not None:
            raise InvalidInput("the picker takes a UTC wall time without offset", field="as_of")
        params["as_of"] = text + "Z"
    return with_query(request.url.path, params)


def fresh(services: Services) -> None:
    """Wait (briefly) for the read models to reach the newest event, as the API's reads do."""
    models = services.read_models
    models.wait(models.max_position(), timeout=READ_WAIT_SECONDS)


def whole(text: str | None, field_name: str, default: int, low: int, high: int) -> int:
    if text in (None, ""):
        return default
    assert text is not None
    if not text.isdigit() or not low <= int(text) <= high:
        raise InvalidInput(f"must be a whole number from {low} to {high}", field=field_name)
    return int(text)


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("hx-request") == "true"


def when(value: datetime | str | None) -> str:
    """A stored time as people read it: UTC to the second."""
    if value is None or value == "":
        return ""
    moment = (
        value
        if isinstance(value, datetime)
        else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
