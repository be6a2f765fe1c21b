"""Zero-copy relay of a large S3 pull: the object's bytes go from the S3 connection to the client's
connection through a pipe with ``splice(2)``, inside the kernel, never through Python.

Measured on the 2-core machine (decision 0453): relaying 1 GiB between two loopback sockets costs
0.34 s of CPU with ``recv_into`` + ``sendall`` and 0.12 s with splice; the streamed event-loop path
spends about 0.5 s per GiB, 80 % of it copying in the kernel. For media types whose records are
counted (JSON, NDJSON, CSV) the pipe is duplicated with ``tee(2)`` and only the copy is read, so
the counter sees every byte at the cost of one copy instead of two.

It is used when every condition holds, else the event-loop path streams the body as before:

* Linux (``os.splice``), the setting ``dataplane_splice`` on, a GET;
* the server is uvicorn's httptools protocol on plain TCP (the client's socket is reachable and
  no TLS layer sits between it and the bytes), which :class:`ConnectionApp` makes visible;
* the presigned S3 URL is plain ``http`` and S3 answers with a ``Content-Length`` of the range;
* fewer than :data:`MAX_RELAYS` splice relays are running (each one holds a thread).

Sequence: the S3 request is made and its status line and headers read (a thread); the response
headers go out through the ASGI ``send``; once the server's own write buffer is empty, a thread
splices all but the last ``KEEP_LAST`` bytes straight into the client's socket, then reads that last
piece into memory; the usage event commits; the last piece leaves through ``send``, which ends the
response for the server. So, as on the event-loop path, an answered request is metered before its
last byte leaves, and one cut off is metered as ``partial`` with the bytes the kernel accepted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import socket
import sys
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI

__all__ = [
    "KEEP_LAST",
    "MAX_RELAYS",
    "ConnectionApp",
    "RelayError",
    "UpstreamResponse",
    "client_connection",
    "open_upstream",
    "relay",
    "splice_supported",
]

#: the last bytes of a body, read into memory and sent through the server after the usage event commits
KEEP_LAST = 64 * 1024
#: splice relays running at once (one thread each); more requests stream on the event loop
MAX_RELAYS = 32
#: bytes moved per splice call (the pipe is grown to this size where the system allows)
PIPE_BYTES = 1024 * 1024
#: the largest response head accepted from S3
MAX_HEAD = 64 * 1024
#: ASGI scope key under which :class:`ConnectionApp` puts the server's own ``send``
RAW_SEND = "dadam.raw_send"

_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)

pool = ThreadPoolExecutor(max_workers=MAX_RELAYS, thread_name_prefix="dadam-splice")


def _libc_tee() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        tee = libc.tee
    except (OSError, AttributeError):
        return None
    tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
    tee.restype = ctypes.c_ssize_t
    return tee


_TEE = _libc_tee() if sys.platform == "linux" else None


def splice_supported(counted: bool) -> bool:
    """Whether this system can splice (and, for a counted body, tee)."""
    return hasattr(os, "splice") and (not counted or _TEE is not None)


class ConnectionApp(FastAPI):
    """A FastAPI application that keeps the server's own ``send`` in the scope of each HTTP request
    (key :data:`RAW_SEND`), before any middleware wraps it, so a handler can reach the connection.

    ``fast_lane``: an ASGI app put in front of the framework (its middleware included); it
    passes what it does not serve to :meth:`framework`."""

    fast_lane: Any = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[RAW_SEND] = send
            if self.fast_lane is not None:
                await self.fast_lane(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def framework(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """The application without the fast lane."""
        await super().__call__(scope, receive, send)


def client_connection(scope: MutableMapping[str, Any]) -> tuple[Any, Any, int] | None:
    """(uvicorn's request cycle, its transport, the client socket's fd) when the request is served
    by uvicorn's httptools protocol over plain TCP; None otherwise."""
    cycle = getattr(scope.get(RAW_SEND), "__self__", None)
    if cycle is None or type(cycle).__module__ != "uvicorn.protocols.http.httptools_impl":
        return None
    transport = getattr(cycle, "transport", None)
    if transport is None or not isinstance(getattr(cycle, "expected_content_length", None), int):
        return None
    if (
        transport.get_extra_info("sslcontext") is not None
        or transport.get_extra_info("ssl_object") is not None
    ):
        return None
    sock = transport.get_extra_info("socket")
    try:
        fd = sock.fileno() if sock is not None else -1
    except (OSError, ValueError):
        return None
    if fd < 0:
        return None
    return cycle, transport, fd


