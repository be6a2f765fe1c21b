"""Where the data plane reads a dataset from, and where it pushes to.

A dataset's private ``data_address`` names its source: a local ``file`` (``path``), an ``http``
backend (``url``; ``proxyPath`` / ``proxyQuery`` = ``"true"`` let the consumer append a path and a
query) or an ``s3`` object (``bucket``, ``key``) in this connector's object store
(``DADAM_S3_*``). Every source is read in chunks, never whole; an unreachable source raises
:class:`SourceUnavailable` with the reason, which the data plane answers with 502 and does not meter.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["CHUNK", "Opened", "S3Config", "SourceUnavailable", "open_source"]

CHUNK = 64 * 1024
S3_CHUNK = 1024 * 1024


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
