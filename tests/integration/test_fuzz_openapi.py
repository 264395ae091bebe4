"""One bad request must never hurt anyone: generated requests against every operation of the
served OpenAPI document, on every store, answer only statuses and bodies that document states,
and never a server error.

A customer on a plan exists and the caller holds the admin key, so valid examples (an event for
that customer) are recorded while generated ones probe every refusal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from tests.api_support import ADMIN, event, http, setup_acme

EXAMPLES = {
    "UsageIn": [event("fuzz-1", "2.5", occurred_at="2026-11-05T10:00:00Z")],
    "BatchIn": [{"events": [event("fuzz-2", "1"), event("fuzz-3", 7)]}],
    "CustomerIn": [{"customer_id": "fuzz-co", "name": "Fuzz Co"}],
    "SubscriptionIn": [{"plan_id": "std", "effective_from": "2026-12"}],
}
SEEN: list[tuple[str, int]] = []
PER_OPERATION = 10  # generated requests per operation and mode
PARAMETERS = {  # examples of path and query parameters that name what exists
    "customer_id": "acme",
    "plan_id": "std",
    "period": "2026-10",
    "name": "invoices",
    "event_id": "fuzz-1",
}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture
def served(settings: Any, clock: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # Generated keys fail authentication often; the throttle is tested elsewhere.
    monkeypatch.setenv("BILLING_AUTH_FAILURES_PER_MINUTE", "1000000")
    with http(settings, clock) as (client, _):
        setup_acme(client)
        document = client.get("/schema/openapi.json").json()
        for name, examples in EXAMPLES.items():
            document["components"]["schemas"][name]["examples"] = examples
        for operations in document["paths"].values():
            for operation in operations.values():
                for parameter in operation.get("parameters", []):
                    if parameter["name"] in PARAMETERS:
                        parameter["example"] = PARAMETERS[parameter["name"]]
        loaded = schemathesis.openapi.from_dict(document)
        loaded.app = client.app
        loaded.location = "/schema/openapi.json"
        yield client, loaded


def _cases(operation: Any) -> list[tuple[str, Any]]:
    """The operation's examples, then generated valid and invalid requests."""
    return [
        *((f"example {i}", s) for i, s in enumerate(operation.get_strategies_from_examples())),
        ("positive", operation.as_strategy(GenerationMode.POSITIVE)),
        ("negative", operation.as_strategy(GenerationMode.NEGATIVE)),
    ]


def _probe(strategy: Any, examples: int) -> None:
    @seed(20261124)
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def probe(case: Any) -> None:
        response = case.call_and_validate(headers=dict(ADMIN), checks=CHECKS)
        SEEN.append((case.operation.label, response.status_code))

    probe()


def test_no_request_gets_a_server_error_or_an_undocumented_answer(served: Any) -> None:
    client, schema = served
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    for operation in operations:
        for kind, strategy in _cases(operation):
            try:
                _probe(strategy, 1 if kind.startswith("example") else PER_OPERATION)
            except Unsatisfiable:
                assert kind == "negative"  # an operation without inputs has no invalid request
            except Exception as failure:  # every operation is probed; all failures are listed
                failures.append(f"{operation.label} ({kind}): {str(failure)[:2000]}")
    assert failures == [], "\n\n".join(failures)
    # The valid examples were recorded: the ingest path itself was exercised, not only refusals.
    usage = client.get("/v1/customers/acme/usage?period=2026-11", headers=ADMIN).json()
    assert {item["meter"]: item["quantity"] for item in usage["items"]}.get("api_calls") not in (
        None,
        "0",
    )
