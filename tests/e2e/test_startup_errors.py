"""A mistake in the configuration is one line naming the setting and the fix, never a
traceback or a long wait."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_e2e_serve import ROOT, free_port


def run_billing(*args: str, env: dict[str, str], cwd: Path = ROOT) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stderr, time.monotonic() - started


def assert_one_line(stderr: str, *names: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize(
    "command", [["serve", "--port", "0"], ["keys", "create", "--role", "admin", "--name", "ops"]]
)
def test_an_unreachable_postgresql_is_named_at_once(command: list[str]) -> None:
    code, stderr, seconds = run_billing(
        *command, env={"BILLING_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/billing"}
    )
    assert code != 0 and seconds < 10
    assert_one_line(stderr, "BILLING_DATABASE_URL", "127.0.0.1:1", "'billing'")


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"BILLING_DATABASE_URL": "mysql://db/billing"}, ["BILLING_DATABASE_URL", "sqlite:///"]),
        (
            {"BILLING_DATABASE_URL": "sqlite:////no/such/directory/billing.db"},
            ["BILLING_DATABASE_URL", "/no/such/directory", "mkdir"],
        ),
        ({"BILLING_MAX_CLOCK_SKEW": "five minutes"}, ["BILLING_MAX_CLOCK_SKEW", "5m"]),
        ({"BILLING_STATEMENT_TIMEOUT": "0s"}, ["BILLING_STATEMENT_TIMEOUT", "30s"]),
    ],
)
def test_a_configuration_mistake_is_one_line_naming_the_setting(
    env: dict[str, str], names: list[str], tmp_path: Path
) -> None:
    env.setdefault("BILLING_DATABASE_URL", f"sqlite:///{tmp_path}/billing.db")
    for command in (["serve", "--port", "0"], ["keys", "create", "--role", "admin", "--name", "x"]):
        code, stderr, _ = run_billing(*command, env=env)
        assert code == 2, stderr
        assert_one_line(stderr, *names)


def test_a_postgresql_schema_that_does_not_exist_is_named(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a schema is a PostgreSQL setting")
    missing = database_url.rsplit("schema=", 1)[0] + "schema=no_such_schema"
    code, stderr, _ = run_billing(
        "keys", "create", "--role", "admin", "--name", "x", env={"BILLING_DATABASE_URL": missing}
    )
    assert code == 2
    assert_one_line(stderr, "BILLING_DATABASE_URL", "no_such_schema", "CREATE SCHEMA")


def test_a_csv_export_onto_a_file_names_the_option(database_url: str, tmp_path: Path) -> None:
    existing = tmp_path / "invoices.csv"
    existing.write_text("keep me")
    code, stderr, _ = run_billing(
        "export",
        "--period",
        "2026-10",
        "--out",
        str(existing),
        env={"BILLING_DATABASE_URL": database_url},
    )
    assert code == 2
    assert_one_line(stderr, "--out", "directory")
    assert existing.read_text() == "keep me"


def test_serve_on_a_port_in_use_says_so_before_any_banner(database_url: str) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "BILLING_DATABASE_URL": database_url, "BILLING_ADMIN_KEY": "k"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2 and time.monotonic() - started < 10
    assert "billing on" not in done.stdout
    assert_one_line(done.stderr, f"127.0.0.1:{port}", "--port")


def test_serve_without_any_admin_key_says_how_to_make_one(database_url: str) -> None:
    port = free_port()
    env = {**os.environ, "BILLING_DATABASE_URL": database_url}
    env.pop("BILLING_ADMIN_KEY", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert "billing keys create --role admin --name NAME" in line
    finally:
        server.terminate()
        server.wait(timeout=15)
