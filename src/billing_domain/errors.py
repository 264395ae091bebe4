"""Domain errors: each names the input field it concerns and why it was refused."""

from __future__ import annotations


class BillingError(Exception):
    """Base of every refusal the domain can express."""

    code = "billing_error"
    field: str | None = None

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if field is not None:
            self.field = field


class InvalidInput(BillingError):
    code = "invalid_input"


class UnknownCustomer(InvalidInput):
    code = "unknown_customer"
    field = "customer_id"


class UnknownMeter(InvalidInput):
    code = "unknown_meter"
    field = "meter"


class UnknownPlan(InvalidInput):
    code = "unknown_plan"
    field = "plan_id"


class NegativeQuantity(InvalidInput):
    code = "negative_quantity"
    field = "quantity"


class OccurredInFuture(InvalidInput):
    code = "occurred_in_future"
    field = "occurred_at"


class OccurredBeforeHorizon(InvalidInput):
    code = "occurred_before_horizon"
    field = "occurred_at"


class CompensationExceedsUsage(InvalidInput):
    code = "compensation_exceeds_usage"
    field = "quantity"


class PeriodNotEnded(InvalidInput):
    code = "period_not_ended"
    field = "period"


class NotFound(BillingError):
    code = "not_found"


class UnknownUsageEvent(NotFound):
    code = "unknown_usage_event"
    field = "event_id"


class UnknownInvoice(NotFound):
    code = "unknown_invoice"
    field = "invoice_id"


class UnknownKey(NotFound):
    code = "unknown_key"
    field = "key_id"


class UnknownEmitter(NotFound):
    code = "unknown_emitter"
    field = "emitter"


class EmitterNotRegistered(InvalidInput):
    """An emitter named in a request body (not its path) that was never registered."""

    code = "unknown_emitter"
    field = "emitter_id"


# Named by a request's path, an unknown customer or plan is a resource that is not there (404);
# named in a body it is bad input (422). Each is still its Unknown* kind for callers that ask.
class CustomerNotFound(NotFound, UnknownCustomer):
    code = "unknown_customer"
    field = "customer_id"


class PlanNotFound(NotFound, UnknownPlan):
    code = "unknown_plan"
    field = "plan_id"


class MeterNotFound(NotFound, UnknownMeter):
    code = "unknown_meter"
    field = "meter"


class Conflict(BillingError):
    code = "conflict"


class CustomerExists(Conflict):
    code = "customer_exists"
    field = "customer_id"


class MeterConflict(Conflict):
    """A meter's aggregation and field are fixed once registered."""

    code = "meter_conflict"
    field = "aggregation"


class EmitterExists(Conflict):
    code = "emitter_exists"
    field = "emitter_id"


class EmitterOffboarded(Conflict):
    """An offboarded emitter gets no new keys or grants."""

    code = "emitter_offboarded"
    field = "emitter_id"


class KeyNotActive(Conflict):
    """A revoked, expired or already rotated key cannot be rotated."""

    code = "key_not_active"
    field = "key_id"


class IdempotencyConflict(Conflict):
    """The same idempotency key came back with a different payload; the first stands."""

    code = "idempotency_conflict"


class CustomerMerged(Conflict):
    code = "customer_merged"
    field = "customer_id"


class NotAuthenticated(BillingError):
    code = "not_authenticated"


class NotAuthorised(BillingError):
    code = "not_authorised"


class StoreContention(BillingError):
    """Concurrent writers kept winning the race for the same aggregates; safe to retry."""

    code = "store_contention"


class ExternalIdTaken(Conflict):
    """An external system's id names one customer at most."""

    code = "external_id_taken"
    field = "id"
