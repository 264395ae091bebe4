"""The litestar application: thin controllers over the billing application and read models.

Writes call `services.app`; reads go to `services.read_models` (projections), after waiting
(at most READ_WAIT_SECONDS) for them to reach the newest event, so a client reads its own
writes. `?consistency=eventual` skips the wait.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Litestar, MediaType, Request, Response, delete, get, patch, post, put
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import ClientException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from pydantic import ValidationError

from api.bootstrap import Services
from api.console import ConsolePlugin
from api.http import schemas as s
from api.http.auth import principal, principal_async
from api.http.errors import HANDLERS, pydantic_items
from api.http.group_commit import GroupCommitter
from billing_domain import bounds
from billing_domain.application import check_period
from billing_domain.errors import InvalidInput, NotAuthorised, NotFound
from billing_domain.identity import Principal
from billing_domain.usage import UsageInput, iso
from projections.reconciliation import reconcile

READ_WAIT_SECONDS = 5.0
MAX_BODY_BYTES = bounds.MAX_BODY_BYTES
_decoder = msgspec.json.Decoder(float_hook=bounds.json_number)
_SPACE_BEFORE_COLON = re.compile(rb'"\s+:')
_CONTAINERS = (dict, list)  # what the decoder builds for objects and arrays


class ExactRequest(Request[Any, Any, State]):
    """JSON numbers become Decimal, never float: quantities stay exact from the edge. A body
    nesting deeper than MAX_JSON_DEPTH, or repeating a key in one object, is refused."""

    async def json(self) -> Any:
        body = await self.body()
        return decode_body(body or b"null")


def decode_body(body: bytes) -> Any:
    try:
        decoded = _decoder.decode(body)
    except RecursionError:
        raise _too_deep() from None
    except msgspec.DecodeError as error:
        raise ClientException(f"malformed JSON: {error}") from None
    keys = _count_keys(decoded)
    # A key is a string followed by a colon; a quote inside a string is escaped, so counting
    # '":' counts the keys exactly unless the body has '\":' or space before a colon.
    exact = body.find(b'\\":') < 0 and _SPACE_BEFORE_COLON.search(body) is None
    if not exact or body.count(b'":') != keys:
        _refuse_duplicate_keys(body)
    return decoded


def _too_deep() -> InvalidInput:
    return InvalidInput(f"must nest at most {bounds.MAX_JSON_DEPTH} levels", field="body")


def _count_keys(root: Any) -> int:
    """Keys in every object of a decoded body, walked level by level (no recursion); refuses
    a body nesting deeper than MAX_JSON_DEPTH."""
    keys = 0
    level = [root] if type(root) in _CONTAINERS else []
    depth = 1
    while level:
        if depth > bounds.MAX_JSON_DEPTH:
            raise _too_deep()
        below: list[Any] = []
        for node in level:
            if type(node) is dict:
                keys += len(node)
                below += [child for child in node.values() if type(child) in _CONTAINERS]
            else:
                below += [child for child in node if type(child) in _CONTAINERS]
        level = below
        depth += 1
    return keys


def _refuse_duplicate_keys(body: bytes) -> None:
    """The exact check, for the rare body the count cannot vouch for (depth already bounded)."""

    def pairs(items: list[tuple[str, Any]]) -> None:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                shown = key if len(key) <= bounds.MAX_PROPERTY_KEY_LENGTH else key[:64] + "..."
                raise InvalidInput("appears twice in one object", field=shown)
            seen.add(key)

    json.loads(body, object_pairs_hook=pairs, parse_float=len, parse_int=len, parse_constant=len)


def _services(request: Request[Any, Any, Any]) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def _fresh(services: Services, consistency: str | None) -> None:
    if consistency != "eventual":
        models = services.read_models
        models.wait(models.max_position(), timeout=READ_WAIT_SECONDS)


def _usage_input(data: s.UsageIn) -> UsageInput:
    return UsageInput(
        data.event_id,
        data.customer_id,
        data.meter,
        data.quantity,
        data.occurred_at,
        data.properties,
    )


def _family(name: str) -> dict[str, Any]:
    return {
        "opt": {"family": name},
        "dependencies": {"caller": Provide(principal, sync_to_thread=True)},
        "security": [{"BearerAuth": []}],
    }


# Health -------------------------------------------------------------------------------------


@get("/health", tags=["operations"], sync_to_thread=True, summary="Store and projections health")
def health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """No key needed. `ok`; `degraded` (200) with `reasons` when a projection has quarantined
    notifications, lags too far or its runner failed; `down` (503) when the store does not
    answer within a short timeout."""
    report = _services(request).read_models.health()
    code = 503 if report["status"] == "down" else 200
    return Response(report, status_code=code, media_type=MediaType.JSON)


# Usage --------------------------------------------------------------------------------------


@post(
    "/v1/usage",
    status_code=202,
    tags=["usage"],
    opt={"family": "ingest"},
    dependencies={"caller": Provide(principal_async)},
    security=[{"BearerAuth": []}],
    summary="Record one usage event",
)
async def ingest_one(
    request: Request[Any, Any, Any], data: s.UsageIn, caller: Principal
) -> Response[Any]:
    """202 accepted or duplicate; 409 conflict (the first stands); 422 names the field.
    Concurrent requests share one durable commit; the answer waits for it."""
    services = _services(request)
    result = await request.app.state.committer.record_async(_usage_input(data), caller)
    if result.status == "rejected":
        error = (NotAuthorised if result.code == "not_authorised" else InvalidInput)(
            result.detail or "rejected", field=result.field
        )
        error.code = result.code or error.code
        raise error
    body = {
        "event_id": result.event_id,
        "status": result.status,
        "period": result.period,
        "treatment": result.treatment,
        "received_at": result.received_at or iso(datetime.now(UTC)),
    }
    status = 409 if result.status == "conflict" else 202
    if result.status == "conflict":
        body["detail"] = result.detail
    return Response(
        body,
        status_code=status,
        media_type=MediaType.JSON,
        headers={"X-Billing-Position": str(services.app.last_position)},
    )


@post(
    "/v1/usage/batch",
    status_code=200,
    tags=["usage"],
    sync_to_thread=True,
    **_family("ingest"),
    summary="Record up to 5,000 usage events atomically",
)
def ingest_batch(request: Request[Any, Any, Any], data: s.BatchIn, caller: Principal) -> s.BatchOut:
    """Per-event results in input order; the accepted events are committed together."""
    parsed: list[UsageInput] = []
    slots: list[int | s.BatchItemOut] = []
    for index, raw in enumerate(data.events):
        try:
            item = s.UsageIn.model_validate(raw)
        except ValidationError as error:
            first = pydantic_items(error.errors(include_url=False))[0]
            event_id = raw.get("event_id") if isinstance(raw, dict) else None
            slots.append(
                s.BatchItemOut(
                    event_id=event_id if isinstance(event_id, str) else None,
                    status="rejected",
                    detail=f"events[{index}].{first['field']}: {first['reason']}",
                    field=first["field"],
                )
            )
            continue
        slots.append(len(parsed))
        parsed.append(_usage_input(item))
    results = _services(request).app.record_usage(parsed, caller) if parsed else []
    out = []
    for slot in slots:
        if isinstance(slot, int):
            r = results[slot]
            out.append(
                s.BatchItemOut(
                    event_id=r.event_id,
                    status=r.status,  # type: ignore[arg-type]
                    period=r.period,
                    treatment=r.treatment,
                    detail=r.detail,
                    field=r.field,
                )
            )
        else:
            out.append(slot)
    return s.BatchOut(results=out)


@post(
    "/v1/customers/{customer_id:str}/usage/{event_id:str}/compensations",
    status_code=201,
    tags=["usage"],
    sync_to_thread=True,
    **_family("ingest"),
    summary="Reverse all or part of a recorded event",
)
def compensate(
    request: Request[Any, Any, Any],
    customer_id: str,
    event_id: str,
    data: s.CompensationIn,
    caller: Principal,
) -> dict[str, Any]:
    """Idempotent by compensation_id; more than was recorded is 422."""
    return _services(request).app.compensate(
        customer_id, event_id, data.compensation_id, data.quantity, data.reason, caller
    )


@post(
    "/v1/customers/{customer_id:str}/adjustments",
    status_code=201,
    tags=["usage"],
    sync_to_thread=True,
    **_family("manage"),
    summary="A manual signed correction",
)
def adjust(
    request: Request[Any, Any, Any], customer_id: str, data: s.AdjustmentIn, caller: Principal
) -> dict[str, Any]:
    """Kept with the actor's key and reason; idempotent by adjustment_id."""
    return _services(request).app.adjust(
        customer_id,
        data.adjustment_id,
        data.meter,
        data.quantity,
        data.occurred_at,
        data.reason,
        caller,
    )


