"""Outbox sender on the standard library's ``http.client`` (decision 0404).

Why: every DSP message a connector sends goes through :meth:`Sender.send`. With httpx that cost
0.4 ms of CPU per message on one keep-alive connection and 0.8 ms with the 20-60 connections a
busy connector keeps open (httpcore checks every pooled connection, with a ``poll`` system call
each, on every request): about a fifth of a connector's CPU per negotiation. The same POST over
``http.client`` costs 0.1 ms.

:class:`DirectSender` keeps keep-alive connections per origin (a last-in-first-out stack, so a
few hot connections serve a burst) and falls back to its :class:`~contracts._process.HttpSender`
(httpx) for everything it does not do itself:

* a proxy from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``)
  applies to the URL, or the URL is not ``http``/``https``;
* the peer's auth object cannot give its headers up front (it has no ``request_headers(url,
  body)`` method, e.g. a challenge-response flow).

TLS uses httpx's default context (the same trust store and environment variables). A request on
a reused connection that the peer had closed meanwhile is sent once more on a new connection:
every outbox message keeps its ``@id``, and the peer's received-message dedupe makes a resend
a no-op, so this is safe even if the first copy did arrive.
"""

from __future__ import annotations

import http.client
import re
import select
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import httptools
import httpx
import orjson

from contracts._process import Delivery, HttpSender, OutboxMessage

__all__ = ["DirectSender", "HeaderAuth"]

#: Read at most this much of a reply (DSP replies are small); a longer one is cut and its
#: connection not reused.
MAX_REPLY_BYTES = 1 << 20

_USER_AGENT = "dadam-connector"

#: Errors that mean "the reused connection was already closed by the peer".
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class HeaderAuth(Protocol):
    """An auth that knows its headers before the request is sent (what :class:`DirectSender`
    needs, found by the method's name; DSP token auth and data-plane signaling auth are such)."""

    def request_headers(self, url: str, body: bytes) -> Mapping[str, str]: ...


class _Origin:
    """Where to connect for one ``scheme://host:port``; its idle connections."""

    __slots__ = ("host", "idle", "netloc", "port", "proxied", "tls")

    def __init__(self, scheme: str, host: str, port: int, netloc: str) -> None:
        self.tls = scheme == "https"
        self.host = host
        self.port = port
        self.netloc = netloc
        self.idle: list[tuple[http.client.HTTPConnection, float]] = []
        self.proxied = _proxied(scheme, host)