class RelayError(Exception):
    """A relay stopped early: ``side`` is ``"source"`` or ``"client"``, ``sent`` the bytes the
    client's socket accepted; the message says what happened."""

    def __init__(self, side: Literal["source", "client"], message: str, sent: int) -> None:
        super().__init__(message)
        self.side = side
        self.message = message
        self.sent = sent


@dataclass
class UpstreamResponse:
    """The head of a response read off a connection of its own; the body is still on ``sock``
    (``leftover``: body bytes that arrived with the head). ``length`` is -1 unless the body has a
    plain ``Content-Length``."""

    sock: socket.socket
    status: int
    headers: dict[str, str]
    length: int
    leftover: bytes

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def open_upstream(url: str, headers: dict[str, str], timeout: float) -> UpstreamResponse:
    """``GET url`` (plain http) on a new connection; reads the response head. Raises ``OSError`` /
    ``TimeoutError`` when the server cannot be reached, ``ConnectionError`` on a malformed head."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError("only plain http sources are spliced")
    host, port = parts.hostname or "", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = parts.netloc.rsplit("@", 1)[-1]
    lines = [f"GET {target} HTTP/1.1", f"Host: {netloc}", "Connection: close", "Accept-Encoding: identity"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = bytearray()
        while (end := head.find(b"\r\n\r\n")) < 0:
            if len(head) > MAX_HEAD:
                raise ConnectionError("the source's response head is too large")
            piece = sock.recv(MAX_HEAD)
            if not piece:
                raise ConnectionError("the connection closed before the response head ended")
            head += piece
        status_line, *header_lines = head[:end].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ConnectionError(f"malformed HTTP response: {status_line[:80]!r}")
        fields: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise ConnectionError(f"malformed HTTP header: {line[:80]!r}")
            fields[name.strip().lower()] = value.strip()
        length_text = fields.get("content-length", "")
        plain = length_text.isdigit() and "transfer-encoding" not in fields
        return UpstreamResponse(
            sock, int(code), fields, int(length_text) if plain else -1, bytes(head[end + 4 :])
        )
    except BaseException:
        sock.close()
        raise


def _wait(fd: int, event: int, timeout: float) -> bool:
    """Whether ``fd`` became ready for ``event`` (or errored) within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(timeout * 1000))


