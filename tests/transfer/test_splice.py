"""The splice relay of large S3 pulls (decision 0453), against a real uvicorn server (httptools, as
`dadam serve` runs it) and a scripted source: whole bodies and counted bodies arrive intact over a
kept-alive connection, the usage outcome is ``ok`` only for a body that was sent whole, a source
that cuts off or a client that goes away is metered ``partial`` with the bytes sent, and a source
that fails before the head is answered 502 with the reason."""

from __future__ import annotations

import functools
import http.client
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from transfer_nodes import serve_connections

from connector.dataplane._public import _Prepared, _Relays, _spliced, _SplicedResponse
from connector.dataplane._records import RecordCounter
from connector.dataplane._splice import (
    KEEP_LAST,
    ConnectionApp,
    RelayError,
    UpstreamResponse,
    client_connection,
    relay,
    splice_supported,
)

pytestmark = pytest.mark.skipif(not splice_supported(True), reason="splice(2) and tee(2) are Linux-only")

MiB = 1024 * 1024


class Source:
    """A scripted HTTP source: ``GET /name`` answers what :meth:`add` set by its ``mode``: ``ok``,
    ``cut`` (half the body, then close), ``404``, ``chunked``, ``silent`` (head, then nothing)."""

    def __init__(self) -> None:
        self.bodies: dict[str, tuple[str, bytes, str]] = {}
        self.open: list[socket.socket] = []
        self.relays: Any = None  # the server's relay slots (set by the fixture)
        self.listener, self.port = serve_connections(self._answer)

    def add(
        self, name: str, body: bytes, media_type: str = "application/octet-stream", mode: str = "ok"
    ) -> None:
        self.bodies[name] = (media_type, body, mode)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def _answer(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        name = head.split(b" ", 2)[1].decode().lstrip("/")
        _, body, mode = self.bodies[name]
        length = f"Content-Length: {len(body)}\r\n".encode()
        try:
            if mode == "404":
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            elif mode == "chunked":
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            elif mode == "silent":
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + length + b"\r\n")
                self.open.append(conn)
                return
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + length + b"\r\n")
                conn.sendall(body if mode == "ok" else body[: len(body) // 2])
        except OSError:
            pass
        conn.close()


@pytest.fixture
def served(uvicorn_thread: Callable[..., int]) -> Iterator[tuple[str, Source, list[tuple[str, int, int]]]]:
    """(base URL of a uvicorn server whose ``/pull/{name}`` splices ``Source`` bodies, the source,
    the usage outcomes recorded: (outcome, bytes, records))."""
    source = Source()
    outcomes: list[tuple[str, int, int]] = []
    relays = source.relays = _Relays()
    app = ConnectionApp()

    @app.get("/pull/{name}")
    async def pull(name: str, request: Request) -> Response:
        connection = client_connection(request.scope)
        if connection is None:
            return JSONResponse({"error": "the client connection is not reachable"}, status_code=500)
        media_type, body, _ = source.bodies[name]
        counter = RecordCounter(media_type)
        prepared = _Prepared("s3", {}, None, 200, {"Content-Length": str(len(body))}, media_type,
                             url=source.url(name), start=0, end=len(body) - 1)  # fmt: skip

        async def finish(outcome: str, nbytes: int) -> None:
            outcomes.append((outcome, nbytes, counter.total()))

        relays.running += 1
        return _SplicedResponse(
            functools.partial(_spliced, prepared, counter, connection, name, finish, relays)
        )

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"ok": "yes"}

    port = uvicorn_thread(app)
    try:
        yield f"http://127.0.0.1:{port}", source, outcomes
    finally:
        source.listener.close()
        for conn in source.open:
            conn.close()


@pytest.fixture
def connect(served: tuple[str, Source, Any]) -> Iterator[Any]:
    """Opens HTTP connections to the server, closed at the end of the test."""
    opened: list[http.client.HTTPConnection] = []

    def open_one() -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", int(served[0].rsplit(":", 1)[1]), timeout=10)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        conn.close()


def _wait_for(outcomes: list[Any], n: int) -> None:
    deadline = time.time() + 10
    while len(outcomes) < n and time.time() < deadline:
        time.sleep(0.01)


def test_bodies_arrive_whole_on_one_kept_alive_connection_and_are_metered_ok(
    connect: Any, served: tuple[str, Source, list[tuple[str, int, int]]], caplog: pytest.LogCaptureFixture
) -> None:
    _, source, outcomes = served
    big = os.urandom(3 * MiB + 12345)
    small = os.urandom(
        1000
    )  # smaller than the last piece: nothing is spliced, all of it goes through the server
    source.add("big", big)
    source.add("small", small)
    conn = connect()
    got = []
    for path in ("/pull/big", "/pull/small", "/ping", "/pull/big"):
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()[:300]
        got.append(resp.read())
        if path == "/pull/big":
            assert resp.getheader("content-length") == str(len(big))
            assert resp.getheader("content-type") == "application/octet-stream"
        sock = conn.sock
        assert sock is not None  # the server kept the connection open after each response
    assert got == [big, small, b'{"ok":"yes"}', big]
    assert outcomes == [("ok", len(big), 0), ("ok", len(small), 0), ("ok", len(big), 0)]
    deadline = time.time() + 10
    while source.relays.running and time.time() < deadline:
        time.sleep(0.01)
    assert source.relays.running == 0  # every relay gave its slot back
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_counted_body_is_teed_to_the_record_counter(
    connect: Any,
    served: tuple[str, Source, list[tuple[str, int, int]]],
) -> None:
    _, source, outcomes = served
    lines = [json.dumps({"serial": f"{i:010d}", "co2e": i / 7}).encode() for i in range(60_000)]
    body = b"\n".join(lines) + b"\n"
    assert len(body) > 2 * MiB
    source.add("parts", body, "application/x-ndjson")
    conn = connect()
    conn.request("GET", "/pull/parts")
    resp = conn.getresponse()
    assert resp.read() == body
    assert outcomes == [("ok", len(body), 60_000)]


def test_a_source_that_cuts_off_is_metered_partial(
    connect: Any, served: tuple[str, Source, list[tuple[str, int, int]]], caplog: pytest.LogCaptureFixture
) -> None:
    _, source, outcomes = served
    body = os.urandom(4 * MiB)
    source.add("cut", body, mode="cut")
    conn = connect()
    conn.request("GET", "/pull/cut")
    resp = conn.getresponse()
    assert resp.status == 200  # the head had left before the source failed
    with pytest.raises(http.client.IncompleteRead) as cut:
        resp.read()
    assert len(cut.value.partial) == len(body) // 2
    _wait_for(outcomes, 1)
    assert outcomes == [("partial", len(body) // 2, 0)]
    deadline = time.time() + 10  # the slot is given back once the connection is closed
    while source.relays.running and time.time() < deadline:
        time.sleep(0.01)
    assert source.relays.running == 0
    assert "closed the connection before the body ended" in caplog.text
    # the server ended that connection quietly (no "incomplete response" error) and serves others
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    again = connect()
    again.request("GET", "/ping")
    assert again.getresponse().status == 200


def test_a_client_that_goes_away_is_metered_partial(
    served: tuple[str, Source, list[tuple[str, int, int]]],
) -> None:
    base, source, outcomes = served
    body = os.urandom(48 * MiB)
    source.add("big", body)
    client = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    client.sendall(b"GET /pull/big HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while len(received) < MiB:  # the head and some of the body
        received += client.recv(256 * 1024)
    body_received = len(received) - received.index(b"\r\n\r\n") - 4
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # with unread data: a reset
    _wait_for(outcomes, 1)
    assert len(outcomes) == 1
    outcome, sent, _ = outcomes[0]
    assert outcome == "partial"
    assert body_received <= sent < len(body)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("404", "S3 answered 404"), ("chunked", "S3 answered -1 bytes for a range of 5000")],
)
def test_a_source_failing_before_the_body_is_answered_502_and_not_metered(
    connect: Any, served: tuple[str, Source, list[tuple[str, int, int]]], mode: str, reason: str
) -> None:
    _, source, outcomes = served
    source.add("x", b"z" * 5000, mode=mode)
    conn = connect()
    conn.request("GET", "/pull/x")
    resp = conn.getresponse()
    assert resp.status == 502
    answer_body = json.loads(resp.read())
    assert answer_body["error"] == "source_unavailable"
    assert answer_body["message"] == reason
    assert outcomes == []


def _pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    return a, b


def test_relay_moves_all_but_the_last_piece_and_returns_that_piece() -> None:
    body = os.urandom(2 * MiB + 77)
    src_w, src_r = _pair()
    dst_w, dst_r = _pair()
    dst_w.setblocking(False)  # as the server's socket is
    leftover = body[:1000]  # arrived with the head
    threading.Thread(target=lambda: (src_w.sendall(body[1000:]), src_w.close()), daemon=True).start()
    received = bytearray()

    def drain() -> None:
        while piece := dst_r.recv(MiB):
            received.extend(piece)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    seen = bytearray()
    sent, last = relay(
        UpstreamResponse(src_r, 200, {}, len(body), leftover), dst_w.fileno(), feed=seen.extend
    )
    dst_w.close()
    reader.join(10)
    for s in (src_w, src_r, dst_r):
        s.close()
    assert sent == len(body) - KEEP_LAST
    assert bytes(received) + last == body
    assert bytes(seen) == body  # the counter saw every byte, in order


def test_relay_gives_up_on_a_silent_source_with_the_reason() -> None:
    src_w, src_r = _pair()
    dst_w, dst_r = _pair()
    dst_w.setblocking(False)
    src_w.sendall(b"x" * 1000)
    with pytest.raises(RelayError) as stopped:
        relay(UpstreamResponse(src_r, 200, {}, 10 * MiB, b""), dst_w.fileno(), timeout=0.2)
    assert stopped.value.side == "source"
    assert stopped.value.sent == 1000
    assert "sent nothing for 0.2 s" in stopped.value.message
    for s in (src_w, src_r, dst_w, dst_r):
        s.close()


def test_concurrent_relays_each_deliver_their_own_body(
    connect: Any, served: tuple[str, Source, list[tuple[str, int, int]]]
) -> None:
    _, source, outcomes = served
    bodies = {f"b{i}": os.urandom(6 * MiB + i) for i in range(8)}
    for name, body in bodies.items():
        source.add(name, body)
    got: dict[str, bytes] = {}
    conns = {name: connect() for name in bodies}

    def fetch(name: str) -> None:
        conns[name].request("GET", f"/pull/{name}")
        got[name] = conns[name].getresponse().read()

    threads = [threading.Thread(target=fetch, args=(name,)) for name in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == bodies
    assert sorted(outcomes) == sorted(("ok", len(b), 0) for b in bodies.values())
