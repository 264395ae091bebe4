"""Webhook endpoints: register (the signing secret shown once), list, disable, delivery logs and
sending a delivery again."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, delete, get, post
from litestar.params import Parameter
from pydantic import BaseModel, ConfigDict, Field

from api.http import responses as r
from api.http.auth import requires
from api.http.common import (
    READ,
    READ_ONE,
    SECURITY,
    WRITE,
    WRITE_ON,
    Cursor,
    Limit,
    fresh,
    services,
)
from billing_domain.identity import Principal
from billing_domain.webhook_secrets import MAX_SECRET_TEXT
from billing_domain.webhooks import EVENT_TYPES, MAX_URL_LENGTH, UnknownWebhook, check_endpoint_id

_READERS = requires("admin", "operator")
EventType = Literal[
    "invoice.issued",
    "invoice.restated",
    "usage.conflict",
    "usage.late",
    "reconciliation.finding",
    "projection.rebuilt",
]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]


class WebhookIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"url": "https://erp.example.com/billing-hooks", "events": ["invoice.issued"]}
            ]
        },
    )
    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH, description="http or https")
    events: list[str] = Field(
        min_length=1,
        max_length=len(EVENT_TYPES) * 2,
        description=f"event types, of: {', '.join(EVENT_TYPES)}",
    )
    secret: str | None = Field(
        default=None,
        max_length=MAX_SECRET_TEXT,
        description="whsec_ + base64 of 24 to 64 bytes; omitted: the service derives one",
    )


class WebhookOut(r.Out):
    webhook_id: str
    url: str
    events: list[EventType]
    status: Literal["active", "failing", "disabled"]
    created_at: r.TimeText
    disabled_at: r.TimeText | None
    failing_since: r.TimeText | None = None
    consecutive_failures: int = 0
    last_success_at: r.TimeText | None = None
    last_failure_at: r.TimeText | None = None
    pending: int = Field(default=0, description="deliveries waiting to be sent")
    delivered: int = 0
    failed: int = Field(default=0, description="deliveries given up after the retry window")


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="the signing secret, shown once (Standard Webhooks whsec_)")


class WebhookList(r.Page):
    items: list[WebhookOut]


class DeliveryOut(r.Out):
    delivery_id: str = Field(description="also the webhook-id header receivers dedupe on")
    webhook_id: str
    event_type: EventType
    position: int = Field(description="the event's position in the log; sent in this order")
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: r.TimeText | None
    delivered_at: r.TimeText | None
    created_at: r.TimeText
    payload: dict[str, Any] = Field(description="the body sent: {type, timestamp, data}")


class DeliveryList(r.Page):
    items: list[DeliveryOut]


def _known(request: Request[Any, Any, Any], webhook_id: str) -> dict[str, Any]:
    """The endpoint as the outbox sees it; 404 for an id never registered."""
    services(request).app.webhook(webhook_id)
    fresh(request, None)
    found = services(request).webhooks.endpoint(check_endpoint_id(webhook_id))
    if found is None:
        raise UnknownWebhook(f"no webhook {webhook_id!r}")
    return found  # type: ignore[no-any-return]


class WebhookController(Controller):
    path = "/v1/webhooks"
    tags = ["webhooks"]  # noqa: RUF012
    security = SECURITY

    @post(
        "/",
        status_code=201,
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE,
        summary="Register a webhook endpoint (its signing secret is shown once)",
    )
    def register_webhook(
        self, request: Request[Any, Any, Any], data: WebhookIn, caller: Principal
    ) -> WebhookCreatedOut:
        """Deliveries of the listed event types recorded from now on are signed per Standard
        Webhooks with the secret answered here; 422 names an unknown type or a bad URL."""
        endpoint, secret = services(request).app.register_webhook(
            data.url, data.events, data.secret, caller
        )
        return WebhookCreatedOut.of({**endpoint, "status": "active", "secret": secret})

    @get(
        "/",
        sync_to_thread=True,
        guards=[_READERS],
        responses=READ,
        summary="Webhook endpoints, in the order registered, with status and backlog",
    )
    def list_webhooks(
        self,
        request: Request[Any, Any, Any],
        caller: Principal,
        cursor: Annotated[str | None, Cursor] = None,
        limit: Annotated[int, Limit] = 100,
    ) -> WebhookList:
        """`{items, next_cursor}`; never a secret."""
        fresh(request, None)
        return WebhookList.of(services(request).webhooks.endpoints(cursor, limit))

    @get(
        "/{webhook_id:str}",
        sync_to_thread=True,
        guards=[_READERS],
        responses=READ_ONE,
        summary="A webhook endpoint: status (active, failing, disabled) and delivery counts",
    )
    def get_webhook(
        self, request: Request[Any, Any, Any], webhook_id: str, caller: Principal
    ) -> WebhookOut:
        """404 for an unknown id; never the secret."""
        return WebhookOut.of(_known(request, webhook_id))

    @delete(
        "/{webhook_id:str}",
        status_code=200,
        sync_to_thread=True,
        guards=[requires("admin")],
        responses=WRITE_ON,
        summary="Disable a webhook endpoint (nothing more is sent to it)",
    )
    def disable_webhook(
        self, request: Request[Any, Any, Any], webhook_id: str, caller: Principal
    ) -> WebhookOut:
        """Disabling twice changes nothing; its delivery log stays readable."""
        services(request).app.disable_webhook(webhook_id, caller)
        return WebhookOut.of(_known(request, webhook_id))

    @get(
        "/{webhook_id:str}/deliveries",
        sync_to_thread=True,
        guards=[_READERS],
        responses=READ_ONE,
        summary="An endpoint's delivery log, in the order sent",
    )
    def deliveries(
        self,
        request: Request[Any, Any, Any],
        webhook_id: str,
        caller: Principal,
        status: Annotated[
            Literal["pending", "delivered", "failed"] | None,
            Parameter(description="only deliveries in this state"),
        ] = None,
        cursor: Annotated[str | None, Cursor] = None,
        limit: Annotated[int, Limit] = 100,
    ) -> DeliveryList:
        """`{items, next_cursor}`: attempts, last status code and error, next attempt time,
        delivered_at, and the body sent."""
        _known(request, webhook_id)
        found = services(request).webhooks.deliveries(webhook_id, status, cursor, limit)
        return DeliveryList.of(found)

    @post(
        "/{webhook_id:str}/deliveries/{delivery_id:str}/retry",
        status_code=202,
        sync_to_thread=True,
        guards=[_READERS],
        responses=WRITE_ON,
        summary="Send a delivery again (failed, pending or delivered), with the same webhook-id",
    )
    def retry_delivery(
        self,
        request: Request[Any, Any, Any],
        webhook_id: str,
        delivery_id: str,
        caller: Principal,
    ) -> DeliveryOut:
        """It is sent when its endpoint's queue reaches it (in log order), with a new retry
        window; the request is kept in the audit log."""
        _known(request, webhook_id)
        app = services(request).app
        found = services(request).webhooks.retry(webhook_id, delivery_id, app.clock())
        app.note_delivery_retry(webhook_id, delivery_id, caller)
        return DeliveryOut.of(found)


WEBHOOK_ROUTES = (WebhookController,)
