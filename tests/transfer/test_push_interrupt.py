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
from transfer_nodes import BACKENDS, backend_env, connectors

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
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/incoming"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

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


def _wait(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _state(node: Node, tid: str) -> dict[str, Any]:
    with node.client() as c:
        view: dict[str, Any] = c.get(f"/transfers/{quote(tid, safe='')}").json()
        return view


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
    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                                       "agreementId": agreement, "format": "HttpData-PUSH",
                                       "dataDestination": {"endpoint": endpoint.url}})  # fmt: skip
        assert r.status_code == 201, r.text
        tid = str(r.json()["id"])
    _wait(lambda: endpoint.requests and endpoint.requests[0][0] > 1024 * 1024, "the push to be streaming")
    _act(consumer, tid, "suspend")
    _wait(
        lambda: _state(provider, _provider_tid(provider, tid))["state"] == "SUSPENDED", "provider SUSPENDED"
    )
    # the provider gives up the request: the endpoint sees it end, short of the whole body
    _wait(lambda: endpoint.requests[0][0] < SIZE and not _still_open(endpoint), "the first push to stop")
    first = endpoint.requests[0]
    assert first[1] is False and first[0] < SIZE
    time.sleep(1.0)  # nothing more is pushed while suspended
    assert len(endpoint.requests) == 1
    assert _state(consumer, tid)["state"] == "SUSPENDED"
    assert usage_of(provider, agreement) == []

    endpoint.slow.clear()
    _act(consumer, tid, "resume")
    done = _wait(lambda: _state(consumer, tid)["state"] in ("COMPLETED", "TERMINATED") and _state(consumer, tid),
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
    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                                       "agreementId": agreement, "format": "HttpData-PUSH",
                                       "dataDestination": {"endpoint": endpoint.url}})  # fmt: skip
        assert r.status_code == 201, r.text
        tid = str(r.json()["id"])
    _wait(lambda: endpoint.requests and endpoint.requests[0][0] > 1024 * 1024, "the push to be streaming")
    _act(consumer, tid, "terminate")
    _wait(
        lambda: _state(provider, _provider_tid(provider, tid))["state"] == "TERMINATED", "provider TERMINATED"
    )
    _wait(lambda: not _still_open(endpoint), "the push to stop")
    endpoint.slow.clear()
    time.sleep(1.0)
    assert len(endpoint.requests) == 1 and endpoint.requests[0][1] is False
    assert _state(consumer, tid)["state"] == "TERMINATED"
    assert usage_of(provider, agreement) == []


def _still_open(endpoint: SlowEndpoint) -> bool:
    """Whether the endpoint's last request is still being read (its byte count still grows)."""
    before = endpoint.requests[-1][0]
    time.sleep(0.3)
    return bool(endpoint.requests[-1][0] != before)
