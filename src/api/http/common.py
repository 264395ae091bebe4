"""What the controllers share: the services, read-your-writes, query parameters, and the
error statuses each kind of route can answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Request
from litestar.params import Parameter

from api.bootstrap import Services
from api.http.errors import error_responses
from billing_domain import bounds
from billing_domain.errors import InvalidInput

# Reads wait at most this long for the read models to reach the newest event, so a client
# reads its own writes; ?consistency=eventual skips the wait.
READ_WAIT_SECONDS = 5.0

AUTHENTICATED = (401, 403, 429, 503)
READ = error_responses(*AUTHENTICATED, 422)
READ_ONE = error_responses(*AUTHENTICATED, 404, 422)
WRITE = error_responses(400, *AUTHENTICATED, 409, 413, 422)
WRITE_ON = error_responses(400, *AUTHENTICATED, 404, 409, 413, 422)
SECURITY: list[dict[str, list[str]]] = [{"BearerAuth": []}]

Consistency = Parameter(
    description="`eventual` answers at once, without waiting for the read models to reach "
    "the newest events"
)
Cursor = Parameter(description="next_cursor of the page before")
Limit = Parameter(ge=1, le=1000, description="items per page (1 to 1000)")
AsOf = Parameter(description="RFC 3339: the answer as it was known at that ingestion time")


def services(request: Request[Any, Any, Any]) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def fresh(request: Request[Any, Any, Any], consistency: str | None) -> None:
    if consistency != "eventual":
        models = services(request).read_models
        models.wait(models.max_position(), timeout=READ_WAIT_SECONDS)


def time_param(text: str | None, field: str) -> datetime | None:
    """A time query parameter: RFC 3339 with an offset, as every time input."""
    return None if text is None else bounds.parse_time(text, field)


def check_limit(limit: int) -> None:
    if not 1 <= limit <= 1000:
        raise InvalidInput("must be between 1 and 1000", field="limit")
