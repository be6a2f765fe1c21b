"""Where the data plane reads a dataset from, and where it pushes to.

A dataset's private ``data_address`` names its source: a local ``file`` (``path``), an ``http``
backend (``url``; ``proxyPath`` / ``proxyQuery`` = ``"true"`` let the consumer append a path and a
query) or an ``s3`` object (``bucket``, ``key``) in this connector's object store
(``DADAM_S3_*``). Every source is read in chunks, never whole; an unreachable source raises
:class:`SourceUnavailable` with the reason, which the data plane answers with 502 and does not meter.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httpx

__all__ = [
    "CHUNK",
    "FileReader",
    "Opened",
    "S3Config",
    "SourceUnavailable",
    "Upstream",
    "open_source",
    "stream_get",
]

CHUNK = 64 * 1024
S3_CHUNK = 1024 * 1024
#: bytes read from a file source per read (one thread hop each)
FILE_CHUNK = 1024 * 1024
#: an upstream connection stops reading when this much is received and not yet sent on
UPSTREAM_HIGH = 4 * 1024 * 1024
UPSTREAM_LOW = 1024 * 1024


class SourceUnavailable(Exception):
    """The source cannot be read (down, missing object, refused): the reason is the message."""


@dataclass(frozen=True)
class S3Config:
    """An S3 endpoint and its credentials (the secret is never printed)."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def __repr__(self) -> str:
        return (
            f"S3Config(endpoint={self.endpoint!r}, access_key={self.access_key!r}, secret_key='**********')"
        )

    def client(self) -> Any:
        """A ``minio.Minio`` client for this endpoint (``http://`` means no TLS)."""
        from minio import Minio

        parts = urlsplit(self.endpoint if "://" in self.endpoint else f"https://{self.endpoint}")
        return Minio(
            parts.netloc,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            secure=parts.scheme == "https",
        )


@dataclass
class Opened:
    """An opened source: its chunks from ``start`` to ``end`` (inclusive), total size if known."""

    chunks: Iterator[bytes]
    size: int | None
    media_type: str | None
    close: Any