def _proxied(scheme: str, host: str) -> bool:
    """Whether httpx (trusting the environment, as our clients do) would use a proxy here."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host)


def _readable(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection that is readable was closed by the peer (or holds junk)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        p = select.poll()
        p.register(sock, select.POLLIN)
        return bool(p.poll(0))
    except (OSError, ValueError):
        return True


class DirectSender:
    """A :class:`~contracts._process.Sender` on ``http.client`` keep-alive connections, with
    ``fallback`` (httpx) for proxies and auth it cannot apply (see the module docstring).

    Outcomes are those of :class:`~contracts._process.HttpSender`: 2xx is success; 5xx, 429,
    timeouts and connection errors are retryable; any other status is final.
    """

    def __init__(
        self,
        fallback: HttpSender,
        *,
        timeout_s: float = 10.0,
        max_idle_per_origin: int = 32,
        idle_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fallback = fallback
        self.timeout_s = timeout_s
        self.max_idle = max_idle_per_origin
        self.idle_s = idle_s
        self._ssl = ssl_context
        self._clock = clock
        self._lock = threading.Lock()
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        #: connections opened so far (for tests and diagnostics)
        self.opened = 0

    # -- Sender ------------------------------------------------------------------------------
    def send(self, message: OutboxMessage) -> Delivery:
        where = self._where(message.url)
        auth_for = self.fallback.auth_for
        auth = auth_for(message.audience) if auth_for is not None else None
        headers_for = getattr(auth, "request_headers", None) if auth is not None else None
        if where is None or where[0].proxied or (auth is not None and headers_for is None):
            return self.fallback.send(message)
        origin, target = where
        body = orjson.dumps(message.body)
        headers = {"Content-Type": "application/json", "Accept": "*/*", "User-Agent": _USER_AGENT}
        if headers_for is not None:
            try:
                headers.update(headers_for(message.url, body))
            except Exception as exc:  # a broken auth provider must not kill the worker
                return Delivery(False, None, False, f"sending {message.message_type} failed: {exc!r}")
            bad = next(
                (k for k, v in headers.items() if not _TOKEN.fullmatch(k) or _BAD_VALUE.search(v)), None
            )
            if bad is not None:  # it would split the request
                return Delivery(
                    False, None, False, f"sending {message.message_type} failed: invalid header {bad!r}"
                )
        for attempt in (1, 2):
            conn, reused = self._checkout(origin)
            try:
                status, data, keep = _exchange(conn, origin.netloc, target, headers, body)
            except TimeoutError as exc:
                conn.close()
                return Delivery(
                    False, None, True, f"timeout sending {message.message_type} to {message.url}: {exc!r}"
                )
            except _STALE as exc:
                conn.close()
                if reused and attempt == 1:
                    continue  # the peer closed the idle connection: once more on a new one
                return Delivery(False, None, True, f"cannot reach {message.url}: {exc!r}")
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                return Delivery(False, None, True, f"cannot reach {message.url}: {exc!r}")
            if keep:
                self._checkin(origin, conn)
            else:
                conn.close()
            return _delivery(message, status, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close every idle connection (the sender stays usable)."""
        with self._lock:
            conns = [c for o in self._origins.values() for c, _ in o.idle]
            for o in self._origins.values():
                o.idle.clear()
        for c in conns:
            c.close()

    # -- connections -------------------------------------------------------------------------
    def _where(self, url: str) -> tuple[_Origin, str] | None:
        """The origin of ``url`` and the request target; None when the fallback must send it.
        (Not cached by URL: DSP URLs name the negotiation, so nearly every one is new.)"""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        port = port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        origin = self._origins.get(key)
        if origin is None:
            with self._lock:
                origin = self._origins.setdefault(
                    key, _Origin(parts.scheme, parts.hostname, port, parts.netloc)
                )
        return origin, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def _checkout(self, origin: _Origin) -> tuple[http.client.HTTPConnection, bool]:
        now = self._clock()
        while True:
            with self._lock:
                if not origin.idle:
                    break
                conn, since = origin.idle.pop()
            if now - since <= self.idle_s and not _readable(conn):
                return conn, True
            conn.close()
        if origin.tls:
            conn = http.client.HTTPSConnection(
                origin.host, origin.port, timeout=self.timeout_s, context=self._tls_context()
            )
        else:
            conn = http.client.HTTPConnection(origin.host, origin.port, timeout=self.timeout_s)
        self.opened += 1
        return conn, False

    def _checkin(self, origin: _Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(origin.idle) < self.max_idle:
                origin.idle.append((conn, self._clock()))
                return
        conn.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # httpx's trust store and SSL_CERT_* variables
        return self._ssl


class _Reply:
    """What httptools' response parser reports for one reply."""

    __slots__ = ("chunks", "done", "framed", "headers_done", "keep", "parser", "size")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.keep = False  # read when the reply is complete (the parser forgets it after)
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False
        self.headers_done = False
        #: the reply declared its length (Content-Length or chunked): only then is an early end
        #: of the connection a cut reply
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.size <= MAX_REPLY_BYTES:
            self.chunks.append(body)
        self.size += len(body)

    def on_message_complete(self) -> None:
        self.done = True
        self.keep = self.parser.should_keep_alive()


def _exchange(
    conn: http.client.HTTPConnection, netloc: str, target: str, headers: Mapping[str, str], body: bytes
) -> tuple[int, bytes, bool]:
    """POST ``body`` on ``conn`` (connected here if new, TLS included) and read the reply with
    httptools' parser: (status, body cut at :data:`MAX_REPLY_BYTES`, whether the connection can
    be reused). http.client's own request and reply code (its header parsing goes through the
    email package) cost about twice as much CPU per message. Raises what http.client raises:
    ``RemoteDisconnected`` when the peer closed before answering, ``IncompleteRead`` when it
    closed in the middle of a reply, ``TimeoutError``, ``OSError``."""
    lines = [f"POST {target} HTTP/1.1\r\nHost: {netloc}\r\nAccept-Encoding: identity\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    if conn.sock is None:
        conn.connect()
    sock = conn.sock
    sock.sendall("".join(lines).encode("latin-1") + body)
    while True:  # 1xx interim replies are skipped
        reply = _Reply()
        parser = reply.parser
        seen = 0
        while not reply.done:
            data = sock.recv(65536)
            if not data:
                if seen == 0:
                    raise http.client.RemoteDisconnected("the peer closed the connection without a reply")
                if reply.headers_done and not reply.framed:
                    break  # a body delimited by the end of the connection
                raise http.client.IncompleteRead(b"".join(reply.chunks))
            seen += len(data)
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise http.client.HTTPException(f"malformed reply: {exc}") from None
            if reply.size > MAX_REPLY_BYTES:
                break  # cut: the connection is not reused
        status = parser.get_status_code()
        del reply.parser  # no cycle left for the garbage collector
        if 100 <= status < 200 and status != 101 and reply.done:
            continue
        keep = reply.done and reply.keep and reply.size <= MAX_REPLY_BYTES
        return status, b"".join(reply.chunks)[:MAX_REPLY_BYTES], keep


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


def _delivery(message: OutboxMessage, status: int, data: bytes) -> Delivery:
    if 200 <= status < 300:
        parsed: Any = None
        if data:
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                parsed = None
        return Delivery(True, status, False, "ok", parsed)
    text = data[:500].decode("utf-8", errors="replace")
    if status >= 500 or status == 429:
        return Delivery(False, status, True, f"peer answered {status} to {message.message_type}: {text}")
    return Delivery(False, status, False, f"peer rejected {message.message_type} with {status}: {text}")
