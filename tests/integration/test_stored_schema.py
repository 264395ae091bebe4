"""Events stored by earlier versions of the code still load, on every store."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from billing_domain.ids import customer_uuid

ROOT = Path(__file__).resolve().parents[2]


def test_an_account_stored_before_late_usage_policies_still_loads(app):
    fixture = json.loads((ROOT / "tests/fixtures/customer_opened_v1.json").read_text())
    assert customer_uuid("legacy-co") == UUID(fixture["originator_id"])
    app.recorder.insert_events(
        [
            StoredEvent(
                originator_id=UUID(fixture["originator_id"]),
                originator_version=fixture["originator_version"],
                topic=fixture["topic"],
                state=fixture["state"].encode(),
            )
        ]
    )
    legacy = app.get_customer("legacy-co")
    assert (legacy.name, legacy.currency, legacy.late_usage_policy) == (
        "Legacy Co",
        "EUR",
        "carry_forward",
    )
    legacy_renamed = app.update_customer("legacy-co", name="Legacy Company")
    assert app.get_customer("legacy-co").name == legacy_renamed.name == "Legacy Company"
