"""The bare endpoint (`benchmarks.bare_app`) on N uvicorn worker processes, served the way
`billing serve --workers N` serves: one listening socket created naming TCP, shared by
forked workers.

Why not `uvicorn --workers N`: uvicorn then binds the socket itself without naming the
protocol (`socket(AF_INET, SOCK_STREAM)`, proto 0), and asyncio sets TCP_NODELAY only on
sockets whose protocol is IPPROTO_TCP, so every response after the first on a kept-alive
connection waits about 40 ms for the client's delayed ACK. A baseline slowed that way
flatters whatever is compared with it.

    python -m benchmarks.bare_serve --port 8100 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
from types import FrameType

import uvicorn


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(sock: socket.socket) -> None:
    config = uvicorn.Config("benchmarks.bare_app:app", log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    sock = listening_socket(args.host, args.port)
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            serve(sock)
            os._exit(0)
        children.append(pid)

    def stop(signum: int, frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        os.waitpid(child, 0)


if __name__ == "__main__":
    main()
