"""`billing serve`'s socket: responses on a reused connection go out at once (TCP_NODELAY),
not ~40 ms later when the client's delayed ACK meets Nagle's algorithm."""

from __future__ import annotations

import socket
import statistics
import time

import httpx

from api.commands_service import _listening_socket
from tests.e2e.test_e2e_serve import stop_group
from tests.e2e.test_metrics_workers import start


def test_the_listening_socket_names_tcp_so_asyncio_disables_nagle() -> None:
    listener = _listening_socket("127.0.0.1", 0)
    try:
        listener.listen()
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP.
                assert accepted.proto == socket.IPPROTO_TCP
    finally:
        listener.close()


def test_a_kept_alive_connection_is_answered_without_a_40_ms_stall(tmp_path) -> None:
    server, base = start(f"sqlite:///{tmp_path}/billing.db", tmp_path / "serve.log", 1)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            client.get("/nowhere")
            took = []
            for _ in range(30):
                started = time.perf_counter()
                assert client.get("/nowhere").status_code == 404
                took.append(time.perf_counter() - started)
        # With Nagle on, every answer after the first waited for the delayed ACK: 44 ms.
        assert statistics.median(took) < 0.030, took
    finally:
        stop_group(server)
