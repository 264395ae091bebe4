"""A real HTTP receiver of webhooks on loopback, in a thread: it keeps what it was sent and answers
as told (a status, after a delay)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self.delay = 0.0
        self.release = threading.Event()  # set: requests answer; cleared: they wait for it
        self.release.set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    receiver.received.append(
                        {
                            "at": time.monotonic(),
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "status": receiver.status,
                        }
                    )
                if receiver.delay:
                    time.sleep(receiver.delay)
                receiver.release.wait(60)
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.release.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def messages(self, status: int | None = 200) -> list[dict[str, Any]]:
        """The bodies received (answered with `status`, or all when None), parsed."""
        with self._lock:
            got = list(self.received)
        return [
            {**json.loads(r["body"]), "webhook-id": r["headers"]["webhook-id"]}
            for r in got
            if status is None or r["status"] == status
        ]

    def wait_for(self, count: int, timeout: float = 30.0, status: int | None = 200) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages(status)) < count:
            assert time.monotonic() < deadline, f"{len(self.messages(status))} of {count} arrived"
            time.sleep(0.05)