@get(
    "/v1/customers/{customer_id:str}/usage",
    tags=["usage"],
    sync_to_thread=True,
    **_family("read"),
    summary="Usage and running amount per meter for a period",
)
def usage(
    request: Request[Any, Any, Any],
    customer_id: str,
    period: str,
    caller: Principal,
    as_of: str | None = None,
    consistency: str | None = None,
) -> dict[str, Any]:
    """Items per meter `{meter, quantity, amount}` with the projection's position and lag."""
    services = _services(request)
    check_period(period)
    moment = _time(as_of, "as_of")
    services.app.get_customer(customer_id)
    _fresh(services, consistency)
    return {"next_cursor": None, **services.read_models.usage(customer_id, period, as_of=moment)}


def _time(text: str | None, field: str) -> datetime | None:
    """A time query parameter: RFC 3339 with an offset, as every time input."""
    return None if text is None else bounds.parse_time(text, field)


# Customers, plans, subscriptions --------------------------------------------------------------


def _customer_view(customer: Any) -> dict[str, Any]:
    return {
        "customer_id": customer.customer_id,
        "name": customer.name,
        "currency": customer.currency,
        "late_usage_policy": customer.late_usage_policy,
        "subscriptions": customer.subscriptions,
        "merged_into": customer.merged_into,
        "merged_at": iso(customer.merged_at) if customer.merged_at else None,
    }


