"""A push that is streaming stops when its transfer stops: suspended mid-push, the provider closes
the request at once (no half body is taken for a whole one), pushes again from the start on resume
and meters that push once; terminated mid-push, it stops and meters nothing. Two real connectors,
SQLite and PostgreSQL, pushing to an endpoint that reads slowly until told otherwise."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from transfer_nodes import (
    BACKENDS,
    backend_env,
    connectors,
    request_transfer,
    serve_connections,
    transfer_view,
    wait_until,
)

from catalog import DataAddress
from catalog.samples import sample_datasets
from connector._demo import Node, fetch_catalog, negotiate, record_partner, seed_provider, usage_of

SIZE = 24 * 1024 * 1024 + 321


class SlowEndpoint:
    """Accepts pushes; reads 64 KiB every 10 ms while ``slow`` is set. ``requests`` holds, per
    request, [bytes of body received, whether the whole declared body arrived]."""

    def __init__(self) -> None:
        self.slow = threading.Event()
        self.slow.set()
        self.requests: list[list[Any]] = []
        self.listener, port = serve_connections(self._read)
        self.url = f"http://127.0.0.1:{port}/incoming"

    def _read(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        entry: list[Any] = [0, False]
        self.requests.append(entry)
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                piece = conn.recv(65536)
                if not piece:
                    return
                head += piece
            headers, _, body = head.partition(b"\r\n\r\n")
            chunked = b"transfer-encoding: chunked" in headers.lower()
            data = bytearray(body)
            while True:
                if self.slow.is_set():
                    time.sleep(0.01)
                try:
                    piece = conn.recv(65536)
                except OSError:
                    break
                if not piece:
                    break
                data += piece
                entry[0] = len(data)
                if chunked and data.endswith(b"\r\n0\r\n\r\n"):
                    entry[1] = True
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    break
                if not chunked and b"content-length: %d" % SIZE in headers.lower() and len(data) >= SIZE:
                    entry[1] = True
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    break

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(params=BACKENDS)
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    with connectors(tmp_path, backend_env(request)) as pair:
        yield pair


@pytest.fixture
def endpoint() -> Iterator[SlowEndpoint]:
    slow = SlowEndpoint()
    yield slow
    slow.close()


def _large_agreement(provider: Node, consumer: Node, tmp_path: Path) -> str:
    big = tmp_path / "large-export.bin"
    big.write_bytes(os.urandom(SIZE))
    seed_provider(provider)
    record_partner(provider, consumer)
    base = next(d for d in sample_datasets() if d.id == "bom-brake-assembly-as-built")
    ds = base.model_copy(update={"id": "bom-large-export", "media_type": "application/octet-stream",
                                 "byte_size": None,
                                 "data_address": DataAddress(type="file", properties={"path": str(big)})})  # fmt: skip
    with provider.client() as c:
        r = c.post("/datasets", json=ds.model_dump(mode="json", by_alias=True))
        assert r.status_code in (200, 201), r.text
    found = next(d for d in fetch_catalog(consumer, provider)["dataset"] if d["@id"] == "bom-large-export")
    return str(negotiate(consumer, provider, found["hasPolicy"][0]["@id"])["agreement"]["@id"])


def _act(node: Node, tid: str, action: str) -> None:
    with node.client() as c:
        r = c.post(f"/transfers/{quote(tid, safe='')}/{action}", json={"reason": f"test {action}"})
        assert r.status_code in (200, 202, 204), r.text


def _provider_tid(provider: Node, consumer_tid: str) -> str:
    with provider.client() as p:
        return str(
            next(v for v in p.get("/transfers").json()["items"] if v["consumerPid"] == consumer_tid)["id"]
        )


def test_a_push_suspended_midway_stops_and_is_pushed_whole_after_resume(
    nodes: tuple[Node, Node], endpoint: SlowEndpoint, tmp_path: Path
) -> None:
    provider, consumer = nodes
    agreement = _large_agreement(provider, consumer, tmp_path)
    tid = request_transfer(
        consumer, provider, agreement, "HttpData-PUSH", dataDestination={"endpoint": endpoint.url}
    )
    wait_until(
        lambda: endpoint.requests and endpoint.requests[0][0] > 1024 * 1024, "the push to be streaming"
    )
    _act(consumer, tid, "suspend")
    wait_until(
        lambda: transfer_view(provider, _provider_tid(provider, tid))["state"] == "SUSPENDED",
        "provider SUSPENDED",
    )
    # the provider gives up the request: the endpoint sees it end, short of the whole body
    wait_until(lambda: endpoint.requests[0][0] < SIZE and not _still_open(endpoint), "the first push to stop")
    first = endpoint.requests[0]
    assert first[1] is False and first[0] < SIZE
    time.sleep(1.0)  # nothing more is pushed while suspended
    assert len(endpoint.requests) == 1
    assert transfer_view(consumer, tid)["state"] == "SUSPENDED"
    assert usage_of(provider, agreement) == []

    endpoint.slow.clear()
    _act(consumer, tid, "resume")
    done = wait_until(lambda: transfer_view(consumer, tid)["state"] in ("COMPLETED", "TERMINATED") and transfer_view(consumer, tid),
                 f"the transfer to end {endpoint.requests} {provider.log_tail()}", timeout=60)  # fmt: skip
    assert done["state"] == "COMPLETED", done
    assert [r[1] for r in endpoint.requests] == [False, True]  # pushed again, from the start, once
    events = usage_of(provider, agreement)
    assert [(e["bytes"], e["outcome"]) for e in events] == [(SIZE, "ok")]


def test_a_push_terminated_midway_stops_and_meters_nothing(
    nodes: tuple[Node, Node], endpoint: SlowEndpoint, tmp_path: Path
) -> None:
    provider, consumer = nodes
    agreement = _large_agreement(provider, consumer, tmp_path)
    tid = request_transfer(
        consumer, provider, agreement, "HttpData-PUSH", dataDestination={"endpoint": endpoint.url}
    )
    wait_until(
        lambda: endpoint.requests and endpoint.requests[0][0] > 1024 * 1024, "the push to be streaming"
    )
    _act(consumer, tid, "terminate")
    wait_until(
        lambda: transfer_view(provider, _provider_tid(provider, tid))["state"] == "TERMINATED",
        "provider TERMINATED",
    )
    wait_until(lambda: not _still_open(endpoint), "the push to stop")
    endpoint.slow.clear()
    time.sleep(1.0)
    assert len(endpoint.requests) == 1 and endpoint.requests[0][1] is False
    assert transfer_view(consumer, tid)["state"] == "TERMINATED"
    assert usage_of(provider, agreement) == []


def _still_open(endpoint: SlowEndpoint) -> bool:
    """Whether the endpoint's last request is still being read (its byte count still grows)."""
    before = endpoint.requests[-1][0]
    time.sleep(0.3)
    return bool(endpoint.requests[-1][0] != before)


