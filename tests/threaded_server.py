"""The test suite's one way to run a uvicorn server in a thread of the test process.

:func:`serve_in_thread` starts it on loopback and waits until it accepts connections; the
:class:`ServerThread` it returns stops it. The ``uvicorn_thread`` fixture (tests/conftest.py) is
built on it; harness code that outlives one test function (cn_harness.Node and Tck, the
conformance TCK stand-in, a server stopped in the middle of a test) calls it directly.
(tests/ is on ``sys.path``: pytest puts it there when it imports tests/conftest.py.)
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, for a server in another process or an
    address meant to refuse connections. Nothing holds it: another process can take it before
    it is used. A server in this process should use :func:`bind_loopback` instead."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def bind_loopback() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1 (``sock.getsockname()[1]``), for
    ``serve_in_thread(app, sock=...)``: the port is held from the moment it is picked, so a
    server whose app must know its own address before it starts cannot lose the port to
    another process in between."""
    sock = socket.socket()
    try:
        sock.bind((HOST, 0))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class ServerThread:
    """A uvicorn server running in a daemon thread."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and join its thread (it closes its listening socket)."""
        self.server.should_exit = True
        self.thread.join(timeout)


def serve_in_thread(
    app: Any, *, sock: socket.socket | None = None, timeout: float = 10.0, **config: Any
) -> ServerThread:
    """Serve ``app`` on 127.0.0.1 in a daemon thread, with ``config`` passed to
    :class:`uvicorn.Config` as given (uvicorn's defaults otherwise); return once the server has
    started. It listens on ``sock`` (from :func:`bind_loopback`, for an app that must know its
    port before it is built), or on a socket of its own from :func:`bind_loopback`; the server
    closes it when it stops. A server that has not started within ``timeout`` seconds is stopped
    and the call fails."""
    if sock is None:
        sock = bind_loopback()
    port: int = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = ServerThread(server, thread, port)
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        why = f"did not start within {timeout} s" if thread.is_alive() else "exited without starting"
        running.stop()
        sock.close()
        raise AssertionError(f"uvicorn on {HOST}:{port} {why}")
    return running
