"""Webhook endpoints: where to tell other systems what happened, and the facts they are told.

An endpoint is an aggregate (`WebhookEndpoint`); what is sent is derived from the log by the
outbox projection (`projections/webhooks.py`). Facts that are not billing events but that
receivers want (a reconciliation's findings, a projection switched to a rebuilt version) are
recorded here as audit facts, so the outbox sees them in the log like everything else.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from billing_domain.core import ApplicationCore
from billing_domain.errors import InvalidInput, NotFound
from billing_domain.identity import SYSTEM, AuditFact, Principal
from billing_domain.ids import NAMESPACE
from billing_domain.usage import iso
from billing_domain.webhook_secrets import SecretUnavailable, WebhookKeys, check_secret

EVENT_TYPES = (
    "invoice.issued",
    "invoice.restated",
    "usage.conflict",
    "usage.late",
    "reconciliation.finding",
    "projection.rebuilt",
)
MAX_URL_LENGTH = 2048
MAX_EVENT_TYPES = len(EVENT_TYPES)
MAX_FINDINGS_SENT = 20  # findings named in one reconciliation.finding fact; the count says all
_ENDPOINT_ID = re.compile(r"wh_[0-9a-f]{24}")
_UNPRINTABLE = re.compile(r"[\x00-\x20\x7f-\x9f]")


class UnknownWebhook(NotFound):
    code = "unknown_webhook"
    field = "webhook_id"


class UnknownDelivery(NotFound):
    code = "unknown_delivery"
    field = "delivery_id"


def webhook_uuid(endpoint_id: str) -> UUID:
    return uuid5(NAMESPACE, f"webhook:{endpoint_id}")


def check_url(url: object) -> str:
    """http or https, a host, at most MAX_URL_LENGTH characters, no credentials (they would
    be stored in the log), no spaces or control characters."""
    if not isinstance(url, str) or not url:
        raise InvalidInput("must be an http or https URL", field="url")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"must be at most {MAX_URL_LENGTH} characters", field="url")
    if _UNPRINTABLE.search(url):
        raise InvalidInput("must not contain spaces or control characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput("is not a valid URL", field="url") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("must use http or https", field="url")
    if not parts.hostname:
        raise InvalidInput("must name a host", field="url")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("must not carry credentials; sign with the secret instead", field="url")
    if port == 0:
        raise InvalidInput("must not name port 0", field="url")
    return url


def check_event_types(events: object) -> list[str]:
    """1 to 6 known event types, each once (a repeat is dropped), in the order given."""
    if not isinstance(events, list) or not events:
        raise InvalidInput(f"must list 1 to {MAX_EVENT_TYPES} event types", field="events")
    if len(events) > MAX_EVENT_TYPES * 2:
        raise InvalidInput(f"must list at most {MAX_EVENT_TYPES * 2} entries", field="events")
    for index, name in enumerate(events):
        if name not in EVENT_TYPES:
            shown = repr(name)[:80] if isinstance(name, str) else "a non-string"
            raise InvalidInput(
                f"unknown event type {shown}; one of {', '.join(EVENT_TYPES)}",
                field=f"events[{index}]",
            )
    return list(dict.fromkeys(events))


def check_endpoint_id(endpoint_id: str) -> str:
    if not isinstance(endpoint_id, str) or not _ENDPOINT_ID.fullmatch(endpoint_id):
        raise UnknownWebhook(f"no webhook {endpoint_id[:80]!r}")
    return endpoint_id


class WebhookEndpoint(Aggregate):
    """A receiver's URL and the event types it wants. Its secret is never in the log: either
    derived from the master key (`sealed_secret` None) or sealed with it."""

    class Registered(Aggregate.Created):
        endpoint_id: str
        url: str
        events: list[str]
        actor: str
        registered_at: datetime
        sealed_secret: str | None
        rotation: int
        key_fingerprint: str

    class Disabled(Aggregate.Event):
        actor: str
        disabled_at: datetime

    @staticmethod
    def create_id(endpoint_id: str, **_: Any) -> UUID:
        return webhook_uuid(endpoint_id)

    @event(Registered)
    def __init__(
        self,
        endpoint_id: str,
        url: str,
        events: list[str],
        actor: str,
        registered_at: datetime,
        sealed_secret: str | None,
        rotation: int,
        key_fingerprint: str,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.url = url
        self.events = list(events)
        self.registered_at = registered_at
        self.sealed_secret = sealed_secret
        self.rotation = rotation
        self.key_fingerprint = key_fingerprint
        self.disabled_at: datetime | None = None

    @event(Disabled)
    def disable(self, actor: str, disabled_at: datetime) -> None:
        self.disabled_at = disabled_at

    def view(self) -> dict[str, Any]:
        return {
            "webhook_id": self.endpoint_id,
            "url": self.url,
            "events": list(self.events),
            "created_at": iso(self.registered_at),
            "disabled_at": None if self.disabled_at is None else iso(self.disabled_at),
            "secret_source": "derived" if self.sealed_secret is None else "supplied",
        }


class WebhookCommands(ApplicationCore):
    """Register and disable endpoints; the secret a delivery is signed with; the operational
    facts receivers are told about."""

    webhook_keys: WebhookKeys | None = None  # set by the composition root from the master key

    def _keys(self) -> WebhookKeys:
        if self.webhook_keys is None:
            raise SecretUnavailable("no webhook master key is configured (BILLING_SECRET_KEY)")
        return self.webhook_keys

    def register_webhook(
        self, url: str, events: list[str], secret: str | None = None, principal: Principal = SYSTEM
    ) -> tuple[dict[str, Any], str]:
        """Register an endpoint; return it and its signing secret (shown this once)."""
        check_url(url)
        wanted = check_event_types(events)
        if secret is not None:
            check_secret(secret)
        keys = self._keys()
        endpoint_id = "wh_" + secrets.token_hex(12)
        endpoint = WebhookEndpoint(
            endpoint_id=endpoint_id,
            url=url,
            events=wanted,
            actor=principal.actor,
            registered_at=self.clock(),
            sealed_secret=None if secret is None else keys.seal(secret),
            rotation=0,
            key_fingerprint=keys.fingerprint,
        )
        self.save(endpoint)
        return endpoint.view(), secret if secret is not None else keys.derive(endpoint_id, 0)

    def _endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        endpoint = self._find(webhook_uuid(check_endpoint_id(endpoint_id)), WebhookEndpoint)
        if endpoint is None:
            raise UnknownWebhook(f"no webhook {endpoint_id!r}")
        return endpoint

    def webhook(self, endpoint_id: str) -> dict[str, Any]:
        """An endpoint as registered (never its secret); 404 when unknown."""
        return self._endpoint(endpoint_id).view()

    def disable_webhook(self, endpoint_id: str, principal: Principal = SYSTEM) -> dict[str, Any]:
        """Stop sending to an endpoint; disabling it again changes nothing."""

        def attempt() -> dict[str, Any]:
            endpoint = self._endpoint(endpoint_id)
            if endpoint.disabled_at is None:
                endpoint.disable(actor=principal.actor, disabled_at=self.clock())
                self.save(endpoint)
            return endpoint.view()

        return self._retry(attempt)

    def webhook_secret(self, endpoint_id: str) -> str:
        """The secret deliveries to this endpoint are signed with, for the delivery worker."""
        endpoint = self._endpoint(endpoint_id)
        keys = self._keys()
        if endpoint.key_fingerprint != keys.fingerprint:
            raise SecretUnavailable(
                f"webhook {endpoint_id} was registered under another master key "
                "(BILLING_SECRET_KEY changed); register the endpoint again"
            )
        if endpoint.sealed_secret is not None:
            return keys.unseal(endpoint.sealed_secret)
        return keys.derive(endpoint.endpoint_id, endpoint.rotation)

    def note_delivery_retry(
        self, endpoint_id: str, delivery_id: str, principal: Principal = SYSTEM
    ) -> None:
        """Keep in the audit log that someone asked for a delivery to be sent again."""
        self._note(
            principal,
            "webhook.delivery_retried",
            "delivery sent again on request",
            {"webhook_id": endpoint_id, "delivery_id": delivery_id},
        )

    def note_reconciliation(
        self,
        report: dict[str, Any],
        period: str,
        customer_id: str | None,
        principal: Principal = SYSTEM,
    ) -> bool:
        """Record a reconciliation run that found mismatches (a clean run records nothing, the
        same findings again the same UTC day neither); return whether a fact was recorded."""
        findings = _plain(list(report.get("findings") or []))
        if not findings:
            return False
        now = self.clock()
        # The same findings of the same scope are told once a UTC day, however often the
        # reconciliation is read: the fact's id says so, and the store refuses it twice.
        digest = hashlib.sha256(json.dumps(findings, sort_keys=True).encode()).hexdigest()
        fact_id = uuid5(
            NAMESPACE, f"reconciliation:{period}:{customer_id}:{now.date().isoformat()}:{digest}"
        )
        fact = AuditFact._create(
            AuditFact.Recorded,
            id=fact_id,
            action="reconciliation.findings",
            emitter=principal.emitter,
            key_id=principal.key_id,
            reason=f"reconciliation of {period} found {len(findings)} mismatch(es)",
            detail={
                "period": period,
                "customer_id": customer_id,
                "count": len(findings),
                "summary": _plain(report.get("summary") or {}),
                "findings": findings[:MAX_FINDINGS_SENT],
            },
            at=now,
        )
        try:
            self.save(fact)
        except IntegrityError:
            return False
        return True

    def note_projection_rebuilt(self, name: str, version: int, position: int) -> None:
        """Record that reads of a projection switched to a version rebuilt from the log."""
        self._note(
            SYSTEM,
            "projection.rebuilt",
            f"reads of {name} switched to version {version}",
            {"name": name, "version": version, "position": position},
        )

    def _note(self, principal: Principal, action: str, reason: str, detail: dict[str, Any]) -> None:
        self.save(self._refusal_fact(principal, action, reason, detail, self.clock()))


def _plain(value: Any) -> Any:
    """JSON-safe text for a stored fact: decimals and times as strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, datetime):
        return iso(value)
    return str(value)


__all__ = ["EVENT_TYPES", "AuditFact", "UnknownWebhook", "WebhookCommands", "WebhookEndpoint"]
