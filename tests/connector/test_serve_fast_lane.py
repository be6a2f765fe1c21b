"""``dadam serve``'s DSP fast lane (decisions 0405, 0409): on by default, in front of the
framework with the same body limit, token checks and error answers as the FastAPI routes
(DADAM_DSP_FAST_LANE=false); the management API's start of a negotiation likewise."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from connector_testing import CTX, DSP, TestClient
from pydantic import SecretStr

from connector.api._fastlane import DspFastLane, FastRoute
from connector.app import create_app
from connector.errors import TokenError
from connector.settings import Settings


def _answers(tmp_path: Path, sqlite_url: str, fast: bool) -> list[tuple[int, Any]]:
    settings = Settings(
        public_url="http://127.0.0.1:8181",
        data_dir=tmp_path / ("fast" if fast else "framework"),
        database_url=SecretStr(sqlite_url.replace(".db", f"-{fast}.db")),
        max_body_bytes=4096,
        dsp_fast_lane=fast,
    )
    request = {
        "@context": CTX,
        "@type": "ContractRequestMessage",
        "consumerPid": "urn:uuid:c1",
        "offer": {"@id": "x", "permission": [{"action": "use"}]},
        "callbackAddress": "http://127.0.0.1:9/cb",
    }
    out = []
    with TestClient(create_app(settings)) as c:
        for path, headers, body in [
            ("/negotiations/request", {}, request),
            ("/negotiations/request", {"Authorization": "Bearer not-a-jwt"}, request),
            ("/negotiations/urn:uuid:p1/termination", {"Authorization": "Basic abc"}, request),
            ("/negotiations/request", {}, {**request, "padding": "x" * 5000}),  # over the body limit
        ]:
            r = c.post(f"{DSP}{path}", json=body, headers=headers)
            out.append((r.status_code, r.json()))
    return out


def test_serve_fast_lane_refuses_as_the_framework_does(
    tmp_path: Path, sqlite_url: str, fast_lane_served: list[str]
) -> None:
    served = fast_lane_served
    framework = _answers(tmp_path, sqlite_url, fast=False)
    assert served == []
    fast = _answers(tmp_path, sqlite_url, fast=True)
    # the lane is in front of the framework, body limit included: it refuses the oversize body
    assert served == [f"{DSP}/negotiations/request"] * 2 + [f"{DSP}/negotiations/urn:uuid:p1/termination"] + [
        f"{DSP}/negotiations/request"
    ]
    assert fast == framework
    assert [s for s, _ in fast] == [401, 401, 401, 413]
    assert all(body["@type"] == "ContractNegotiationError" for _, body in fast)


def _lane(max_bytes: int | None = None) -> tuple[DspFastLane, list[str]]:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # the framework behind the lane
        calls.append(f"app {scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def handler(params: Any, body: Any, caller: Any, defer: Any) -> tuple[int, Any]:
        if body.get("boom"):
            raise RuntimeError("handler bug")
        defer(lambda: calls.append("deferred"))
        calls.append(f"handler {params['pid']} {caller} {body['n']}")
        return 200, {"ok": params["pid"]}

    async def authenticate(headers: Any, defer_replay: bool) -> Any:
        who = headers.get("x-who", "nobody")
        if who == "did:web:unresolvable":
            raise TokenError("cannot resolve did:web:unresolvable")

        def finish() -> str:  # in the worker thread, before the body is parsed
            if who == "did:web:forged":
                raise TokenError("JWS signature does not verify")
            return str(who)

        return finish

    lane = DspFastLane(
        app,
        prefix="/dsp",
        routes=[FastRoute("/negotiations/{pid}/termination", handler)],
        authenticate=authenticate,
        dsp_path="/dsp",
        max_bytes=max_bytes,
    )
    return lane, calls


def _call(
    lane: DspFastLane,
    method: str,
    path: str,
    body: bytes,
    root_path: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    chunks = [body[:3], body[3:]]  # a body in two pieces

    async def receive() -> dict[str, Any]:
        piece = chunks.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    if headers is None:
        headers = [(b"x-who", b"did:web:a"), (b"x-who", b"did:web:b")]
    scope = {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": headers}
    asyncio.run(lane(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_lane_matches_posts_on_its_routes_only_and_defers_after_the_reply() -> None:
    lane, calls = _lane()
    assert _call(lane, "POST", "/dsp/negotiations/p%201/termination", b'{"n": 1}') == (200, b'{"ok":"p%201"}')
    # the first of repeated headers, as Starlette; deferred work after the reply
    assert calls == ["handler p%201 did:web:a 1", "deferred"]
    calls.clear()
    assert _call(lane, "GET", "/dsp/negotiations/p1/termination", b"")[0] == 299
    assert _call(lane, "POST", "/dsp/negotiations/p1/termination/", b"{}")[0] == 299
    assert _call(lane, "POST", "/dsp/negotiations/a/b/termination", b"{}")[0] == 299
    assert _call(lane, "POST", "/other/negotiations/p1/termination", b"{}")[0] == 299
    assert len(calls) == 4 and all(c.startswith("app ") for c in calls)
    # behind a proxy prefix (ASGI root_path), as Starlette's router matches
    assert _call(lane, "POST", "/proxy/dsp/negotiations/p2/termination", b'{"n": 2}', "/proxy")[0] == 200


def test_lane_errors_are_dsp_errors(caplog: pytest.LogCaptureFixture) -> None:
    lane, calls = _lane()
    status, body = _call(lane, "POST", "/dsp/negotiations/p1/termination", b"{nope")
    assert status == 400 and b"request body is not JSON" in body
    status, body = _call(lane, "POST", "/dsp/negotiations/p1/termination", b'{"boom": true}')
    assert status == 500 and b"ContractNegotiationError" in body
    assert "unhandled error serving POST /dsp/negotiations/p1/termination" in caplog.text
    assert calls == []  # nothing deferred when the handler failed


def test_lane_checks_the_token_before_the_body_and_limits_the_body() -> None:
    lane, calls = _lane(max_bytes=16)
    path = "/dsp/negotiations/p1/termination"
    for who in (b"did:web:unresolvable", b"did:web:forged"):
        # a refused token is a 401 whatever the body, as on the framework's routes
        status, body = _call(lane, "POST", path, b"{nope", headers=[(b"x-who", who)])
        assert status == 401 and b"ContractNegotiationError" in body, body
    # over the limit: declared, or found while reading a body without a length
    status, body = _call(lane, "POST", path, b'{"n": 1}', headers=[(b"content-length", b"99")])
    assert status == 413 and b"exceeds the limit of 16 bytes" in body
    status, body = _call(lane, "POST", path, b'{"n": 1, "pad": "xxxxxxxx"}', headers=[])
    assert status == 413 and b"exceeds the limit of 16 bytes" in body
    status, body = _call(lane, "POST", path, b'{"n": 1}', headers=[(b"content-length", b"many")])
    assert status == 400 and b"invalid Content-Length header" in body
    assert calls == []
    assert _call(lane, "POST", path, b'{"n": 1}', headers=[(b"content-length", b"8")]) == (
        200,
        b'{"ok":"p1"}',
    )


def _management_answers(tmp_path: Path, sqlite_url: str, fast: bool) -> list[tuple[int, Any]]:
    settings = Settings(
        public_url="http://127.0.0.1:8181",
        data_dir=tmp_path / ("mfast" if fast else "mframework"),
        database_url=SecretStr(sqlite_url.replace(".db", f"-m{fast}.db")),
        api_key=SecretStr("the-key"),
        max_body_bytes=4096,
        dsp_fast_lane=fast,
    )
    good = {
        "counterPartyAddress": "http://127.0.0.1:9/dsp",  # nobody there: the request is retried later
        "counterPartyId": "did:web:127.0.0.1%3A9",
        "offer": {"@id": "cd1:ds1:v1", "target": "ds1", "permission": [{"action": "use"}]},
    }
    key = {"X-Api-Key": "the-key"}
    out: list[tuple[int, Any]] = []
    with TestClient(create_app(settings)) as c:
        for headers, body in [
            ({}, good),
            ({"X-Api-Key": "wrong"}, good),
            ({"Authorization": "Bearer not-a-jwt"}, good),
            (key, [1, 2]),
            (key, {**good, "counterPartyAddress": "ftp://x"}),
            (key, {**good, "callbackAddresses": "http://x"}),
            (key, {**good, "padding": "x" * 5000}),
            (key, good),
        ]:
            r = c.post("/api/management/v1/negotiations", json=body, headers=headers)
            answer = r.json()
            if r.status_code == 201:  # fresh ids and times each run
                answer = {
                    k: v
                    for k, v in answer.items()
                    if k not in ("id", "consumerPid", "createdAt", "updatedAt")
                }
            out.append((r.status_code, answer))
        r = c.post(
            "/api/management/v1/negotiations",
            content=b"{nope",
            headers={**key, "content-type": "application/json"},
        )
        out.append((r.status_code, r.json()))
    return out


def test_management_start_in_the_lane_answers_as_the_framework_does(
    tmp_path: Path, sqlite_url: str, fast_lane_served: list[str]
) -> None:
    framework = _management_answers(tmp_path, sqlite_url, fast=False)
    assert fast_lane_served == []
    fast = _management_answers(tmp_path, sqlite_url, fast=True)
    assert fast_lane_served == ["/api/management/v1/negotiations"] * 9
    assert fast == framework
    assert [s for s, _ in fast] == [401, 401, 401, 400, 400, 400, 413, 201, 400]
    assert fast[-2][1]["state"] == "REQUESTED" or fast[-2][1]["internalState"] == "REQUESTING"
