"""The audit projection: who did what, one row per fact, in log order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from billing_domain.usage import iso
from projections.base import Projection, dumps, stamp

# topic -> (action, fields kept as detail)
ACTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Customer.Opened": (
        "customer.opened",
        ("customer_id", "name", "currency", "late_usage_policy"),
    ),
    "Customer.Renamed": ("customer.renamed", ("name",)),
    "Customer.LateUsagePolicyChanged": ("customer.policy_changed", ("late_usage_policy",)),
    "Customer.Subscribed": ("subscription.changed", ("plan_id", "plan_version", "effective_from")),
    "Customer.Merged": ("customer.merged", ("into", "effective_at")),
    "Customer.ExternalIdAdded": ("customer.external_id_added", ("system", "external_id")),
    "Plan.VersionPublished": ("plan.published", ("version", "currency")),
    "Emitter.Registered": ("emitter.registered", ("emitter_id", "name")),
    "Emitter.Granted": (
        "grant.created",
        ("grant_id", "customer_id", "meters", "valid_from", "valid_until"),
    ),
    "Emitter.GrantRevoked": ("grant.revoked", ("grant_id",)),
    "Emitter.Updated": ("emitter.updated", ("name", "owner")),
    "Emitter.Offboarded": ("emitter.offboarded", ("reason", "key_ids", "grant_ids")),
    "Key.Issued": ("key.created", ("key_id", "role", "name", "emitter_id")),
    "Key.Revoked": ("key.revoked", ()),
    "Key.Rotated": ("key.rotated", ("replaced_by", "expires_at")),
    "BillingPeriod.UsageCompensated": (
        "usage.compensated",
        (
            "compensation_id",
            "event_id",
            "submitted_customer_id",
            "meter",
            "quantity",
            "reason",
            "treatment",
        ),
    ),
    "BillingPeriod.UsageAdjusted": (
        "usage.adjusted",
        ("adjustment_id", "meter", "quantity", "occurred_at", "reason", "treatment"),
    ),
    "BillingPeriod.Closed": ("period.closed", ("revision", "total", "plan_id", "plan_version")),
    "BillingPeriod.Restated": ("period.restated", ("revision", "total", "reason")),
    "AuditFact.Recorded": ("", ("reason",)),
}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


# Creation events that only name their aggregate, so later entries can say what they touched.
NAMING = {
    "Plan.Created": ("plan", "plan_id"),
    "BillingPeriod.Opened": ("period", None),
    "Customer.Opened": ("customer", "customer_id"),
    "Emitter.Registered": ("emitter", "emitter_id"),
    "Key.Issued": ("key", "key_id"),
}


def subject_name(topic: str, e: Any) -> str:
    kind, attribute = NAMING[topic]
    if attribute is None:
        return f"{kind}:{e.customer_id}/{e.period}"
    return f"{kind}:{getattr(e, attribute)}"


class AuditProjection(Projection):
    """Applied as a set like the invoices: the batch's unknown subjects are read with one
    query, and each table is written with one statement."""

    name = "audit"
    topics = frozenset(ACTIONS) | frozenset(NAMING)

    def tables(self) -> dict[str, str]:
        return {
            "entries": "position BIGINT PRIMARY KEY, at TEXT NOT NULL, action TEXT NOT NULL, "
            "actor TEXT NOT NULL, emitter TEXT NOT NULL, key_id TEXT NOT NULL, "
            "subject TEXT, detail TEXT NOT NULL",
            "subjects": "uuid TEXT PRIMARY KEY, subject TEXT NOT NULL",
        }

    def indexes(self) -> list[str]:
        return [
            f"CREATE INDEX IF NOT EXISTS {self.prefix}_entries_at "
            f"ON {self.t('entries')} (at, position)"
        ]

    def apply(self, cur: Any, events: Sequence[tuple[int, str, Any]]) -> None:
        named: dict[str, str | None] = {
            e.originator_id.hex: subject_name(topic, e) for _, topic, e in events if topic in NAMING
        }
        cur.write_rows(self.t("subjects"), self.columns("subjects"), list(named.items()))
        unnamed = {
            e.originator_id.hex
            for _, topic, e in events
            if topic in ACTIONS and e.originator_id.hex not in named
        }
        for row in cur.rows_in(self.t("subjects"), ["uuid"], [[u] for u in unnamed]):
            named[row["uuid"]] = row["subject"]
        entries = [
            self.entry(position, topic, e, named.get(e.originator_id.hex))
            for position, topic, e in events
            if topic in ACTIONS
        ]
        cur.write_rows(self.t("entries"), self.columns("entries"), entries)

    def entry(self, position: int, topic: str, e: Any, subject: str | None) -> tuple[Any, ...]:
        action, fields = ACTIONS[topic]
        detail = {f: _plain(getattr(e, f, None)) for f in fields}
        if topic == "AuditFact.Recorded":
            action, emitter, key_id, at = e.action, e.emitter, e.key_id, e.at
            detail.update(_plain(e.detail))
            first_at = getattr(e, "first_at", None)
            if first_at is not None:  # a counted refusal; facts stored before counting are one
                detail.update(count=e.count, first_at=iso(first_at), last_at=iso(e.at))
        else:
            emitter, _, key_id = str(getattr(e, "actor", "system/-")).partition("/")
            at = getattr(e, "closed_at", None) or getattr(e, "received_at", None) or e.timestamp
        return (
            position,
            stamp(at),
            action,
            f"{emitter}/{key_id}",
            emitter,
            key_id,
            subject,
            dumps(detail),
        )

    def changes(self, cur: Any, live: Projection) -> list[dict[str, Any]]:
        """Entries whose action, actor or detail differ between the live view and this one."""
        rows = cur.all(
            f"SELECT COALESCE(o.position, n.position) AS position, o.action, o.actor, "
            f"o.detail, n.action AS new_action, n.actor AS new_actor, "
            f"n.detail AS new_detail FROM {live.t('entries')} o "
            f"FULL OUTER JOIN {self.t('entries')} n ON o.position = n.position "
            f"WHERE o.position IS NULL OR n.position IS NULL OR o.action <> n.action "
            f"OR o.actor <> n.actor OR o.detail <> n.detail"
        )
        return [
            {"position": r["position"], "before": r["action"], "after": r["new_action"]}
            for r in rows
        ]
