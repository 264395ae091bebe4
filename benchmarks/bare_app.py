"""A bare litestar app: validates a usage body and answers 202, doing nothing else.

It is the ceiling for the real ingest endpoint: HTTP parsing, pydantic validation and JSON
serialisation on one uvicorn worker, with no storage at all.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from litestar import Litestar, get, post
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field


def _require_string(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError('quantity must be a decimal string, e.g. "1.5"')
    return value


Quantity = Annotated[Decimal, BeforeValidator(_require_string), Field(ge=0, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1, max_length=200)]


class UsageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Text
    customer_id: Text
    meter: Text
    quantity: Quantity
    occurred_at: AwareDatetime
    properties: dict[str, Any] = Field(default_factory=dict)


@post("/v1/usage", status_code=202)
async def ingest_usage(data: UsageIn) -> dict[str, str]:
    return {"event_id": data.event_id, "status": "accepted"}


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


app = Litestar(route_handlers=[ingest_usage, health], openapi_config=None)