@post(
    "/v1/customers",
    status_code=201,
    tags=["customers"],
    sync_to_thread=True,
    **_family("manage"),
    summary="Open a customer account",
)
def open_customer(
    request: Request[Any, Any, Any], data: s.CustomerIn, caller: Principal
) -> dict[str, Any]:
    """409 when the customer_id exists."""
    customer = _services(request).app.open_customer(
        data.customer_id, data.name, data.currency, data.late_usage_policy, caller
    )
    return _customer_view(customer)


@patch(
    "/v1/customers/{customer_id:str}",
    tags=["customers"],
    sync_to_thread=True,
    **_family("manage"),
    summary="Rename or change the late-usage policy",
)
def update_customer(
    request: Request[Any, Any, Any], customer_id: str, data: s.CustomerPatch, caller: Principal
) -> dict[str, Any]:
    """Attribution never changes: usage stays on the customer_id."""
    customer = _services(request).app.update_customer(
        customer_id, name=data.name, late_usage_policy=data.late_usage_policy, principal=caller
    )
    return _customer_view(customer)


@get(
    "/v1/customers/{customer_id:str}",
    tags=["customers"],
    sync_to_thread=True,
    **_family("read"),
    summary="A customer account",
)
def get_customer(
    request: Request[Any, Any, Any], customer_id: str, caller: Principal
) -> dict[str, Any]:
    """The account with its subscriptions and merge."""
    return _customer_view(_services(request).app.get_customer(customer_id))


@post(
    "/v1/plans",
    status_code=201,
    tags=["plans"],
    sync_to_thread=True,
    **_family("manage"),
    summary="Publish a plan (again: a new version)",
)
def publish_plan(
    request: Request[Any, Any, Any], data: s.PlanIn, caller: Principal
) -> dict[str, Any]:
    """Existing subscriptions keep the version they were given."""
    app = _services(request).app
    plan_id, version = app.publish_plan(data.plan_id, data.currency, data.charges, caller)
    published = app.get_plan(plan_id).version_data(version)
    return {"plan_id": plan_id, "version": version, **published}


@get(
    "/v1/plans/{plan_id:str}",
    tags=["plans"],
    sync_to_thread=True,
    **_family("read"),
    summary="A plan with every published version",
)
def get_plan(request: Request[Any, Any, Any], plan_id: str, caller: Principal) -> dict[str, Any]:
    """Versions in publication order."""
    plan = _services(request).app.get_plan(plan_id)
    return {"plan_id": plan.plan_id, "versions": plan.versions}


@put(
    "/v1/customers/{customer_id:str}/subscription",
    status_code=200,
    tags=["customers"],
    sync_to_thread=True,
    **_family("manage"),
    summary="Subscribe or migrate to a plan",
)
def subscribe(
    request: Request[Any, Any, Any], customer_id: str, data: s.SubscriptionIn, caller: Principal
) -> dict[str, Any]:
    """From a period start; a migration is an event and never re-attributes usage."""
    return _services(request).app.subscribe(
        customer_id, data.plan_id, data.effective_from, caller, plan_version=data.plan_version
    )


