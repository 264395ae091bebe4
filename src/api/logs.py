"""Log lines: one JSON object a line (the default when stderr is not a terminal) or plain text.

`BILLING_LOG_FORMAT=json|text` (or `billing serve --log-format`) chooses. Every logger of
the service (`billing.*`, `projections.*`, `billing_domain.*`, uvicorn's errors) writes
through one handler to stderr. The handler never makes a request wait: lines go through a
bounded queue to a writer thread, and when the queue is full (stderr not being read) a line
is dropped and counted rather than blocking the service.

Nothing logged carries a key or an Authorization header: request lines name the key id.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from billing_domain.settings import SettingsError

FORMAT_ENV = "BILLING_LOG_FORMAT"
FORMATS = ("json", "text")
QUEUE_LINES = 10_000
LOGGERS = ("billing", "api", "projections", "billing_domain", "adapters", "uvicorn.error")
REQUEST_LOGGER = "billing.request"
# Fields of a record that are the logging module's own, not extra data to print.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def log_format(explicit: str | None = None, stream: TextIO | None = None) -> str:
    """The chosen format: `explicit`, else BILLING_LOG_FORMAT, else json unless a terminal."""
    value = (explicit or os.environ.get(FORMAT_ENV, "")).strip().lower()
    if not value:
        target = stream or sys.stderr
        return "text" if target.isatty() else "json"
    if value not in FORMATS:
        raise SettingsError(f"{FORMAT_ENV}={value!r}: expected json or text")
    return value


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
            **_extra(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _extra(record).items())
        text = f"{_time(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extra:
            text += f"  {extra}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class QueuedHandler(logging.Handler):
    """Formats in the caller, writes from one daemon thread; drops when the queue is full."""

    def __init__(self, stream: TextIO, capacity: int = QUEUE_LINES) -> None:
        super().__init__()
        self.stream = stream
        self.dropped = 0
        self._lines: queue.Queue[str] = queue.Queue(maxsize=capacity)
        self._writer = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        # Straight to the file descriptor when there is one: a blocked write (a pipe nobody
        # reads) then holds no lock of sys.stderr, so the process can still print and exit.
        try:
            fd: int | None = self.stream.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None
        while True:
            line = self._lines.get()
            try:
                if fd is None:
                    self.stream.write(line + "\n")
                    self.stream.flush()
                else:
                    data = (line + "\n").encode("utf-8", "replace")
                    while data:
                        data = data[os.write(fd, data) :]
            except (OSError, ValueError):
                pass  # a closed stream: nothing to tell it
            finally:
                self._lines.task_done()

    def drain(self, timeout: float = 1.0) -> None:
        """Wait (at most `timeout`) until every queued line is written."""
        deadline = time.monotonic() + timeout
        while self._lines.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def flush(self) -> None:
        self.drain()


_installed: QueuedHandler | None = None


def configure(fmt: str | None = None, stream: TextIO | None = None) -> QueuedHandler:
    """Send every logger of the service through one handler in the chosen format."""
    global _installed
    target = stream or sys.stderr
    chosen = log_format(fmt, target)
    handler = QueuedHandler(target)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _installed is not None:
            logger.removeHandler(_installed)
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET or name == REQUEST_LOGGER:
            logger.setLevel(logging.INFO)
    if _installed is None:
        atexit.register(lambda: _installed.drain() if _installed is not None else None)
    _installed = handler
    return handler