class SlowSource:
    """An HTTP data source of ``SIZE`` random bytes, sent 256 KiB every 20 ms while ``slow`` is set;
    ``sent`` counts the bytes of the request being answered."""

    def __init__(self) -> None:
        self.body = os.urandom(SIZE)
        self.slow = threading.Event()
        self.slow.set()
        self.sent = 0
        self.listener, port = serve_connections(self._answer)
        self.url = f"http://127.0.0.1:{port}/export.bin"

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                piece = conn.recv(65536)
                if not piece:
                    return
                head += piece
            self.sent = 0
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % SIZE)  # fmt: skip
                for at in range(0, SIZE, 256 * 1024):
                    if self.slow.is_set():
                        time.sleep(0.02)
                    conn.sendall(self.body[at : at + 256 * 1024])
                    self.sent = at + len(self.body[at : at + 256 * 1024])
            except OSError:
                return


@pytest.mark.s3
@pytest.mark.slow
def test_an_s3_push_suspended_midway_leaves_no_object_and_is_pushed_whole_after_resume(
    s3_server: Any, tmp_path: Path
) -> None:
    from connector.dataplane import S3Config

    s3: S3Config = s3_server
    env = {"DADAM_S3_ENDPOINT": s3.endpoint, "DADAM_S3_ACCESS_KEY": s3.access_key,
           "DADAM_S3_SECRET_KEY": s3.secret_key, "DADAM_PUSH_PART_BYTES": str(5 * 1024 * 1024)}  # fmt: skip
    source = SlowSource()
    client = s3.client()
    bucket = f"interrupted-{os.getpid()}-{int(time.time())}"
    client.make_bucket(bucket)
    try:
        with connectors(tmp_path, env, env) as (provider, consumer):
            seed_provider(provider)
            record_partner(provider, consumer)
            base = next(d for d in sample_datasets() if d.id == "bom-brake-assembly-as-built")
            ds = base.model_copy(update={"id": "bom-slow-export", "media_type": "application/octet-stream",
                                         "byte_size": None,
                                         "data_address": DataAddress(type="http", properties={"url": source.url})})  # fmt: skip
            with provider.client() as c:
                r = c.post("/datasets", json=ds.model_dump(mode="json", by_alias=True))
                assert r.status_code in (200, 201), r.text
            found = next(
                d for d in fetch_catalog(consumer, provider)["dataset"] if d["@id"] == "bom-slow-export"
            )
            agreement = str(negotiate(consumer, provider, found["hasPolicy"][0]["@id"])["agreement"]["@id"])
            tid = request_transfer(consumer, provider, agreement, "AmazonS3-PUSH",
                                   dataDestination={"bucketName": bucket, "objectName": "in/x.bin"})  # fmt: skip
            # more than one 5 MiB part has been read from the source, so an upload is under way
            wait_until(lambda: source.sent > 7 * 1024 * 1024, "the push to be streaming")
            assert _uploads(client, bucket) == ["in/x.bin"]  # the listing sees an upload under way
            _act(consumer, tid, "suspend")
            wait_until(
                lambda: transfer_view(provider, _provider_tid(provider, tid))["state"] == "SUSPENDED",
                "SUSPENDED",
            )
            wait_until(lambda: _settled(source), "the provider to stop reading its source")
            assert source.sent < SIZE
            assert not list(client.list_objects(bucket, recursive=True))
            # the multipart upload that had begun was aborted: no parts are left behind in the bucket
            assert _uploads(client, bucket) == []
            source.slow.clear()
            _act(consumer, tid, "resume")
            done = wait_until(lambda: transfer_view(consumer, tid)["state"] in ("COMPLETED", "TERMINATED") and transfer_view(consumer, tid),
                         "the transfer to end", timeout=60)  # fmt: skip
            assert done["state"] == "COMPLETED", done
            got = client.get_object(bucket, "in/x.bin")
            try:
                assert got.read() == source.body
            finally:
                got.close()
                got.release_conn()
            assert [(e["bytes"], e["outcome"]) for e in usage_of(provider, agreement)] == [(SIZE, "ok")]
    finally:
        source.listener.close()


def _settled(source: SlowSource) -> bool:
    """Whether the source sent nothing more for half a second."""
    before = source.sent
    time.sleep(0.5)
    return source.sent == before


def _uploads(client: Any, bucket: str) -> list[str]:
    """The multipart uploads still open in ``bucket`` (minio has no public call for it)."""
    result = client._list_multipart_uploads(bucket)
    return [u.object_name for u in result.uploads]
