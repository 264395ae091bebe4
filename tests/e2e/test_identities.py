"""Non-human identities with a lifecycle: owners, expiry, rotation, offboarding, last use and
activity, on both stores."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from eventsourcing.persistence import StoredEvent

from billing_domain.errors import NotAuthenticated
from billing_domain.settings import Settings
from billing_domain.usage import UsageInput, iso
from tests.api_support import ADMIN, bearer, event, http, setup_acme
from tests.conftest import Clock
from tests.e2e.test_workers_and_auth_cache import admin, refused_within, serving, setup
from tests.e2e.test_workers_and_auth_cache import usage as live_usage

FIXTURES = Path(__file__).parents[1] / "fixtures"
NOW_EVENT = "2026-11-24T11:00:00Z"


def usage(event_id: str, quantity: Any = "1", **overrides: Any) -> dict[str, Any]:
    return event(event_id, quantity, occurred_at=NOW_EVENT, **overrides)


def emitter_with_key(client: Any, emitter_id: str = "svc", **key: Any) -> dict[str, Any]:
    assert (
        client.post(
            "/v1/emitters",
            json={"emitter_id": emitter_id, "name": "Service", "owner": "payments team"},
            headers=ADMIN,
        ).status_code
        == 201
    )
    assert (
        client.post(
            f"/v1/emitters/{emitter_id}/grants",
            json={"customer_id": "acme", "meters": ["api_calls"]},
            headers=ADMIN,
        ).status_code
        == 201
    )
    created = client.post(
        "/v1/keys",
        json={"role": "emitter", "name": f"{emitter_id} key", "emitter_id": emitter_id, **key},
        headers=ADMIN,
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


def billed_quantity(client: Any, period: str = "2026-11") -> Decimal:
    items = client.get(f"/v1/customers/acme/usage?period={period}", headers=ADMIN).json()["items"]
    return sum((Decimal(i["quantity"]) for i in items if i["meter"] == "api_calls"), Decimal(0))


# Owners ----------------------------------------------------------------------------------------


def test_an_emitter_shows_its_owner_wherever_it_is_listed(settings: Settings, clock: Clock) -> None:
    with http(settings, clock) as (client, _):
        client.post("/v1/emitters", json={"emitter_id": "a", "name": "A"}, headers=ADMIN)
        made = client.post(
            "/v1/emitters", json={"emitter_id": "b", "name": "B", "owner": "billing"}, headers=ADMIN
        )
        assert made.json() == {"emitter_id": "b", "name": "B", "owner": "billing"}
        patched = client.patch("/v1/emitters/a", json={"owner": "data team"}, headers=ADMIN)
        assert patched.status_code == 200 and patched.json()["owner"] == "data team"
        page = client.get("/v1/emitters?limit=1", headers=ADMIN).json()
        assert [(e["emitter_id"], e["owner"]) for e in page["items"]] == [("a", "data team")]
        rest = client.get(f"/v1/emitters?cursor={page['next_cursor']}", headers=ADMIN).json()
        assert [(e["emitter_id"], e["owner"]) for e in rest["items"]] == [("b", "billing")]
        assert rest["next_cursor"] is None
        assert client.get("/v1/emitters/b", headers=ADMIN).json()["owner"] == "billing"
        cleared = client.patch("/v1/emitters/b", json={"owner": None}, headers=ADMIN)
        assert cleared.json()["owner"] is None
        assert (
            client.patch("/v1/emitters/zz", json={"owner": "x"}, headers=ADMIN).status_code == 404
        )


def test_where_owners_are_required_an_emitter_without_one_is_refused(
    settings: Settings, clock: Clock
) -> None:
    with http(replace(settings, require_owner=True), clock) as (client, _):
        refused = client.post("/v1/emitters", json={"emitter_id": "a", "name": "A"}, headers=ADMIN)
        assert refused.status_code == 422 and "owner" in refused.json()["detail"]
        body = {"emitter_id": "a", "name": "A", "owner": "ops"}
        assert client.post("/v1/emitters", json=body, headers=ADMIN).status_code == 201
        cleared = client.patch("/v1/emitters/a", json={"owner": None}, headers=ADMIN)
        assert cleared.status_code == 422


# Expiry ----------------------------------------------------------------------------------------


def test_a_key_is_refused_from_the_second_it_expires_and_the_refusal_is_audited(
    settings: Settings, clock: Clock
) -> None:
    with http(settings, clock) as (client, services):
        expires = clock.now + timedelta(seconds=30)
        created = client.post(
            "/v1/keys",
            json={"role": "finance", "name": "auditor", "expires_at": iso(expires)},
            headers=ADMIN,
        ).json()
        assert created["expires_at"] == iso(expires)
        key = bearer(created["key"])
        assert client.get("/v1/emitters", headers=key).status_code == 200  # now cached
        clock.now = expires - timedelta(seconds=1)
        assert client.get("/v1/emitters", headers=key).status_code == 200
        clock.now = expires
        refused = client.get("/v1/emitters", headers=key)
        assert refused.status_code == 401 and refused.json()["detail"].endswith("expired key")
        services.app.refusals.flush()
        audit = client.get("/v1/audit?limit=1000", headers=ADMIN).json()["items"]
        assert any(
            a["action"] == "request.refused"
            and a["key_id"] == created["key_id"]
            and a["detail"]["reason"] == "expired key"
            for a in audit
        )
        listed = client.get("/v1/keys", headers=ADMIN).json()["items"]
        assert [k["status"] for k in listed if k["key_id"] == created["key_id"]] == ["expired"]


def test_a_lifetime_cap_refuses_keys_without_expiry_or_longer_than_the_cap(
    settings: Settings, clock: Clock
) -> None:
    with http(replace(settings, key_max_days=30), clock) as (client, _):
        missing = client.post("/v1/keys", json={"role": "finance", "name": "f"}, headers=ADMIN)
        assert missing.status_code == 422 and "expires_at" in missing.json()["detail"]
        too_long = iso(clock.now + timedelta(days=30, seconds=1))
        body = {"role": "finance", "name": "f", "expires_at": too_long}
        assert client.post("/v1/keys", json=body, headers=ADMIN).status_code == 422
        body["expires_at"] = iso(clock.now - timedelta(seconds=1))
        assert client.post("/v1/keys", json=body, headers=ADMIN).status_code == 422
        body["expires_at"] = iso(clock.now + timedelta(days=30))
        assert client.post("/v1/keys", json=body, headers=ADMIN).status_code == 201


# Rotation --------------------------------------------------------------------------------------


def test_rotation_keeps_both_keys_working_for_the_overlap_in_every_process(
    settings: Settings, clock: Clock
) -> None:
    with http(settings, clock) as (one, services), http(settings, clock) as (two, _):
        setup_acme(one)
        old = emitter_with_key(one)
        assert (
            two.post("/v1/usage", json=usage("r-1"), headers=bearer(old["key"])).status_code == 202
        )
        rotated = one.post(
            f"/v1/keys/{old['key_id']}/rotate", json={"overlap_seconds": 60}, headers=ADMIN
        )
        assert rotated.status_code == 201, rotated.text
        new = rotated.json()
        assert new["replaces"] == old["key_id"] and new["key_id"] != old["key_id"]
        assert new["old_key_expires_at"] == iso(clock.now + timedelta(seconds=60))
        assert (new["role"], new["emitter_id"], new["name"]) == ("emitter", "svc", "svc key")
        for client in (one, two):
            for n, key in enumerate((old["key"], new["key"])):
                sent = client.post(
                    "/v1/usage", json=usage(f"r-{id(client)}-{n}"), headers=bearer(key)
                )
                assert sent.status_code == 202
        clock.advance(seconds=60)
        time.sleep(1.0)  # the other process's key cache polls the log within a second
        for client in (one, two):
            late = client.post("/v1/usage", json=usage("r-late"), headers=bearer(old["key"]))
            assert late.status_code == 401 and late.json()["detail"].endswith("expired key")
            assert (
                client.post(
                    "/v1/usage", json=usage(f"r-new-{id(client)}"), headers=bearer(new["key"])
                ).status_code
                == 202
            )
        assert billed_quantity(one) == 7  # one before, four in the overlap, two after
        again = one.post(f"/v1/keys/{old['key_id']}/rotate", headers=ADMIN)
        assert again.status_code == 409
        one.delete(f"/v1/keys/{new['key_id']}", headers=ADMIN)
        assert one.post(f"/v1/keys/{new['key_id']}/rotate", headers=ADMIN).status_code == 409
        assert one.post("/v1/keys/0123456789abcdef/rotate", headers=ADMIN).status_code == 404
        listed = {k["key_id"]: k for k in one.get("/v1/keys", headers=ADMIN).json()["items"]}
        assert listed[new["key_id"]]["replaces"] == old["key_id"]
        assert listed[old["key_id"]]["replaced_by"] == new["key_id"]
        assert services.app.key(old["key_id"]).replaced_by == new["key_id"]


def test_a_key_rotated_before_its_overlap_default_keeps_a_day(
    settings: Settings, clock: Clock
) -> None:
    with http(settings, clock) as (client, _):
        created = client.post("/v1/keys", json={"role": "finance", "name": "f"}, headers=ADMIN)
        rotated = client.post(f"/v1/keys/{created.json()['key_id']}/rotate", headers=ADMIN)
        assert rotated.json()["old_key_expires_at"] == iso(clock.now + timedelta(days=1))


# Offboarding -----------------------------------------------------------------------------------


def test_offboarding_under_running_ingest_loses_nothing_sent_before(
    settings: Settings, clock: Clock
) -> None:
    with http(settings, clock) as (client, services):
        setup_acme(client)
        first = emitter_with_key(client)
        second = client.post(
            "/v1/keys",
            json={"role": "emitter", "name": "spare", "emitter_id": "svc"},
            headers=ADMIN,
        ).json()
        app = services.app
        accepted: list[str] = []
        refused: list[str] = []
        stop = threading.Event()

        def ingest() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                item = UsageInput(f"o-{n}", "acme", "api_calls", Decimal(1), clock.now, {})
                try:
                    principal = app.authenticate(first["key"])
                except NotAuthenticated:
                    refused.append(item.event_id)
                    continue
                if app.record_usage([item], principal)[0].status == "accepted":
                    accepted.append(item.event_id)

        sender = threading.Thread(target=ingest)
        sender.start()
        while len(accepted) < 20:
            time.sleep(0.01)
        gone = client.post(
            "/v1/emitters/svc/offboard", json={"reason": "service retired"}, headers=ADMIN
        )
        assert gone.status_code == 200, gone.text
        while len(refused) < 5:
            time.sleep(0.01)
        stop.set()
        sender.join()
        body = gone.json()
        assert sorted(body["keys_revoked"]) == sorted([first["key_id"], second["key_id"]])
        assert len(body["grants_ended"]) == 1 and body["reason"] == "service retired"
        for key in (first["key"], second["key"]):
            after = client.post("/v1/usage", json=usage("after"), headers=bearer(key))
            assert after.status_code == 401
        again = client.post(
            "/v1/keys", json={"role": "emitter", "name": "new", "emitter_id": "svc"}, headers=ADMIN
        )
        assert again.status_code == 409
        grant = {"customer_id": "acme", "meters": ["*"]}
        assert client.post("/v1/emitters/svc/grants", json=grant, headers=ADMIN).status_code == 409
        assert billed_quantity(client) == len(accepted)
        detail = client.get("/v1/emitters/svc", headers=ADMIN).json()
        assert [g["status"] for g in detail["grants"]] == ["ended"]
        assert detail["offboarded_at"] == iso(clock.now)
        assert {k["status"] for k in detail["keys"]} == {"revoked"}
        lineage = client.get("/v1/invoices?customer_id=acme&period=2026-11", headers=ADMIN).json()
        invoice = lineage["items"][0]["invoice_id"]
        sources = client.get(f"/v1/invoices/{invoice}/lineage?line=0&limit=1000", headers=ADMIN)
        assert {s["emitter"] for s in sources.json()["items"]} == {"svc"}
        audit = client.get("/v1/audit?limit=1000", headers=ADMIN).json()["items"]
        acts = [a for a in audit if a["action"] == "emitter.offboarded"]
        assert len(acts) == 1 and sorted(acts[0]["detail"]["key_ids"]) == sorted(
            body["keys_revoked"]
        )
        assert not [a for a in audit if a["action"] == "key.revoked"]


# Last use --------------------------------------------------------------------------------------


def test_last_use_is_kept_to_the_minute_without_a_write_per_request(
    settings: Settings, clock: Clock
) -> None:
    with http(settings, clock) as (client, services):
        app = services.app
        created = client.post("/v1/keys", json={"role": "finance", "name": "f"}, headers=ADMIN)
        idle = client.post("/v1/keys", json={"role": "finance", "name": "idle"}, headers=ADMIN)
        key = bearer(created.json()["key"])
        client.get("/v1/emitters", headers=key)
        app.key_uses.flush()
        before = app.recorder.max_notification_id()
        for _ in range(200):
            clock.advance(seconds=0.1)
            assert client.get("/v1/emitters", headers=key).status_code == 200
        assert app.recorder.max_notification_id() == before  # 200 requests, no write
        assert app.key_uses.flush() == 0  # the same minute as the use already written
        clock.advance(seconds=60)
        for _ in range(100):
            client.get("/v1/emitters", headers=key)
        assert app.key_uses.flush() == 1
        assert app.recorder.max_notification_id() == (before or 0) + 1
        # Another process sees the written minute (not this process's memory).
        with http(settings, clock) as (other, _):
            items = other.get("/v1/keys", headers=ADMIN).json()["items"]
        last = {k["key_id"]: k["last_used_at"] for k in items}
        assert last[created.json()["key_id"]][:16] == iso(clock.now)[:16]
        assert last[idle.json()["key_id"]] is None
        clock.advance(days=8)
        stale = client.get("/v1/keys?stale_days=7", headers=ADMIN).json()["items"]
        assert {k["name"] for k in stale} == {"f", "idle"}
        client.get("/v1/emitters", headers=key)
        stale = client.get("/v1/keys?stale_days=7", headers=ADMIN).json()["items"]
        assert {k["name"] for k in stale} == {"idle"}


def test_concurrent_requests_of_many_keys_write_one_last_use_per_key_and_minute(
    settings: Settings, clock: Clock
) -> None:
    with http(settings, clock) as (client, services):
        app = services.app
        keys = [
            client.post("/v1/keys", json={"role": "finance", "name": f"k{i}"}, headers=ADMIN).json()
            for i in range(4)
        ]
        before = app.recorder.max_notification_id()

        def load(key: str) -> None:
            for _ in range(250):
                app.authenticate(key)

        threads = [threading.Thread(target=load, args=(k["key"],)) for k in keys for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert app.recorder.max_notification_id() == before  # 2,000 authentications, no write
        assert app.key_uses.flush() == 4
        assert app.key_uses.flush() == 0
        assert app.recorder.max_notification_id() == (before or 0) + 4


# Activity --------------------------------------------------------------------------------------


def test_activity_counts_every_event_sent_refusals_included(
    settings: Settings, clock: Clock
) -> None:
    with http(settings, clock) as (client, services):
        setup_acme(client)
        key = emitter_with_key(client, expires_at=iso(clock.now + timedelta(hours=1)))
        sender = bearer(key["key"])
        batch = {"events": [usage(f"a-{i}") for i in range(5)]}
        assert client.post("/v1/usage/batch", json=batch, headers=sender).status_code == 200
        assert client.post("/v1/usage", json=usage("a-0"), headers=sender).json()["status"] == (
            "duplicate"
        )
        assert client.post("/v1/usage", json=usage("a-1"), headers=sender).status_code == 202
        assert client.post("/v1/usage", json=usage("a-2", "7"), headers=sender).status_code == 409
        not_granted = {"events": [usage(f"n-{i}", meter="storage") for i in range(3)]}
        results = client.post("/v1/usage/batch", json=not_granted, headers=sender).json()
        assert [r["status"] for r in results["results"]] == ["rejected"] * 3
        clock.advance(hours=1)
        assert client.post("/v1/usage", json=usage("late"), headers=sender).status_code == 401
        services.app.refusals.flush()
        day = clock.now.date().isoformat()
        activity = client.get(
            f"/v1/emitters/svc/activity?from={day}&to={day}", headers=ADMIN
        ).json()
        assert activity["items"] == [
            {
                "day": day,
                "accepted": 5,
                "duplicate": 2,
                "conflict": 1,
                "refused": 4,
                "customers": 1,
                "meters": 1,
            }
        ]
        earlier = client.get("/v1/emitters/svc/activity?to=2026-11-23", headers=ADMIN).json()
        assert earlier["items"] == []
        assert client.get("/v1/emitters/nobody/activity", headers=ADMIN).status_code == 404


# Events stored before this lifecycle -----------------------------------------------------------


def test_emitters_and_keys_stored_before_the_lifecycle_still_load_and_offboard(
    settings: Settings, clock: Clock
) -> None:
    fixture = json.loads((FIXTURES / "identities_v1.json").read_text())
    with http(settings, clock) as (client, services):
        app = services.app
        app.recorder.insert_events(
            [
                StoredEvent(
                    originator_id=UUID(e["originator_id"]),
                    originator_version=e["originator_version"],
                    topic=e["topic"],
                    state=e["state"].encode(),
                )
                for e in fixture["events"]
            ]
        )
        legacy = app.authenticate("bk_0123456789abcdef_legacy-secret")
        assert (legacy.emitter, legacy.role, len(legacy.grants)) == ("legacy-svc", "emitter", 1)
        with pytest.raises(NotAuthenticated):
            app.authenticate("bk_fedcba9876543210_old-finance-secret")
        emitter = app.emitter("legacy-svc")
        assert (emitter.owner, emitter.offboarded, emitter.key_ids) == (None, False, [])
        keys = {k["key_id"]: k for k in client.get("/v1/keys", headers=ADMIN).json()["items"]}
        assert keys["0123456789abcdef"]["created_at"] == "2025-06-01T09:00:00Z"
        assert keys["0123456789abcdef"]["expires_at"] is None
        assert keys["fedcba9876543210"]["status"] == "revoked"
        listed = client.get("/v1/emitters", headers=ADMIN).json()["items"]
        assert [(e["emitter_id"], e["owner"]) for e in listed] == [("legacy-svc", None)]
        gone = app.offboard_emitter("legacy-svc", "moved to the new platform")
        assert gone["keys_revoked"] == ["0123456789abcdef"]
        with pytest.raises(NotAuthenticated):
            app.authenticate("bk_0123456789abcdef_legacy-secret")


def test_rotation_overlap_holds_across_two_server_processes(database_url: str) -> None:
    with (
        serving(database_url, 1) as (a, _),
        serving(database_url, 1) as (b, _),
        admin(a) as on_a,
        admin(b),
    ):
        setup(on_a)
        assert on_a.post(
            "/v1/emitters/svc/grants", json={"customer_id": "*", "meters": ["*"]}
        ).is_success
        old = on_a.post("/v1/keys", json={"role": "emitter", "name": "k", "emitter_id": "svc"})
        counter = iter(range(100_000))

        def send(base: str, key: str) -> int:
            answer = httpx.post(
                f"{base}/v1/usage", json=live_usage(f"x{next(counter)}"), headers=bearer(key)
            )
            return answer.status_code

        assert {send(a, old.json()["key"]), send(b, old.json()["key"])} == {202}  # cached
        rotated = on_a.post(f"/v1/keys/{old.json()['key_id']}/rotate", json={"overlap_seconds": 4})
        started = time.monotonic()
        assert rotated.status_code == 201, rotated.text
        new = rotated.json()["key"]
        during = {send(base, key) for base in (a, b) for key in (old.json()["key"], new)}
        assert time.monotonic() - started < 4 and during == {202}
        time.sleep(max(0.0, 4.0 - (time.monotonic() - started)))
        refused_within(lambda: send(b, old.json()["key"]), 401, 0.5)
        assert send(a, old.json()["key"]) == 401
        assert {send(a, new), send(b, new)} == {202}


# The console -----------------------------------------------------------------------------------


def _signed_in(client: Any, key: str) -> str:
    """Sign in to the console; returns the session's CSRF token."""
    form = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert form is not None
    signed = client.post(
        "/login", data={"key": key, "csrf_token": form.group(1)}, follow_redirects=False
    )
    assert signed.status_code == 303, signed.text
    page = client.get("/identities")
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def test_the_console_lists_identities_and_rotates_and_offboards_after_confirmation(
    settings: Settings, clock: Clock
) -> None:
    with http(settings, clock) as (client, services):
        setup_acme(client)
        emitter_key = emitter_with_key(client)
        finance = client.post("/v1/keys", json={"role": "finance", "name": "books"}, headers=ADMIN)
        clock.advance(days=31)
        csrf = _signed_in(client, "test-admin-key")
        page = client.get("/identities").text
        assert "payments team" in page and "svc key" in page and "stale" in page
        assert emitter_key["key"] not in page and finance.json()["key"] not in page
        unconfirmed = client.post(
            "/identities/emitters/svc/offboard", data={"csrf_token": csrf, "reason": "gone"}
        )
        assert unconfirmed.status_code == 422 and not services.app.emitter("svc").offboarded
        rotated = client.post(
            f"/identities/keys/{finance.json()['key_id']}/rotate",
            data={"csrf_token": csrf, "confirm": "yes", "overlap_seconds": "60"},
        )
        assert rotated.status_code == 200 and "bk_" in rotated.text
        done = client.post(
            "/identities/emitters/svc/offboard",
            data={"csrf_token": csrf, "reason": "gone", "confirm": "yes"},
            follow_redirects=False,
        )
        assert done.status_code == 303 and services.app.emitter("svc").offboarded
        assert (
            client.post(
                "/v1/usage", json=usage("c-1"), headers=bearer(emitter_key["key"])
            ).status_code
            == 401
        )
