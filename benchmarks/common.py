"""Helpers the benchmark scripts share: statistics, result tables, memory, local servers, DSN."""

from __future__ import annotations

import http.client
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"

Row = Mapping[str, object]


def pg_dsn() -> str:
    """The PostgreSQL DSN for benchmarks: $BENCH_POSTGRES_DSN, else the local test database."""
    return os.environ.get("BENCH_POSTGRES_DSN", DEFAULT_DSN)


def log(message: str) -> None:
    """Progress goes to stderr so that stdout stays a clean table or JSON document."""
    print(message, file=sys.stderr, flush=True)


# --- statistics -----------------------------------------------------------------------------


def median_of(runs: Sequence[float]) -> float:
    if not runs:
        raise ValueError("median_of() needs at least one run")
    return float(statistics.median(runs))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile() needs at least one value")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_percentiles(latencies: Sequence[float]) -> dict[str, float]:
    """p50 and p99 of latencies, in the unit they were given in."""
    ordered = sorted(latencies)
    return {"p50": percentile(ordered, 50), "p99": percentile(ordered, 99)}


# --- memory ---------------------------------------------------------------------------------


def peak_rss_self_kib() -> int:
    """Peak resident set size of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_children_kib() -> int:
    """Largest peak RSS among terminated, waited-for child processes."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def peak_rss_pid_kib(pid: int) -> int | None:
    """Peak RSS (VmHWM) of a running process, or None if it is gone or unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


# --- output ---------------------------------------------------------------------------------


def _cell(value: object, fmt: str | None) -> str:
    if value is None:
        return "-"
    if fmt and isinstance(value, (int, float)):
        return format(value, fmt)
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_table(rows: Sequence[Row], formats: Mapping[str, str] | None = None) -> str:
    """Rows (dicts sharing the same keys) as a plain-text table; numbers right-aligned."""
    if not rows:
        return "(no rows)"
    formats = formats or {}
    keys = list(rows[0].keys())
    cells = [[_cell(row.get(k), formats.get(k)) for k in keys] for row in rows]
    numeric = [
        all(isinstance(row.get(k), (int, float)) or row.get(k) is None for row in rows)
        for k in keys
    ]
    widths = [max(len(k), *(len(line[i]) for line in cells)) for i, k in enumerate(keys)]

    def render(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    lines = [render(keys), render(["-" * w for w in widths])]
    lines.extend(render(line) for line in cells)
    return "\n".join(lines)


def print_report(
    title: str,
    tables: Mapping[str, Sequence[Row]],
    meta: Mapping[str, object],
    *,
    as_json: bool = False,
    formats: Mapping[str, str] | None = None,
) -> None:
    """Print named tables plus metadata, as aligned text or (as_json) as one JSON document."""
    if as_json:
        doc = {
            "benchmark": title,
            "meta": dict(meta),
            **{k: [dict(r) for r in v] for k, v in tables.items()},
        }
        print(json.dumps(doc, indent=2, default=str))
        return
    print(f"== {title} ==")
    width = max((len(k) for k in meta), default=0)
    for key, value in meta.items():
        print(f"{key.ljust(width)} : {_cell(value, None)}")
    for name, rows in tables.items():
        print(f"\n-- {name} --")
        print(format_table(rows, formats))


# --- local servers --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One HTTP request to 127.0.0.1:port (never proxied, never another host)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


@contextmanager
def running_server(
    cmd: Sequence[str], port: int, *, timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `cmd` (cwd = repo root), wait until GET /health on 127.0.0.1:port answers 200,
    yield the process, then stop it (SIGTERM, then SIGKILL). Raises RuntimeError with the
    server's output if it exits early or is not healthy within `timeout` seconds."""
    with tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False) as out:
        log_path = Path(out.name)
        proc = subprocess.Popen(
            list(cmd),
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with code {proc.returncode} before becoming healthy: "
                    f"{' '.join(cmd)}\n{_tail(log_path)}"
                )
            try:
                status, _ = http_request(port, "GET", "/health", timeout=1.0)
                if status == 200:
                    break
                last_error = f"GET /health answered {status}"
            except OSError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"server not healthy after {timeout:.0f}s ({last_error}): "
                    f"{' '.join(cmd)}\n{_tail(log_path)}"
                )
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_path.unlink(missing_ok=True)


@contextmanager
def scratch_store(store: str) -> Iterator[str]:
    """A BILLING_DATABASE_URL for an empty store, removed afterwards: a temporary SQLite file,
    or a new schema in the benchmark PostgreSQL database."""
    import uuid

    import psycopg

    if store == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{pg_dsn()}?schema={schema}"
    finally:
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