@post(
    "/v1/customers/{customer_id:str}/merge",
    status_code=200,
    tags=["customers"],
    sync_to_thread=True,
    **_family("manage"),
    summary="Merge a customer into another",
)
def merge(
    request: Request[Any, Any, Any], customer_id: str, data: s.MergeIn, caller: Principal
) -> dict[str, Any]:
    """Usage at or after effective_at is billed to `into`; both ids stay on every record."""
    return _services(request).app.merge_customer(customer_id, data.into, data.effective_at, caller)


# Periods and invoices --------------------------------------------------------------------------


@post(
    "/v1/customers/{customer_id:str}/periods/{period:str}/close",
    status_code=200,
    tags=["invoices"],
    sync_to_thread=True,
    **_family("close"),
    summary="Close a period and issue its invoice",
)
def close_period(
    request: Request[Any, Any, Any], customer_id: str, period: str, caller: Principal
) -> dict[str, Any]:
    """Revision 1 is issued; closing twice changes nothing."""
    return _services(request).app.close_period(customer_id, period, caller)


@get(
    "/v1/invoices",
    tags=["invoices"],
    sync_to_thread=True,
    **_family("read"),
    summary="Invoices: drafts, issued and superseded revisions",
)
def list_invoices(
    request: Request[Any, Any, Any],
    caller: Principal,
    customer_id: str | None = None,
    period: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
    as_of: str | None = None,
    consistency: str | None = None,
) -> dict[str, Any]:
    """`{items, next_cursor}`, newest first within a customer."""
    services = _services(request)
    if period is not None:
        check_period(period)
    if not 1 <= limit <= 1000:
        raise InvalidInput("must be between 1 and 1000", field="limit")
    moment = _time(as_of, "as_of")
    _fresh(services, consistency)
    return services.read_models.invoices(
        customer_id=customer_id, period=period, cursor=cursor, limit=limit, as_of=moment
    )


@get(
    "/v1/invoices/{invoice_id:str}",
    tags=["invoices"],
    sync_to_thread=True,
    **_family("read"),
    summary="One invoice with its lines",
)
def get_invoice(
    request: Request[Any, Any, Any],
    invoice_id: str,
    caller: Principal,
    revision: int | None = None,
    as_of: str | None = None,
    consistency: str | None = None,
) -> dict[str, Any]:
    """The latest revision unless `revision` is given; a draft for an open period."""
    services = _services(request)
    moment = _time(as_of, "as_of")
    _fresh(services, consistency)
    found = services.read_models.invoice(invoice_id, revision=revision, as_of=moment)
    if found is None:
        raise NotFound(f"no invoice {invoice_id!r}", field="invoice_id")
    return found  # type: ignore[no-any-return]


@get(
    "/v1/invoices/{invoice_id:str}/revisions",
    tags=["invoices"],
    sync_to_thread=True,
    **_family("read"),
    summary="Every revision with its total and delta",
)
def invoice_revisions(
    request: Request[Any, Any, Any],
    invoice_id: str,
    caller: Principal,
    consistency: str | None = None,
) -> dict[str, Any]:
    """Delta is the change in total from the revision before."""
    services = _services(request)
    _fresh(services, consistency)
    found = services.read_models.revisions(invoice_id)
    if found is None:
        raise NotFound(f"no invoice {invoice_id!r}", field="invoice_id")
    return {"items": found, "next_cursor": None}


@get(
    "/v1/invoices/{invoice_id:str}/lineage",
    tags=["invoices"],
    sync_to_thread=True,
    **_family("read"),
    summary="The source records of one invoice line, paged",
)
def invoice_lineage(
    request: Request[Any, Any, Any],
    invoice_id: str,
    line: int,
    caller: Principal,
    cursor: str | None = None,
    limit: int = 100,
    consistency: str | None = None,
) -> dict[str, Any]:
    """Usage events, compensations and adjustments with signed quantities."""
    services = _services(request)
    if line < 0:
        raise InvalidInput("must be 0 or more", field="line")
    if not 1 <= limit <= 1000:
        raise InvalidInput("must be between 1 and 1000", field="limit")
    _fresh(services, consistency)
    found = services.read_models.lineage(invoice_id, line, cursor=cursor, limit=limit)
    if found is None:
        raise NotFound(f"no line {line} on invoice {invoice_id!r}", field="line")
    return found  # type: ignore[no-any-return]


