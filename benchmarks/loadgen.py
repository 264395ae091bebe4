"""HTTP load generators for POST /v1/usage on 127.0.0.1: wrk (preferred) or a pure-Python fallback.

Both are closed-loop: `concurrency` keep-alive connections, each sending its next request as soon
as the previous answer arrived, for `duration` seconds and at most `max_requests` requests.
Every request carries a unique event_id. The target host is always 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import LOOPBACK, latency_percentiles

WRK_SCRIPT = Path(__file__).with_name("wrk_usage.lua")
DEFAULT_CUSTOMERS = 100


@dataclass(frozen=True)
class LoadResult:
    generator: str
    requests: int  # answered requests (any status)
    errors: int  # transport errors, timeouts and unexpected statuses
    duration_s: float
    p50_ms: float
    p99_ms: float
    capped: bool  # True if max_requests stopped the run early (then requests/s is understated)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


DEFAULT_OCCURRED_AT = "2025-01-15T12:00:00+00:00"


def usage_body(
    prefix: str,
    worker: int,
    n: int,
    customers: int = DEFAULT_CUSTOMERS,
    occurred_at: str = DEFAULT_OCCURRED_AT,
    dup_every: int = 0,
) -> bytes:
    """The request body; keep in step with wrk_usage.lua. Every `dup_every`-th request
    repeats the previous request's event (a client retry) when dup_every > 0."""
    if dup_every > 0 and n > 1 and n % dup_every == 0:
        n -= 1
    return (
        f'{{"event_id":"{prefix}-{worker}-{n}","customer_id":"cust-{n % customers}",'
        '"meter":"api_calls",'
        f'"quantity":"1.5","occurred_at":"{occurred_at}",'
        f'"properties":{{"region":"eu-west-1","status":200}}}}'
    ).encode()


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def choose_generator(preference: str = "auto") -> str:
    """'wrk' or 'python'; 'auto' picks wrk when it is installed."""
    if preference == "auto":
        return "wrk" if wrk_available() else "python"
    if preference == "wrk" and not wrk_available():
        raise RuntimeError("wrk requested but not installed (apt-get install -y wrk)")
    if preference not in ("wrk", "python"):
        raise ValueError(f"unknown load generator {preference!r}")
    return preference


def run_load(
    port: int,
    *,
    duration: int,
    concurrency: int = 32,
    label: str = "bench",
    path: str = "/v1/usage",
    generator: str = "auto",
    wrk_threads: int = 1,
    max_requests: int | None = None,
    expect_status: int = 202,
    headers: Mapping[str, str] | None = None,
    customers: int = DEFAULT_CUSTOMERS,
    occurred_at: str = DEFAULT_OCCURRED_AT,
    dup_every: int = 0,
) -> LoadResult:
    """Load http://127.0.0.1:<port><path> with usage POSTs; `label` prefixes every event_id."""
    if duration <= 0 or concurrency <= 0:
        raise ValueError("duration and concurrency must be positive")
    cap = max_requests if max_requests is not None else duration * 100_000
    if choose_generator(generator) == "wrk":
        return _run_wrk(
            port,
            path,
            duration,
            concurrency,
            label,
            wrk_threads,
            cap,
            headers or {},
            (customers, occurred_at, dup_every),
        )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(
            _run_python(
                port,
                path,
                duration,
                concurrency,
                label,
                cap,
                expect_status,
                headers or {},
                (customers, occurred_at, dup_every),
            )
        )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn[standard] brings it): a cheaper client leaves the server
    more CPU."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# --- wrk ------------------------------------------------------------------------------------


def _run_wrk(
    port: int,
    path: str,
    duration: int,
    concurrency: int,
    label: str,
    threads: int,
    cap: int,
    headers: Mapping[str, str],
    body: tuple[int, str, int] = (DEFAULT_CUSTOMERS, DEFAULT_OCCURRED_AT, 0),
) -> LoadResult:
    threads = max(1, min(threads, concurrency))
    per_thread = max(1, cap // threads)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(WRK_SCRIPT),
    ]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    cmd += [
        f"http://{LOOPBACK}:{port}{path}",
        "--",
        label,
        str(per_thread),
        str(body[0]),
        body[1],
        str(body[2]),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    # wrk counts statuses >= 400 as errors; 2xx/3xx answers other than the expected one are not
    # seen.
    errors = sum(v for k, v in r.items() if k.startswith("errors_"))
    return LoadResult(
        generator=f"wrk (-t{threads})",
        requests=r["requests"],
        errors=errors,
        duration_s=r["duration_us"] / 1e6,
        p50_ms=r["p50_us"] / 1e3,
        p99_ms=r["p99_us"] / 1e3,
        # answers in flight when a thread stops are not counted
        capped=r["requests"] + concurrency >= per_thread * threads,
    )


# --- pure Python fallback -------------------------------------------------------------------


@dataclass
class _Tally:
    issued: int = 0
    errors: int = 0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response with Content-Length; return (status, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, keep_alive = 0, True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            keep_alive = False
        elif name == "transfer-encoding":
            raise RuntimeError("chunked responses are not supported by the Python load generator")
    if length:
        await reader.readexactly(length)
    return status, keep_alive


async def _client(
    worker: int,
    port: int,
    path: str,
    label: str,
    deadline: float,
    cap: int,
    expect_status: int,
    headers: bytes,
    latencies: list[float],
    tally: _Tally,
    body_args: tuple[int, str, int],
) -> None:
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    n = 0
    while time.perf_counter() < deadline and tally.issued < cap:
        tally.issued += 1
        n += 1
        body = usage_body(label, worker, n, *body_args)
        request = (
            (
                f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
            ).encode()
            + headers
            + b"\r\n"
            + body
        )
        started = time.perf_counter()
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.write(request)
            async with asyncio.timeout(10):
                status, keep_alive = await _read_response(reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            tally.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        latencies.append(time.perf_counter() - started)
        if status != expect_status:
            tally.errors += 1
        if not keep_alive:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _run_python(
    port: int,
    path: str,
    duration: int,
    concurrency: int,
    label: str,
    cap: int,
    expect_status: int,
    headers: Mapping[str, str],
    body_args: tuple[int, str, int] = (DEFAULT_CUSTOMERS, DEFAULT_OCCURRED_AT, 0),
) -> LoadResult:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    latencies: list[float] = []
    tally = _Tally()
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(
        *(
            _client(
                w,
                port,
                path,
                label,
                deadline,
                cap,
                expect_status,
                extra,
                latencies,
                tally,
                body_args,
            )
            for w in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - started
    pct = latency_percentiles(latencies) if latencies else {"p50": 0.0, "p99": 0.0}
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return LoadResult(
        generator=f"python (asyncio streams, {loop_name} loop)",
        requests=len(latencies),
        errors=tally.errors,
        duration_s=elapsed,
        p50_ms=pct["p50"] * 1e3,
        p99_ms=pct["p99"] * 1e3,
        capped=tally.issued >= cap,
    )