def _s3_reason(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if code:
        return f"S3 answered {code}: {getattr(exc, 'message', '') or exc}"
    return f"S3 is unreachable: {exc.__class__.__name__}"


def s3_size(client: Any, bucket: str, key: str) -> tuple[int, str | None]:
    """Size and content type of an object; SourceUnavailable with the reason if it cannot be read."""
    try:
        stat = client.stat_object(bucket, key)
    except Exception as exc:  # minio raises S3Error, urllib3 errors, ValueError
        raise SourceUnavailable(_s3_reason(exc)) from None
    return int(stat.size), stat.content_type


def s3_first(client: Any, bucket: str, key: str, limit: int) -> tuple[int, bytes | None]:
    """One ranged GET of the first ``limit`` bytes: (the object's size, its whole body when the size
    is at most ``limit``, else None). A small object costs one S3 call instead of a stat and a GET."""
    try:
        response = client.get_object(bucket, key, offset=0, length=limit)
    except Exception as exc:
        if getattr(exc, "code", None) == "InvalidRange":  # an empty object has no first byte
            size, _ = s3_size(client, bucket, key)
            return size, b"" if size == 0 else None
        raise SourceUnavailable(_s3_reason(exc)) from None
    try:
        content_range = response.headers.get("Content-Range") or ""
        total = content_range.rpartition("/")[2]
        if not total.isdigit():  # a store that ignored the range answered the whole object
            data: bytes = response.read()
            return len(data), data
        size = int(total)
        return size, (response.read() if size <= limit else None)
    except Exception as exc:
        raise SourceUnavailable(_s3_reason(exc)) from None
    finally:
        response.close()
        response.release_conn()


def s3_read(client: Any, bucket: str, key: str, start: int, end: int) -> bytes:
    """The bytes ``start`` to ``end`` inclusive of a (small) object range, read whole."""
    try:
        response = client.get_object(bucket, key, offset=start, length=end - start + 1)
    except Exception as exc:
        raise SourceUnavailable(_s3_reason(exc)) from None
    try:
        data: bytes = response.read()
    except Exception as exc:
        raise SourceUnavailable(_s3_reason(exc)) from None
    finally:
        response.close()
        response.release_conn()
    return data


def open_s3(client: Any, bucket: str, key: str, start: int, end: int | None) -> Iterator[bytes]:
    """Chunks of ``bucket/key`` from ``start`` to ``end`` inclusive (a ranged GET: never the whole object)."""
    length = 0 if end is None else end - start + 1
    try:
        response = client.get_object(bucket, key, offset=start, length=length)
    except Exception as exc:
        raise SourceUnavailable(_s3_reason(exc)) from None

    def chunks() -> Iterator[bytes]:
        try:
            while True:
                chunk = response.read(S3_CHUNK)
                if not chunk:
                    return
                yield chunk
        finally:
            response.close()
            response.release_conn()

    return chunks()


class FileReader:
    """Positional reads of ``[start, stop]`` of an open file, ``FILE_CHUNK`` bytes at a time; the
    empty bytes at the end. One read at a time (the caller awaits each before the next)."""

    def __init__(self, fd: int, size: int, start: int, stop: int) -> None:
        self._lock = threading.Lock()  # close() waits for a read still running in another thread
        self.fd: int | None = fd
        self.size = size
        self.pos = start
        self.stop = stop

    def read(self) -> bytes:
        with self._lock:
            if self.fd is None or self.pos > self.stop:
                return b""
            chunk = os.pread(self.fd, min(FILE_CHUNK, self.stop - self.pos + 1), self.pos)
            self.pos += len(chunk)
            if not chunk:
                self.pos = self.stop + 1
            return chunk

    def close(self) -> None:
        with self._lock:
            fd, self.fd = self.fd, None
            if fd is not None:
                os.close(fd)


def open_file_reader(path: str, start: int | None = None, end: int | None = None) -> FileReader:
    """A :class:`FileReader` over ``path`` from ``start`` to ``end`` inclusive (None: the whole file;
    the caller checks the range against ``size`` first when it needs to); SourceUnavailable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SourceUnavailable(f"the data source cannot be read: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
    except OSError as exc:
        os.close(fd)
        raise SourceUnavailable(f"the data source cannot be read: {exc.strerror}") from None
    first = start or 0
    stop = size - 1 if end is None else min(end, size - 1)
    return FileReader(fd, size, first, stop)


class _Receiver(asyncio.Protocol):
    """One HTTP/1.1 response read off a connection: httptools parses, body pieces queue up (the
    transport stops reading while UPSTREAM_HIGH bytes wait to be sent on)."""

    def __init__(self, timeout: float) -> None:
        import httptools

        self.timeout = timeout
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: dict[str, str] = {}
        self.headers_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pieces: deque[bytes] = deque()
        self.queued = 0
        self.done = False
        self.error: BaseException | None = None
        self.paused = False
        self.wakeup: asyncio.Future[None] | None = None
        self.received = 0
        #: body bytes still to come once the headers named a Content-Length (None: httptools parses)
        self.left: int | None = None

    # transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.left is not None:  # a plain Content-Length body: taken as received, no parser copy
            if self.done or not data:
                return
            if len(data) > self.left:
                data = data[: self.left]
            self.left -= len(data)
            self.on_body(data)
            if self.left == 0:
                self.on_message_complete()
            return
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # httptools.HttpParserError
            self._fail(ConnectionError(f"malformed HTTP response: {exc}"))
            return
        length = self.headers.get("content-length", "")
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if self.headers_done.done() and not self.done and length.isdigit() and not chunked:
            self.left = int(length) - self.received

    def eof_received(self) -> bool | None:
        if not self.done:
            self._fail(ConnectionError("the connection closed before the response ended"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self._fail(exc or ConnectionError("the connection closed before the response ended"))

    # parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.received += len(body)
        self.pieces.append(body)
        self.queued += len(body)
        if self.queued >= UPSTREAM_HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self.headers_done.done():
            self.headers_done.set_exception(exc)
        self._wake()

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    async def next_piece(self) -> bytes:
        """The next piece of the body as received, b"" at the end; raises a connection error
        when the response is cut off."""
        while not self.pieces:
            if self.done:
                return b""
            if self.error is not None:
                raise self.error
            self.wakeup = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self.wakeup, self.timeout)
            except TimeoutError:
                raise TimeoutError(f"the source sent nothing for {self.timeout:g} s") from None
            finally:
                self.wakeup = None
        piece = self.pieces.popleft()  # one at a time: no joining copy
        self.queued -= len(piece)
        if self.paused and self.queued <= UPSTREAM_LOW and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return piece


class Upstream:
    """A streamed HTTP response of :func:`stream_get`: ``status``, ``headers`` (lower-case
    names), ``chunks()`` (the body, as it arrives) and ``close()``."""

    def __init__(self, receiver: _Receiver) -> None:
        self._r = receiver
        self.status = int(receiver.parser.get_status_code())
        self.headers = receiver.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while piece := await self._r.next_piece():
                yield piece
        finally:
            self.close()

    def close(self) -> None:
        if self._r.transport is not None:
            self._r.transport.close()


async def stream_get(url: str, headers: dict[str, str] | None = None, *, timeout: float = 30.0) -> Upstream:
    """``GET url`` on a connection of its own, the body streamed as it arrives (no pool, no
    decoding: for presigned object-store URLs). Connection errors raise ``OSError`` / ``TimeoutError``."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    receiver = _Receiver(timeout)
    context = ssl.create_default_context() if secure else None
    await asyncio.wait_for(
        loop.create_connection(
            lambda: receiver, host, port, ssl=context, server_hostname=host if secure else None
        ),
        timeout,
    )
    assert receiver.transport is not None
    netloc = parts.netloc.rsplit("@", 1)[-1]
    lines = [f"GET {target} HTTP/1.1", f"Host: {netloc}", "Connection: close", "Accept-Encoding: identity"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    receiver.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        await asyncio.wait_for(asyncio.shield(receiver.headers_done), timeout)
    except BaseException:
        receiver.transport.close()
        raise
    return Upstream(receiver)


def open_file(path: str, start: int, end: int | None) -> tuple[Iterator[bytes], int]:
    try:
        fd = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
    except OSError as exc:
        raise SourceUnavailable(f"the data source cannot be read: {exc.strerror}") from None
    stop = size - 1 if end is None else min(end, size - 1)

    def chunks() -> Iterator[bytes]:
        try:
            pos = start
            while pos <= stop:
                chunk = os.pread(fd, min(CHUNK * 4, stop - pos + 1), pos)
                if not chunk:
                    return
                pos += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    return chunks(), size


def http_url(properties: dict[str, str], path: str = "", query: str = "") -> str:
    """The backend URL, with the consumer's path and query appended where the dataset allows it."""
    url = properties["url"]
    if path and properties.get("proxyPath") == "true":
        url = url.rstrip("/") + "/" + path.lstrip("/")
    if query and properties.get("proxyQuery") == "true":
        url += ("&" if "?" in url else "?") + query
    return url


def open_http(client: httpx.Client, url: str) -> tuple[Iterator[bytes], str | None]:
    try:
        response = client.send(client.build_request("GET", url), stream=True)
    except httpx.HTTPError as exc:
        raise SourceUnavailable(f"the data source is down: {exc.__class__.__name__}") from None
    if response.status_code >= 400:
        response.close()
        raise SourceUnavailable(f"the data source answered {response.status_code}")

    def chunks() -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(CHUNK * 4)
        finally:
            response.close()

    return chunks(), response.headers.get("content-type")


def open_source(address: Any, *, s3: S3Config | None, http: httpx.Client | None = None) -> Opened:
    """Open a dataset's source for a whole-object read (pushes). Raises SourceUnavailable."""
    props: dict[str, str] = dict(address.properties)
    if address.type == "file":
        chunks, size = open_file(props["path"], 0, None)
        return Opened(chunks, size, None, None)
    if address.type == "s3":
        if s3 is None:
            raise SourceUnavailable(
                "the dataset is in S3 but no S3 endpoint is configured (DADAM_S3_ENDPOINT)"
            )
        client = s3.client()
        size, media_type = s3_size(client, props["bucket"], props["key"])
        return Opened(open_s3(client, props["bucket"], props["key"], 0, None), size, media_type, None)
    if address.type == "http":
        own = http is None
        client = http or httpx.Client(timeout=30.0)
        chunks, media_type = open_http(client, http_url(props))
        return Opened(chunks, None, media_type, client.close if own else None)
    raise SourceUnavailable(f"{address.type} sources are not supported")
