"""The DSP fast lane inside uvicorn's httptools protocol (decision 0412), against real uvicorn
servers on loopback: a client gets byte for byte the answers the ASGI lane gives (headers but
the date, bodies, errors, limits), over kept-alive and pipelined connections; what the lane does
not serve goes to the application; the reply's deferred work runs after the reply, also when the
client went away; authentication that has to wait still works."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from connector.api import install_error_handlers
from connector.api._fastlane import DspFastLane, FastRoute
from connector.api._protocol import fast_lanes, lane_protocol
from connector.errors import TokenError, ValidationError

LIMIT = 2048


class Node:
    """What the test app saw: which path served each lane request, the deferred work done."""

    def __init__(self) -> None:
        self.asgi_lane: list[str] = []
        self.deferred: list[str] = []
        self.release = threading.Event()
        self.slow_started = threading.Event()


class CountingLane(DspFastLane):
    """The ASGI lane, noting each request it serves itself."""

    node: Node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self.match(scope["path"]) is not None:
            self.node.asgi_lane.append(scope["path"])
        await super().__call__(scope, receive, send)


def build(node: Node) -> Any:
    app = FastAPI()
    install_error_handlers(app, dsp_path="/dsp")

    @app.get("/dsp/things/{tid}/echo")
    async def framework_get(tid: str) -> dict[str, Any]:
        return {"framework": tid}

    @app.post("/dsp/other")
    async def framework_post() -> dict[str, Any]:
        return {"framework": "other"}

    def echo(
        params: Mapping[str, str], body: Any, caller: Any, defer: Callable[[Callable[[], None]], None]
    ) -> tuple[int, Any]:
        defer(lambda: node.deferred.append(params["tid"]))
        return 200, {"tid": params["tid"], "body": body, "caller": caller}

    def boom(params: Mapping[str, str], body: Any, caller: Any, defer: Any) -> tuple[int, Any]:
        raise RuntimeError("a bug in a handler")

    def refuse(params: Mapping[str, str], body: Any, caller: Any, defer: Any) -> tuple[int, Any]:
        raise ValidationError("this message is not allowed now", errors=["state: FINALIZED"])

    def slow(
        params: Mapping[str, str], body: Any, caller: Any, defer: Callable[[Callable[[], None]], None]
    ) -> tuple[int, Any]:
        defer(lambda: node.deferred.append("slow"))
        node.slow_started.set()
        node.release.wait(10)
        return 201, {"slow": True}

    async def authenticate(headers: Mapping[str, str], defer_replay: bool) -> Callable[[], Any]:
        who = headers.get("x-caller", "")
        if headers.get("x-wait"):
            await asyncio.sleep(0.01)  # as a DID document fetch would
        if who == "bad":
            raise TokenError("token is for someone else")
        return lambda: who or "nobody"

    def authenticate_now(headers: Mapping[str, str], defer_replay: bool) -> Callable[[], Any] | None:
        if headers.get("x-wait"):
            return None
        who = headers.get("x-caller", "")
        if who == "bad":
            raise TokenError("token is for someone else")
        return lambda: who or "nobody"

    lane = CountingLane(
        app,
        prefix="/dsp",
        routes=[
            FastRoute("/things/{tid}/echo", echo),
            FastRoute("/things/{tid}/boom", boom),
            FastRoute("/things/{tid}/refuse", refuse),
            FastRoute("/slow", slow),
        ],
        authenticate=authenticate,
        authenticate_now=authenticate_now,
        dsp_path="/dsp",
        max_bytes=LIMIT,
    )
    lane.node = node
    return lane


@pytest.fixture
def lane_node(uvicorn_thread: Callable[..., int]) -> tuple[int, Node]:
    node = Node()
    app = build(node)
    return uvicorn_thread(app, http=lane_protocol(fast_lanes(app))), node


@pytest.fixture
def asgi_node(uvicorn_thread: Callable[..., int]) -> tuple[int, Node]:
    node = Node()
    return uvicorn_thread(build(node)), node


def post(
    path: str, body: bytes = b"{}", headers: dict[str, str] | None = None, *, chunked: bool = False
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 700]), body[i : i + 700]) for i in range(0, len(body), 700)
        )
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload + b"0\r\n\r\n"
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_responses(
    sock: socket.socket, n: int, timeout: float = 10
) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    """``n`` responses off ``sock`` (Content-Length framed): (status, headers but the date, body)."""
    sock.settimeout(timeout)
    buf = b""
    out: list[tuple[int, list[tuple[str, str]], bytes]] = []
    while len(out) < n:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end].decode("latin-1").split("\r\n")
            headers = [tuple(h.split(": ", 1)) for h in head[1:]]
            length = int(next(v for k, v in headers if k.lower() == "content-length"))
            if len(buf) >= head_end + 4 + length:
                body = buf[head_end + 4 : head_end + 4 + length]
                buf = buf[head_end + 4 + length :]
                status = int(head[0].split(" ")[1])
                out.append((status, [(k, v) for k, v in headers if k.lower() != "date"], body))
                continue
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {len(out)} of {n} responses")
        buf += chunk
    return out


def exchange(
    port: int, requests: list[bytes], *, pipelined: bool = False
) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        if pipelined:
            sock.sendall(b"".join(requests))
            return read_responses(sock, len(requests))
        out = []
        for r in requests:
            sock.sendall(r)
            out += read_responses(sock, 1)
        return out


CASES = [
    post("/dsp/things/t1/echo", b'{"a": 1}', {"x-caller": "did:web:a"}),
    post("/dsp/things/t%32/echo", b'{"b": [1, 2]}'),  # percent-encoded path
    post("/dsp/things/t3/echo", b'{"c": "' + b"x" * 1500 + b'"}', {"x-caller": "did:web:a"}, chunked=True),
    post("/dsp/things/t4/echo", b"x" * 3000),  # Content-Length over the limit
    post("/dsp/things/t5/echo", b"not json"),
    post("/dsp/things/t6/echo", b"{}", {"x-caller": "bad"}),
    post("/dsp/things/t7/echo", b"{}", {"x-caller": "did:web:w", "x-wait": "1"}),  # authentication waits
    post("/dsp/things/t8/boom"),
    post("/dsp/things/t9/refuse"),
    post("/dsp/other"),
    post("/dsp/nothing/here"),
    b"GET /dsp/things/t10/echo HTTP/1.1\r\nHost: x\r\n\r\n",
    post("/dsp/things/t11/echo", b'{"c": "' + b"x" * 3000 + b'"}', {"x-caller": "bad"}, chunked=True),
]


def test_the_protocol_lane_answers_as_the_asgi_lane_does(
    lane_node: tuple[int, Node], asgi_node: tuple[int, Node]
) -> None:
    lane_port, lane = lane_node
    asgi_port, asgi = asgi_node
    via_protocol = exchange(lane_port, CASES)
    via_asgi = exchange(asgi_port, CASES)
    assert [r[0] for r in via_asgi] == [200, 200, 200, 413, 400, 401, 200, 500, 400, 200, 404, 200, 401]
    assert via_protocol == via_asgi
    assert b'"caller":"did:web:w"' in via_protocol[6][2]
    # the protocol served every lane request itself; the ASGI server, through the ASGI lane
    assert lane.asgi_lane == []
    assert len(asgi.asgi_lane) == 10
    assert lane.deferred == asgi.deferred == ["t1", "t2", "t3", "t7"]


def test_kept_alive_and_pipelined_requests_are_answered_in_order(lane_node: tuple[int, Node]) -> None:
    port, node = lane_node
    requests = [post(f"/dsp/things/p{i}/echo", b'{"i": %d}' % i) for i in range(6)]
    requests.insert(3, post("/dsp/other"))
    answers = exchange(port, requests, pipelined=True)
    assert [r[0] for r in answers] == [200] * 7
    assert [r[2] for r in answers] == [
        *(b'{"tid":"p%d","body":{"i":%d},"caller":"nobody"}' % (i, i) for i in range(3)),
        b'{"framework":"other"}',
        *(b'{"tid":"p%d","body":{"i":%d},"caller":"nobody"}' % (i, i) for i in range(3, 6)),
    ]
    assert node.deferred == [f"p{i}" for i in range(6)]
    # one after the other on a kept-alive connection: the protocol serves them all itself
    node.asgi_lane.clear()
    answers = exchange(port, [post(f"/dsp/things/k{i}/echo") for i in range(4)])
    assert [r[0] for r in answers] == [200] * 4
    assert node.asgi_lane == []


def test_a_closing_request_gets_connection_close_and_the_server_closes(lane_node: tuple[int, Node]) -> None:
    port, _ = lane_node
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/dsp/things/c1/echo", headers={"Connection": "close"}))
        ((status, headers, _),) = read_responses(sock, 1)
        assert status == 200
        assert ("connection", "close") in headers
        sock.settimeout(5)
        assert sock.recv(100) == b""  # closed by the server
    with socket.create_connection(("127.0.0.1", port)) as sock:  # HTTP/1.0: no keep-alive
        sock.sendall(post("/dsp/things/c2/echo").replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        ((status, headers, _),) = read_responses(sock, 1)
        assert status == 200 and ("connection", "close") in headers


def test_a_client_that_goes_away_leaves_the_deferred_work_done_and_the_server_serving(
    lane_node: tuple[int, Node],
) -> None:
    port, node = lane_node
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(post("/dsp/slow"))
    assert node.slow_started.wait(5)
    sock.close()
    time.sleep(0.1)
    node.release.set()
    deadline = time.time() + 5
    while "slow" not in node.deferred and time.time() < deadline:
        time.sleep(0.01)
    assert node.deferred == ["slow"]  # the state change was made: its reply to the peer still goes
    assert exchange(port, [post("/dsp/things/after/echo")])[0][0] == 200


def test_the_lanes_are_found_at_the_front_of_the_app() -> None:
    node = Node()
    inner = build(node)
    outer = DspFastLane(inner, prefix="/mgmt", routes=[], authenticate=inner.authenticate, dsp_path="/dsp")

    class Front:
        fast_lane = outer

    assert fast_lanes(Front()) == [outer, inner]
    assert fast_lanes(FastAPI()) == []
    assert re.fullmatch(r"LaneHttpProtocol", lane_protocol([inner]).__name__)