def _write_all(fd: int, data: bytes | memoryview, stall: float, sent: int) -> None:
    """Write ``data`` to the (non-blocking) client socket; RelayError("client") if it fails or stalls."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            if not _wait(fd, select.POLLOUT, stall):
                raise RelayError("client", f"the client took nothing for {stall:g} s", sent) from None
            continue
        except OSError as exc:
            raise RelayError("client", f"the client's connection failed: {exc.strerror}", sent) from None
        view = view[n:]
        sent += n


def _read_exact(sock: socket.socket, n: int, timeout: float, sent: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        try:
            piece = sock.recv(n - len(out))
        except BlockingIOError:
            if not _wait(sock.fileno(), select.POLLIN, timeout):
                raise RelayError("source", f"the source sent nothing for {timeout:g} s", sent) from None
            continue
        except OSError as exc:
            raise RelayError("source", f"the source's connection failed: {exc.strerror}", sent) from None
        if not piece:
            raise RelayError("source", "the source closed the connection before the body ended", sent)
        out += piece
    return bytes(out)


def _pipes(count: int) -> list[int]:
    """``count`` pipes as [read, write, read, write, ...], all of one size (PIPE_BYTES where the
    system allows it, else the largest size they all got), so a tee from one into another fits."""
    import fcntl

    fds: list[int] = []
    try:
        for _ in range(count):
            fds += os.pipe2(os.O_CLOEXEC)
        sizes = []
        for w in fds[1::2]:
            with contextlib.suppress(OSError):  # the system's limit may be lower: keep the default
                fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_BYTES)
            sizes.append(fcntl.fcntl(w, _F_GETPIPE_SZ))
        if len(set(sizes)) > 1:
            for w in fds[1::2]:
                fcntl.fcntl(w, _F_SETPIPE_SZ, min(sizes))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def relay(
    up: UpstreamResponse,
    client_fd: int,
    *,
    keep_last: int = KEEP_LAST,
    feed: Callable[[bytes], object] | None = None,
    timeout: float = 30.0,
    stall: float = 300.0,
) -> tuple[int, bytes]:
    """Moves ``up``'s body (``up.length`` bytes) to ``client_fd`` but for its last ``keep_last``
    bytes, which it returns: (bytes written to the client, the last piece). ``feed`` (a record
    counter) sees every byte in order, the last piece included. ``timeout``: longest wait for the
    source; ``stall``: longest wait for the client to take more. Raises :class:`RelayError`."""
    total = up.length
    keep = min(keep_last, total)
    todo = total - keep
    sent = 0
    leftover = up.leftover[:total]
    first, tail = leftover[:todo], leftover[todo:]
    if first:
        if feed is not None:
            feed(first)
        _write_all(client_fd, first, stall, sent)
        sent += len(first)
        todo -= len(first)
    up_fd = up.sock.fileno()
    up.sock.setblocking(False)
    fds = _pipes(2 if feed is not None else 1)
    pr, pw = fds[0], fds[1]
    copy_r, copy_w = (fds[2], fds[3]) if feed is not None else (-1, -1)
    try:
        while todo > 0:
            try:
                n = os.splice(up_fd, pw, min(todo, PIPE_BYTES), flags=_SPLICE_FLAGS)
            except BlockingIOError:
                if not _wait(up_fd, select.POLLIN, timeout):
                    raise RelayError("source", f"the source sent nothing for {timeout:g} s", sent) from None
                continue
            except OSError as exc:
                raise RelayError("source", f"the source's connection failed: {exc.strerror}", sent) from None
            if n == 0:
                raise RelayError("source", "the source closed the connection before the body ended", sent)
            if feed is not None:
                _tee_and_feed(pr, copy_w, copy_r, n, feed)
            out = 0
            while out < n:
                try:
                    out += os.splice(pr, client_fd, n - out, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    if not _wait(client_fd, select.POLLOUT, stall):
                        raise RelayError(
                            "client", f"the client took nothing for {stall:g} s", sent + out
                        ) from None
                except OSError as exc:
                    raise RelayError(
                        "client", f"the client's connection failed: {exc.strerror}", sent + out
                    ) from None
            sent += n
            todo -= n
        last = tail + _read_exact(up.sock, keep - len(tail), timeout, sent) if len(tail) < keep else tail
    finally:
        for fd in fds:
            os.close(fd)
    if feed is not None and last:
        feed(last)
    return sent, last


def _tee_and_feed(pr: int, copy_w: int, copy_r: int, n: int, feed: Callable[[bytes], object]) -> None:
    """Duplicates the ``n`` bytes waiting in the pipe ``pr`` into the empty copy pipe (page
    references, no copy of the data) and feeds them, read from the copy, to ``feed``. The copy pipe
    has as many slots as the first, so one tee takes all of them (tee does not consume: a second
    call would duplicate the same bytes again)."""
    assert _TEE is not None
    while (m := _TEE(pr, copy_w, n, 0)) < 0 and ctypes.get_errno() == errno.EINTR:
        pass
    if m < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"tee failed: {os.strerror(err)}")
    if m != n:
        raise OSError(errno.EIO, f"tee duplicated {m} of {n} bytes")
    got = 0
    while got < n:
        chunk = os.read(copy_r, n - got)
        got += len(chunk)
        feed(chunk)
