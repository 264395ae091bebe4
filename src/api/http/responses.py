"""Response bodies, as the service answers them. Quantities and money are decimal strings.

A body the domain or a read model builds is validated into its model (`Out.of`), so the
OpenAPI document describes every answer. Fields a model does not name are kept, never dropped;
a `Sparse` model leaves out the optional keys its source did not have, as the source did.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class Out(BaseModel):
    model_config = ConfigDict(extra="allow")

    @classmethod
    def of(cls, value: Any) -> Self:
        return cls.model_validate(value)


class Sparse(Out):
    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        given = self.model_fields_set | set(self.__pydantic_extra__ or ())
        return {k: v for k, v in dumped.items() if k in given}


DecimalText = str  # a decimal number as text: "12.5", "0.0001", "-3"
TimeText = str  # RFC 3339 with an offset


class Page(Out):
    next_cursor: str | None = Field(description="null on the last page, else pass as ?cursor=")


class Tracked(Out):
    position: int = Field(description="the read model's position in the event log")
    lag: int = Field(description="stored events the read model has not applied yet")


# Usage ---------------------------------------------------------------------------------------


class UsageOut(Out):
    event_id: str
    status: Literal["accepted", "duplicate"]
    period: str | None
    treatment: Literal["on_time", "restated", "carried_forward"] | None
    received_at: TimeText = Field(description="for a duplicate, the first receipt's")


class UsageConflictOut(Out):
    """The first event stands; the receipt of this one, with the error fields of any refusal."""

    event_id: str
    status: Literal["conflict"]
    period: str | None
    treatment: str | None
    received_at: TimeText
    detail: str
    errors: list[ErrorItem]


class BatchItemOut(Out):
    event_id: str | None
    status: Literal["accepted", "duplicate", "conflict", "rejected"]
    period: str | None = None
    treatment: Literal["on_time", "restated", "carried_forward"] | None = None
    received_at: TimeText | None = Field(
        default=None, description="accepted: now; duplicate: the first receipt's"
    )
    detail: str | None = None
    field: str | None = None


class BatchOut(Out):
    results: list[BatchItemOut] = Field(description="one per event, in input order")


class CompensationOut(Sparse):
    compensation_id: str
    status: Literal["accepted", "duplicate"] = Field(description="duplicate: a retry, not again")
    meter: str
    quantity: DecimalText
    period: str | None
    event_id: str | None = None
    treatment: Literal["on_time", "restated", "carried_forward"] | None = Field(
        default=None, description="the first time only"
    )


class AdjustmentOut(Sparse):
    adjustment_id: str
    status: Literal["accepted", "duplicate"] = Field(description="duplicate: a retry, not again")
    meter: str
    quantity: DecimalText
    period: str | None
    treatment: Literal["on_time", "restated", "carried_forward"] | None = Field(
        default=None, description="the first time only"
    )


class MeterUsage(Out):
    meter: str
    quantity: DecimalText
    amount: DecimalText
    currency: str


class UsageReport(Page, Tracked):
    customer_id: str
    period: str
    items: list[MeterUsage]
    as_of: TimeText | None


# Customers and plans ---------------------------------------------------------------------------


class Subscription(Out):
    plan_id: str
    plan_version: int
    effective_from: str = Field(description="a period, YYYY-MM")


class ExternalIdOut(Out):
    system: Literal["stripe", "lago", "openmeter"]
    id: str


class CustomerOut(Out):
    customer_id: str
    name: str
    currency: str
    late_usage_policy: Literal["carry_forward", "restate"]
    subscriptions: list[Subscription]
    merged_into: str | None
    merged_at: TimeText | None
    external_ids: list[ExternalIdOut] = Field(
        default_factory=list, description="ids other billing systems know this customer by"
    )


class TierOut(Out):
    up_to: int | None
    unit_amount: DecimalText
    flat_amount: DecimalText


class ChargeOut(Sparse):
    meter: str
    aggregation: str
    model: Literal["per_unit", "graduated", "volume", "package"]
    included_quantity: DecimalText
    field: str | None = Field(default=None, description="unique_count: the property counted")
    unit_amount: DecimalText | None = Field(default=None, description="per_unit")
    tiers: list[TierOut] | None = Field(default=None, description="graduated and volume")
    package_size: int | None = Field(default=None, description="package")
    package_amount: DecimalText | None = Field(default=None, description="package")


class PlanVersionOut(Out):
    version: int
    currency: str
    charges: list[ChargeOut]


class PublishedPlanOut(PlanVersionOut):
    plan_id: str


class PlanOut(Out):
    plan_id: str
    versions: list[PlanVersionOut] = Field(description="in publication order")


class SubscriptionOut(Subscription):
    customer_id: str


class MergeOut(Out):
    customer_id: str
    into: str
    effective_at: TimeText


# Invoices -------------------------------------------------------------------------------------


class LineOut(Out):
    meter: str
    quantity: DecimalText
    amount: DecimalText
    kind: Literal["usage", "carried_forward"]
    usage_period: str


class InvoiceOut(Out):
    invoice_id: str
    customer_id: str
    period: str
    revision: int
    status: Literal["draft", "issued", "superseded"]
    currency: str
    lines: list[LineOut]
    total: DecimalText
    lineage_digest: str | None
    plan_id: str | None
    plan_version: int | None
    issued_at: TimeText | None


class TrackedInvoiceOut(InvoiceOut, Tracked):
    pass


class InvoiceSummary(Sparse):
    invoice_id: str
    customer_id: str
    period: str
    revision: int
    status: Literal["draft", "issued", "superseded"]
    total: DecimalText
    currency: str | None = None
    issued_at: TimeText | None = None


class InvoiceList(Page, Tracked):
    items: list[InvoiceSummary]


class RevisionOut(Out):
    revision: int
    status: Literal["draft", "issued", "superseded"]
    total: DecimalText
    delta: DecimalText = Field(description="the change in total from the revision before")
    issued_at: TimeText | None
    lineage_digest: str | None


class RevisionList(Page):
    items: list[RevisionOut]


class SourceRecord(Sparse):
    kind: Literal["usage", "compensation", "adjustment"]
    id: str
    quantity: DecimalText = Field(description="signed")
    occurred_at: TimeText
    received_at: TimeText
    emitter: str
    key_id: str
    customer_id: str | None = None
    event_id: str | None = Field(default=None, description="compensation: the event reversed")
    reason: str | None = None


class LineageOut(Page, Tracked):
    invoice_id: str
    line: int
    revision: int
    items: list[SourceRecord]


class ProofOut(Out):
    invoice_id: str
    revision: int
    scheme: str
    kind: str
    leaf_hash: str
    leaf_index: int
    leaf_count: int
    path: list[str] = Field(description="sibling hashes from the leaf to the root")
    root: str
    lineage_digest: str | None = Field(
        description="as issued (null for a draft); equal to root unless the log changed"
    )


# Operations -------------------------------------------------------------------------------------


class StoreHealth(Out):
    status: Literal["ok", "down"]
    position: int | None


class ProjectionHealth(Out):
    name: str
    version: int
    state: str
    position: int
    lag: int
    quarantined: int


class HealthOut(Out):
    status: Literal["ok", "degraded", "down"]
    store: StoreHealth
    position: int | None
    projections: list[ProjectionHealth]
    reasons: list[str]


class Finding(Sparse):
    check: str
    cause: str
    detail: str
    customer_id: str | None = None
    period: str | None = None
    meter: str | None = None
    invoice_id: str | None = None
    revision: int | None = None
    event_id: str | None = None
    position: int | None = None
    expected: str | None = None
    actual: str | None = None


class MeterComparison(Sparse):
    customer_id: str
    meter: str
    raw: DecimalText | None = None
    replayed: DecimalText | None = None
    projected: DecimalText | None = None
    issued: DecimalText | None = None
    amount: DecimalText | None = None
    issued_amount: DecimalText | None = None
    status: str | None = None


class ReconciliationOut(Out):
    ok: bool
    period: str
    customer_id: str | None
    position: int
    checked: dict[str, int]
    summary: dict[str, int] = Field(description="findings counted per cause")
    findings: list[Finding]
    meters: list[MeterComparison]
    seconds: float


class ProjectionOut(Out):
    name: str
    version: int
    key: str
    logic: int
    position: int
    lag: int
    state: str
    quarantined: int


class ProjectionList(Page):
    items: list[ProjectionOut]


class RebuildOut(Out):
    name: str
    version: int | None
    state: Literal["building", "live", "failed"]
    position: int
    target: int
    error: str | None


class QuarantinedOut(Out):
    name: str
    version: int
    key: str
    notification_id: int
    originator_id: str
    originator_version: int
    topic: str
    stage: str
    error_type: str
    error: str
    first_seen: TimeText
    last_seen: TimeText
    attempts: int


class QuarantineList(Page):
    items: list[QuarantinedOut]


class RetryOut(Out):
    name: str
    version: int
    key: str
    notification_id: int
    topic: str
    outcome: Literal["applied"]


class AuditEntry(Out):
    position: int
    at: TimeText
    action: str
    actor: str | None
    emitter: str | None
    key_id: str | None
    subject: str | None
    detail: dict[str, Any]


class AuditList(Page, Tracked):
    items: list[AuditEntry]


# Keys, emitters, grants ---------------------------------------------------------------------------


class KeyCreatedOut(Out):
    key_id: str
    key: str = Field(description="shown once; only its hash is stored")
    role: Literal["admin", "operator", "finance", "emitter"]
    name: str
    emitter_id: str | None


class KeyRevokedOut(Out):
    key_id: str
    role: str
    name: str
    revoked: Literal[True]


class EmitterOut(Out):
    emitter_id: str
    name: str


class GrantOut(Out):
    grant_id: str
    emitter_id: str
    customer_id: str = Field(description='a customer id, or "*"')
    meters: list[str]
    valid_from: TimeText | None
    valid_until: TimeText | None


class GrantRevokedOut(Out):
    grant_id: str
    emitter_id: str
    revoked: Literal[True]


# Errors ---------------------------------------------------------------------------------------


class ErrorItem(BaseModel):
    field: str | None = Field(description="the field at fault, when one is")
    reason: str
    code: str = Field(description="a stable code, e.g. unknown_customer, rate_limited")


class ErrorOut(BaseModel):
    detail: str = Field(description="a sentence naming the field")
    errors: list[ErrorItem]


UsageConflictOut.model_rebuild()