@get(
    "/v1/invoices/{invoice_id:str}/lineage/proof",
    tags=["invoices"],
    sync_to_thread=True,
    **_family("read"),
    summary="Inclusion proof of one source record in a revision's lineage digest",
)
def invoice_lineage_proof(
    request: Request[Any, Any, Any],
    invoice_id: str,
    event_id: str,
    caller: Principal,
    revision: int | None = None,
) -> dict[str, Any]:
    """The record's leaf and audit path to the Merkle root (409 for sum-scheme revisions)."""
    from projections.lineage import inclusion_proof

    invoice = _services(request).read_models.invoice(invoice_id)
    if invoice is None:
        raise NotFound(f"no invoice {invoice_id!r}", field="invoice_id")
    return inclusion_proof(
        _services(request).app,
        invoice["customer_id"],
        invoice["period"],
        invoice_id,
        event_id,
        revision,
    )


# Operations -------------------------------------------------------------------------------------


@get(
    "/v1/reconciliation",
    tags=["operations"],
    sync_to_thread=True,
    **_family("reconcile"),
    summary="Raw events, replay, projections and issued invoices compared",
)
def reconciliation(
    request: Request[Any, Any, Any], period: str, caller: Principal, customer_id: str | None = None
) -> dict[str, Any]:
    """`ok` is false when anything disagrees; every mismatch is listed with its cause
    (tampering, partial_write, duplicate_event_id, clock_drift, schema_drift, logic_drift,
    projection_behind, unexplained), and `meters` compares each customer's meters across the
    raw events, the replay, the read models and the issued invoice."""
    services = _services(request)
    check_period(period)
    return reconcile(services, period=period, customer_id=customer_id)


@get(
    "/v1/projections",
    tags=["operations"],
    sync_to_thread=True,
    **_family("projections"),
    summary="Projection versions, positions and lags",
)
def projections_status(request: Request[Any, Any, Any], caller: Principal) -> dict[str, Any]:
    """Each projection's name, version, position and lag."""
    return {"items": _services(request).read_models.status(), "next_cursor": None}


@post(
    "/v1/projections/{name:str}/rebuild",
    status_code=202,
    tags=["operations"],
    sync_to_thread=True,
    **_family("projections"),
    summary="Rebuild a projection from the log",
)
def rebuild(request: Request[Any, Any, Any], name: str, caller: Principal) -> dict[str, Any]:
    """Builds the next version beside the live one, then switches reads to it."""
    return _services(request).read_models.start_rebuild(name)  # type: ignore[no-any-return]


# Projection quarantine: events a projection set aside instead of stopping on them -----------


@get(
    "/v1/projections/{name:str}/quarantine",
    tags=["operations"],
    sync_to_thread=True,
    **_family("reconcile"),
    summary="Stored events a projection could not apply",
)
def projection_quarantine(
    request: Request[Any, Any, Any], name: str, caller: Principal
) -> dict[str, Any]:
    """The notifications a projection set aside, oldest first, with the error of each."""
    return {"items": _services(request).read_models.quarantined(name), "next_cursor": None}


@post(
    "/v1/projections/{name:str}/quarantine/{notification_id:int}/retry",
    status_code=200,
    tags=["operations"],
    sync_to_thread=True,
    **_family("projections"),
    summary="Apply a quarantined event again",
)
def retry_quarantined(
    request: Request[Any, Any, Any], name: str, notification_id: int, caller: Principal
) -> dict[str, Any]:
    """Applied: 200 and it leaves the quarantine. Fails again: 409 and it stays, with the
    new error."""
    return _services(request).read_models.retry(name, notification_id)  # type: ignore[no-any-return]


@get(
    "/v1/audit",
    tags=["operations"],
    sync_to_thread=True,
    **_family("audit"),
    summary="Who did what, from the log",
)
def audit(
    request: Request[Any, Any, Any],
    caller: Principal,
    since: str | None = None,
    until: str | None = None,
    actor: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
    consistency: str | None = None,
) -> dict[str, Any]:
    """Keys, grants, plans, subscriptions, merges, corrections, closes, refusals."""
    services = _services(request)
    start, end = _time(since, "since"), _time(until, "until")
    if not 1 <= limit <= 1000:
        raise InvalidInput("must be between 1 and 1000", field="limit")
    _fresh(services, consistency)
    return services.read_models.audit(
        since=start, until=end, actor=actor, cursor=cursor, limit=limit
    )


