"""`billing serve --workers N`: N API processes on one port, the read models in one child.

The parent binds the port, checks the configuration and the store once, then runs uvicorn's
process supervisor over `worker_app` (each worker builds its own Services from the
environment: its own connections, group committer and key cache) and, unless
BILLING_PROJECTION_WORKER=external, one `billing projections run` child that keeps the read
models current for every worker. The child is restarted with backoff when it dies. SIGTERM
(or Ctrl-C) to the parent stops the workers and the child; whatever is still running
`STOP_DEADLINE_SECONDS` later is killed.

The workers count ingest, latency and group commits in prometheus-client's multiprocess
mode: the parent makes a PROMETHEUS_MULTIPROC_DIR for them (or empties the operator's) and
removes it at stop, so a `/metrics` scrape of any worker sums them all.

Read-your-writes holds across processes: a read waits until the views' tracking position (a
row in the view store, read on every poll) reaches the log's position.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess

from api.bootstrap import build
from api.metrics import MULTIPROC_ENV

GRACE_SECONDS = 5
STOP_DEADLINE_SECONDS = 8
WORKER_ENV = "BILLING_SERVE_WORKER"
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
METRICS_PREFIX = "billing-metrics-"  # then the supervisor's pid, so orphans can be found
STEADY_SECONDS = 60.0  # a child that ran this long starts again without waiting


def worker_app() -> Any:
    """The ASGI application of one worker process (uvicorn factory): Services built from the
    environment, closed when the worker stops."""
    from api.http.app import create_app
    from api.logs import configure

    configure()
    services = build()
    app = create_app(services)
    app.on_shutdown.append(services.close)
    return app


class ProjectionChild:
    """One `billing projections run` process, restarted with backoff while serve runs."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="projections-child", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "api.cli", "projections", "run"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )

    def _run(self) -> None:
        backoff = BACKOFF_FIRST_SECONDS
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self.process = self._spawn()
            started = time.monotonic()
            code = self.process.wait()
            if self._stop.is_set():
                return
            if time.monotonic() - started >= STEADY_SECONDS:
                backoff = BACKOFF_FIRST_SECONDS
            sys.stderr.write(
                f"billing: the projection worker exited ({code}); starting it again in "
                f"{backoff:g} s\n"
            )
            sys.stderr.flush()
            self.restarts += 1
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    def terminate(self) -> None:
        with self._lock:
            self._stop.set()
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()

    def join(self, deadline: float) -> None:
        process = self.process
        if process is not None:
            try:
                process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._thread.join(timeout=1)


class _Workers(Multiprocess):
    """uvicorn's supervisor, stopping the projection child with the workers and killing
    whatever outlives the stop deadline."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], child: ProjectionChild | None
    ) -> None:
        super().__init__(config, sockets)
        self.child = child
        self._deadline: float | None = None

    def terminate_all(self) -> None:
        self._deadline = time.monotonic() + STOP_DEADLINE_SECONDS
        if self.child is not None:
            self.child.terminate()
        super().terminate_all()

    def join_all(self) -> None:
        deadline = self._deadline or time.monotonic() + STOP_DEADLINE_SECONDS
        for process in self.processes:
            process.process.join(max(deadline - time.monotonic(), 0.01))
        late = [p for p in self.processes if p.process.is_alive()]
        if late:
            sys.stderr.write(
                f"billing: {len(late)} worker(s) still busy {STOP_DEADLINE_SECONDS} s after "
                "the stop signal; stopping them now (requests not yet answered were not "
                "acknowledged)\n"
            )
            for process in late:
                process.process.kill()
                process.process.join()
        if self.child is not None:
            self.child.join(deadline)


def metrics_directory() -> tuple[str, bool]:
    """Where the workers keep their counts (prometheus-client's multiprocess mode): the
    operator's PROMETHEUS_MULTIPROC_DIR, emptied of an earlier run's files, or a new
    temporary directory this process removes at stop. Returns it and whether it is ours."""
    given = os.environ.get(MULTIPROC_ENV, "").strip()
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        return given, False
    _remove_orphans()
    return tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-"), True


def _remove_orphans() -> None:
    """Counts directories of supervisors that were killed before they could remove theirs."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{METRICS_PREFIX}*-*")):
        pid = os.path.basename(path)[len(METRICS_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def run_workers(sock: socket.socket, workers: int, *, external_projections: bool) -> None:
    """Serve on `sock` from `workers` processes until SIGTERM or SIGINT."""
    directory, owned = metrics_directory()
    try:
        _run_workers(sock, workers, directory, external_projections=external_projections)
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)


def _run_workers(
    sock: socket.socket, workers: int, metrics_dir: str, *, external_projections: bool
) -> None:
    os.environ[WORKER_ENV] = "1"
    os.environ[MULTIPROC_ENV] = metrics_dir  # the workers sum each other's counts
    child_env = dict(os.environ)
    child_env.pop("BILLING_PROJECTION_WORKER", None)
    child_env.pop(WORKER_ENV, None)
    child_env.pop(MULTIPROC_ENV, None)
    # The workers read models kept current by the child (or by a worker run elsewhere).
    os.environ["BILLING_PROJECTION_WORKER"] = "external"
    child = None if external_projections else ProjectionChild(child_env)
    config = uvicorn.Config(
        "api.supervisor:worker_app",
        factory=True,
        workers=workers,
        log_level="warning",
        log_config=None,  # each worker formats its lines with api.logs
        access_log=False,  # one request line each, from api.http.observe
        timeout_graceful_shutdown=GRACE_SECONDS,
    )
    supervisor = _Workers(config, [sock], child)
    if child is not None:
        child.start()
    try:
        supervisor.run()
    finally:
        if child is not None:
            child.terminate()
            child.join(time.monotonic() + STOP_DEADLINE_SECONDS)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
