"""Faults answered honestly: a store that cannot answer is a 503 with Retry-After, never a
500, nothing acknowledged is lost, the service recovers by itself, and SIGTERM stops it."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api.http.errors import on_billing_error
from billing_domain.errors import StoreContention
from billing_domain.settings import Settings
from tests.api_support import ADMIN, event, http, setup_acme
from tests.conftest import POSTGRES_URL, Clock, _require_postgres
from tests.e2e.test_e2e_serve import ROOT, free_port, wait_healthy


def assert_store_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    assert body["detail"] and body["errors"][0]["code"] in ("store_unavailable", "store_contention")
    assert set(body["errors"][0]) == {"field", "reason", "code"}


def test_contention_asks_the_client_to_retry_after_a_moment() -> None:
    response = on_billing_error(None, StoreContention("gave up; retry"))  # type: ignore[arg-type]
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"


def test_a_locked_sqlite_store_answers_503_then_recovers(tmp_path: Path, clock: Clock) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/billing.db",
        admin_key="test-admin-key",
        statement_timeout=timedelta(seconds=1),
    )
    with http(settings, clock) as (client, _):
        setup_acme(client)
        holder = sqlite3.connect(tmp_path / "billing.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            refused = client.post("/v1/usage", json=event("e1"), headers=ADMIN)
            assert time.monotonic() - started < 20
            assert_store_unavailable(refused)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        retried = client.post("/v1/usage", json=event("e1"), headers=ADMIN)
        assert retried.status_code == 202 and retried.json()["status"] == "accepted"


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, server)
    except AssertionError:
        server.kill()
        raise
    return server, base


def setup_customer(client: httpx.Client) -> None:
    assert client.post("/v1/customers", json={"customer_id": "acme", "name": "A"}).is_success
    plan = {
        "plan_id": "std",
        "currency": "USD",
        "charges": [{"meter": "api_calls", "model": "per_unit", "unit_amount": "0.01"}],
    }
    assert client.post("/v1/plans", json=plan).is_success
    subscription = {"plan_id": "std", "effective_from": "2026-01-01T00:00:00Z"}
    assert client.put("/v1/customers/acme/subscription", json=subscription).is_success


NOW = datetime.now(UTC).replace(microsecond=0)


def now_event(event_id: str) -> dict[str, Any]:
    return event(event_id, occurred_at=(NOW - timedelta(minutes=1)).isoformat())


@pytest.fixture
def scratch_database() -> Iterator[tuple[str, str]]:
    """A database of its own, so its connections can be cut without touching anyone else's."""
    _require_postgres()
    name = f"billing_fault_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name, POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_sigterm_stops_the_server_even_with_a_request_stuck_on_a_lock(database_url: str) -> None:
    admin = "fault-admin-key"
    env = {**os.environ, "BILLING_DATABASE_URL": database_url, "BILLING_ADMIN_KEY": admin}
    server, base = start_server(env)
    holder: Any = None
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}) as client:
            setup_customer(client)
            if database_url.startswith("sqlite"):
                holder = sqlite3.connect(database_url.removeprefix("sqlite:///"))
                holder.isolation_level = None
                holder.execute("BEGIN IMMEDIATE")
            else:
                schema = database_url.rsplit("schema=", 1)[1]
                holder = psycopg.connect(database_url.split("?")[0])
                tables = holder.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s "
                    "AND tablename LIKE '%%\\_events'",
                    [schema],
                ).fetchall()
                names = ", ".join(f'"{schema}"."{table}"' for (table,) in tables)
                holder.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")

            def stuck() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    httpx.post(
                        f"{base}/v1/usage",
                        json=now_event("stuck"),
                        headers={"Authorization": f"Bearer {admin}"},
                        timeout=30,
                    )

            threading.Thread(target=stuck, daemon=True).start()
            time.sleep(1.0)
            assert server.poll() is None
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=15)
            assert time.monotonic() - started < 10
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if isinstance(holder, psycopg.Connection):
            # The stopped server's statement still waits in PostgreSQL; end it, not the schema.
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin_conn:
                admin_conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE %s = ANY(pg_blocking_pids(pid))",
                    [holder.info.backend_pid],
                )
        if holder is not None:
            holder.close()


def test_postgresql_connections_cut_under_load_lose_nothing_acknowledged(
    scratch_database: tuple[str, str],
) -> None:
    name, url = scratch_database
    admin = "fault-admin-key"
    env = {**os.environ, "BILLING_DATABASE_URL": url, "BILLING_ADMIN_KEY": admin}
    server, base = start_server(env)
    acknowledged: set[str] = set()
    statuses: list[int] = []
    unexplained: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def send(worker: int) -> None:
        with httpx.Client(
            base_url=base, timeout=30, headers={"Authorization": f"Bearer {admin}"}
        ) as client:
            n = 0
            while not stop.is_set():
                n += 1
                ids = [f"w{worker}-{n}-{i}" for i in range(5 if n % 2 else 1)]
                try:
                    if len(ids) == 1:
                        response = client.post("/v1/usage", json=now_event(ids[0]))
                        ok = (
                            [ids[0]]
                            if response.status_code == 202
                            and response.json()["status"] in ("accepted", "duplicate")
                            else []
                        )
                    else:
                        response = client.post(
                            "/v1/usage/batch", json={"events": [now_event(i) for i in ids]}
                        )
                        ok = (
                            [
                                r["event_id"]
                                for r in response.json()["results"]
                                if r["status"] in ("accepted", "duplicate")
                            ]
                            if response.is_success
                            else []
                        )
                except httpx.HTTPError:
                    continue
                with lock:
                    statuses.append(response.status_code)
                    acknowledged.update(ok)
                    if response.status_code == 503 and "Retry-After" not in response.headers:
                        unexplained.append(response.text)
                    elif not response.is_success and response.status_code != 503:
                        unexplained.append(f"{response.status_code} {response.text}")

    try:
        with httpx.Client(
            base_url=base, timeout=30, headers={"Authorization": f"Bearer {admin}"}
        ) as client:
            setup_customer(client)
            workers = [threading.Thread(target=send, args=(w,)) for w in range(4)]
            for worker in workers:
                worker.start()
            time.sleep(1.0)
            with psycopg.connect(POSTGRES_URL, autocommit=True) as killer:
                cut_until = time.monotonic() + 3.0
                while time.monotonic() < cut_until:
                    killer.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        [name],
                    )
                    time.sleep(0.15)
            time.sleep(1.0)
            stop.set()
            for worker in workers:
                worker.join(timeout=60)

            assert not unexplained, unexplained[:3]
            assert 500 not in statuses
            assert acknowledged, "no request succeeded under load"

            # Recovery, without a restart: the service takes new usage again.
            recovered = client.post("/v1/usage", json=now_event("after-the-outage"))
            assert recovered.status_code == 202, recovered.text
            # Everything acknowledged is in the store: sent again, each one is a duplicate.
            ids = sorted(acknowledged)
            for start in range(0, len(ids), 1000):
                again = client.post(
                    "/v1/usage/batch",
                    json={"events": [now_event(i) for i in ids[start : start + 1000]]},
                )
                assert again.is_success, again.text
                assert {r["status"] for r in again.json()["results"]} == {"duplicate"}
            assert server.poll() is None
    finally:
        stop.set()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        print(server.stdout.read() if server.stdout else "")