# Keys, emitters, grants ----------------------------------------------------------------------------


@post(
    "/v1/keys",
    status_code=201,
    tags=["keys"],
    sync_to_thread=True,
    **_family("manage"),
    summary="Create a key (shown once)",
)
def create_key(request: Request[Any, Any, Any], data: s.KeyIn, caller: Principal) -> dict[str, Any]:
    """Only the key's hash is stored; the response is the only time the key is shown."""
    key_id, key = _services(request).app.create_key(data.role, data.name, data.emitter_id, caller)
    return {
        "key_id": key_id,
        "key": key,
        "role": data.role,
        "name": data.name,
        "emitter_id": data.emitter_id,
    }


@delete(
    "/v1/keys/{key_id:str}",
    status_code=200,
    tags=["keys"],
    sync_to_thread=True,
    **_family("manage"),
    summary="Revoke a key at once",
)
def revoke_key(request: Request[Any, Any, Any], key_id: str, caller: Principal) -> dict[str, Any]:
    """The key authenticates nothing afterwards."""
    return _services(request).app.revoke_key(key_id, caller)


@post(
    "/v1/emitters",
    status_code=201,
    tags=["keys"],
    sync_to_thread=True,
    **_family("manage"),
    summary="Register an emitter (a service that sends usage)",
)
def register_emitter(
    request: Request[Any, Any, Any], data: s.EmitterIn, caller: Principal
) -> dict[str, Any]:
    """Its keys are created with POST /v1/keys {role: emitter, emitter_id}."""
    emitter = _services(request).app.register_emitter(data.emitter_id, data.name, caller)
    return {"emitter_id": emitter.emitter_id, "name": emitter.name}


@post(
    "/v1/emitters/{emitter_id:str}/grants",
    status_code=201,
    tags=["keys"],
    sync_to_thread=True,
    **_family("manage"),
    summary="Allow an emitter a customer and meters",
)
def grant(
    request: Request[Any, Any, Any], emitter_id: str, data: s.GrantIn, caller: Principal
) -> dict[str, Any]:
    """Delegated access is a grant on another customer, with its own validity."""
    return _services(request).app.grant(
        emitter_id, data.customer_id, data.meters, data.valid_from, data.valid_until, caller
    )


@delete(
    "/v1/emitters/{emitter_id:str}/grants/{grant_id:str}",
    status_code=200,
    tags=["keys"],
    sync_to_thread=True,
    **_family("manage"),
    summary="Withdraw a grant",
)
def revoke_grant(
    request: Request[Any, Any, Any], emitter_id: str, grant_id: str, caller: Principal
) -> dict[str, Any]:
    """Takes effect at once."""
    return _services(request).app.revoke_grant(emitter_id, grant_id, caller)


ROUTES = [
    health,
    ingest_one,
    ingest_batch,
    compensate,
    adjust,
    usage,
    open_customer,
    update_customer,
    get_customer,
    publish_plan,
    get_plan,
    subscribe,
    merge,
    close_period,
    list_invoices,
    get_invoice,
    invoice_revisions,
    invoice_lineage,
    invoice_lineage_proof,
    reconciliation,
    projections_status,
    rebuild,
    audit,
    create_key,
    revoke_key,
    register_emitter,
    grant,
    revoke_grant,
    projection_quarantine,
    retry_quarantined,
]


def create_app(services: Services, *, background: bool = True) -> Litestar:
    """The HTTP application over built services; `background` keeps projections current."""
    committer = GroupCommitter(services.app)

    def start() -> None:
        if background:
            services.start_background()

    def stop() -> None:
        committer.close()

    return Litestar(
        route_handlers=ROUTES,
        state=State({"services": services, "committer": committer}),
        exception_handlers=HANDLERS,
        request_class=ExactRequest,
        request_max_body_size=MAX_BODY_BYTES,
        on_startup=[start],
        on_shutdown=[stop],
        openapi_config=OpenAPIConfig(
            title="billing",
            version="1.0.0",
            description=(
                "Event-sourced metered billing. Every request but GET /health sends "
                "`Authorization: Bearer <key>`. Quantities and money are decimal "
                "strings; errors carry `detail` naming the field."
            ),
            components=Components(
                security_schemes={
                    "BearerAuth": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="a key from POST /v1/keys, "
                        "`billing keys create` or "
                        "BILLING_ADMIN_KEY",
                    )
                }
            ),
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        debug=False,
        plugins=[ConsolePlugin()],
    )
