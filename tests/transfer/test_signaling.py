"""Data plane signaling over HTTP (decision record 0452).

The data plane's signaling endpoints in-process (authentication, idempotent and deduplicated
signals, unknown flows, transitions), then a provider control plane driving a separate
``dadam dataplane`` process over HTTP signaling: a pull (the EDR comes from the data plane's start
answer; suspend, resume and terminate reach the data plane as signals and decide what it serves)
and a push (the data plane calls back ``completed``), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from threaded_server import serve_in_thread
from transfer_nodes import (
    BACKENDS,
    backend_env,
    bom_agreement,
    flow_status,
    split_connectors,
    transfer_view,
    wait_health,
    wait_until,
)
from uvicorn.config import LOGGING_CONFIG

from connector._demo import (
    Node,
    free_port,
    pull,
    start_node,
    stop_node,
    usage_of,
    wait_ready,
)
from connector.dataplane._flows import flows as flows_table
from connector.dataplane._signal_auth import (
    CONTROL_PLANE,
    DATA_PLANE,
    SignalAuth,
    sign_signal,
    verify_signal,
)
from connector.errors import TokenError
from connector.settings import Settings

SECRET = "s3cret-for-signaling-tests-0123456789"
KEY = SECRET.encode()


# ---------------------------------------------------------------------- tokens
def test_signal_tokens_bind_issuer_audience_body_and_time() -> None:
    token = sign_signal(KEY, issuer=CONTROL_PLANE, audience="/api/signaling/v1/dataflows/start", body=b"{}")
    ok = verify_signal(KEY, f"Bearer {token}", issuer=CONTROL_PLANE,
                       audience="/api/signaling/v1/dataflows/start", body=b"{}")  # fmt: skip
    assert ok["iss"] == CONTROL_PLANE
    cases: dict[str, dict[str, Any]] = {
        "another secret": {"secret": b"x" * 40},
        "for '/api/signaling/v1/dataflows/start', not": {
            "audience": "/api/signaling/v1/dataflows/f/terminate"
        },
        "another request body": {"body": b'{"reason": "x"}'},
        "expected 'dadam-data-plane'": {"issuer": DATA_PLANE},
    }
    for reason, change in cases.items():
        args: dict[str, Any] = {"secret": KEY, "issuer": CONTROL_PLANE,
                                "audience": "/api/signaling/v1/dataflows/start", "body": b"{}", **change}  # fmt: skip
        with pytest.raises(TokenError, match=reason):
            verify_signal(args.pop("secret"), f"Bearer {token}", **args)
    old = sign_signal(KEY, issuer=CONTROL_PLANE, audience="/a", body=b"", now=time.time() - 600)
    with pytest.raises(TokenError, match="expired"):
        verify_signal(KEY, f"Bearer {old}", issuer=CONTROL_PLANE, audience="/a", body=b"")
    with pytest.raises(TokenError, match="without a bearer token"):
        verify_signal(KEY, None, issuer=CONTROL_PLANE, audience="/a", body=b"")
    assert SECRET not in repr(SignalAuth(KEY, CONTROL_PLANE))
    settings = Settings(dataplane_signaling_secret=SecretStr(SECRET))
    assert SECRET not in repr(settings) and SECRET not in str(settings.dataplane_signaling_secret)


def test_signaling_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="needs dataplane_signaling_secret"):
        Settings(dataplane_signaling_url="http://127.0.0.1:1/api/signaling", dataplane_embedded=False)
    with pytest.raises(ValueError, match="dataplane_embedded=false"):
        Settings(
            dataplane_signaling_url="http://127.0.0.1:1/api/signaling",
            dataplane_signaling_secret=SecretStr(SECRET),
        )
    with pytest.raises(ValueError, match="at least 32"):
        Settings(dataplane_signaling_secret=SecretStr("short"))


# ---------------------------------------------------------------------- the endpoints, in-process
#: how these tests serve an app in a thread: uvicorn's defaults (the data plane's lifespan runs)
#: apart from these; 30 s to start
SERVE: dict[str, Any] = {"log_level": "warning", "ws": "none", "timeout": 30}


@pytest.fixture
def dataplane_app(
    db_url: str, tmp_path: Path, uvicorn_thread: Callable[..., int]
) -> Iterator[tuple[httpx.Client, Any]]:
    """``dadam dataplane``'s app in signaling mode, served by uvicorn on loopback in a thread."""
    from connector.dataplane._service import create_dataplane_app

    settings = Settings(
        database_url=SecretStr(db_url), data_dir=tmp_path, public_url="http://127.0.0.1:9",
        dataplane_public_url="http://127.0.0.1:10", dataplane_signaling_secret=SecretStr(SECRET),
        worker_poll_ms=50, send_retry_base_ms=50,
    )  # fmt: skip
    app = create_dataplane_app(settings)
    # the fixture's own defaults are httptools, no lifespan, no log config: uvicorn's instead
    port = uvicorn_thread(app, http="auto", lifespan="auto", log_config=LOGGING_CONFIG, **SERVE)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client, app


@pytest.fixture
def dataplane(dataplane_app: tuple[httpx.Client, Any]) -> httpx.Client:
    return dataplane_app[0]


CP = SignalAuth(KEY, CONTROL_PLANE)
BASE = "/api/signaling/v1/dataflows"


def _start(client: httpx.Client, flow: str, mid: str, **extra: Any) -> httpx.Response:
    body = {"@id": mid, "flowId": flow, "processId": flow, "agreementId": "agr-1", "datasetId": "ds-1",
            "transferType": "HttpData-PULL", "participantId": "did:web:consumer",
            "callbackAddress": "http://127.0.0.1:9/api/signaling", **extra}  # fmt: skip
    return client.post(f"{BASE}/start", json=body, auth=CP)


def _signal(client: httpx.Client, flow: str, name: str, mid: str, **extra: Any) -> httpx.Response:
    return client.post(f"{BASE}/{flow}/{name}", json={"@id": mid, **extra}, auth=CP)


def test_signaling_endpoints(dataplane: httpx.Client) -> None:
    c = dataplane
    # authentication: none, another secret, a token made for another endpoint, the wrong direction
    assert c.post(f"{BASE}/start", json={}).status_code == 401
    assert c.post(f"{BASE}/start", json={}, auth=SignalAuth(b"y" * 40, CONTROL_PLANE)).status_code == 401
    token = sign_signal(KEY, issuer=CONTROL_PLANE, audience=f"{BASE}/start", body=b'{"@id":"m"}')
    replayed = c.post(
        f"{BASE}/f1/terminate", content=b'{"@id":"m"}', headers={"Authorization": f"Bearer {token}"}
    )
    assert replayed.status_code == 401
    assert "not for '/api/signaling/v1/dataflows/f1/terminate'" in replayed.json()["message"]
    reflected = c.post(f"{BASE}/start", json={"@id": "m"}, auth=SignalAuth(KEY, DATA_PLANE))
    assert reflected.status_code == 401 and "expected 'dadam-control-plane'" in reflected.json()["message"]

    # start: a pull flow answers the EDR of this data plane, bound to the flow and the consumer
    first = _start(c, "f1", "m-start")
    assert first.status_code == 200, first.text
    flow = first.json()
    assert flow["state"] == "STARTED"
    assert flow["dataAddress"]["endpoint"] == "http://127.0.0.1:10/api/public/transfers/f1"
    # resent start (same message id) and a second start: the same flow, still STARTED, a usable EDR
    for mid in ("m-start", "m-start-2"):
        again = _start(c, "f1", mid)
        assert again.status_code == 200 and again.json()["state"] == "STARTED"
        assert again.json()["dataAddress"]["endpoint"] == flow["dataAddress"]["endpoint"]
    assert _start(c, "f1", "m-other", processId="another").status_code == 409
    bad = c.post(f"{BASE}/start", json={"@id": "x", "flowId": "f9"}, auth=CP)
    assert bad.status_code == 400 and "processId: required" in bad.json()["details"]

    # suspend / resume, idempotent; an old resent resume does not undo a later suspend
    assert _signal(c, "f1", "suspend", "s1").json()["state"] == "SUSPENDED"
    assert _signal(c, "f1", "suspend", "s2").json()["state"] == "SUSPENDED"
    resumed = _signal(c, "f1", "resume", "r1")
    assert resumed.json()["state"] == "STARTED" and resumed.json()["dataAddress"]["endpoint"]
    assert _signal(c, "f1", "suspend", "s3").json()["state"] == "SUSPENDED"
    assert _signal(c, "f1", "resume", "r1").json()["state"] == "SUSPENDED"  # a resend: deduplicated
    status = c.get(f"{BASE}/f1/status", auth=CP)
    assert status.status_code == 200 and status.json()["state"] == "SUSPENDED"
    assert "dataAddress" not in status.json()

    # terminate ends it for good, with the reason
    ended = _signal(c, "f1", "terminate", "t1", reason="agreement retired")
    assert ended.json()["state"] == "TERMINATED" and ended.json()["reason"] == "agreement retired"
    assert _signal(c, "f1", "terminate", "t2").status_code == 200
    refused = _signal(c, "f1", "resume", "r2")
    assert refused.status_code == 409 and "TERMINATED" in refused.json()["message"]
    assert _start(c, "f1", "m-start-3").status_code == 409

    # unknown flows
    for name in ("suspend", "resume", "terminate", "completed"):
        assert _signal(c, "nope", name, f"u-{name}").status_code == 404
    assert c.get(f"{BASE}/nope/status", auth=CP).status_code == 404
    assert _signal(c, "f1", "suspend", "").status_code == 400  # no message id

    # prepare, then the provider's started notification
    prepared = c.post(f"{BASE}/prepare", json={"@id": "p1", "flowId": "f2", "processId": "f2", "agreementId": "a",
                                               "transferType": "HttpData-PUSH",
                                               "callbackAddress": "http://127.0.0.1:9"}, auth=CP)  # fmt: skip
    assert prepared.status_code == 200 and prepared.json()["state"] == "PREPARED"
    assert _signal(c, "f2", "started", "p2").json()["state"] == "STARTED"
    assert _signal(c, "f2", "completed", "p3").json()["state"] == "COMPLETED"
    for name in ("suspend", "resume", "terminate"):  # late signals to a delivered flow change nothing
        late = _signal(c, "f2", name, f"late-{name}")
        assert late.status_code == 200 and late.json()["state"] == "COMPLETED"


def _prepare(client: httpx.Client, flow: str, mid: str, **extra: Any) -> httpx.Response:
    body = {"@id": mid, "flowId": flow, "processId": flow, "agreementId": "agr-1",
            "transferType": "HttpData-PUSH", "participantId": "did:web:provider",
            "callbackAddress": "http://127.0.0.1:9/api/signaling", **extra}  # fmt: skip
    return client.post(f"{BASE}/prepare", json=body, auth=CP)


def test_consumer_flow_endpoints(dataplane: httpx.Client) -> None:
    """``prepare`` opens a consumer flow: an HttpData-PUSH gets this data plane's inbox and a secret
    of its own (the same on a resend), a chosen destination is kept; it is never started as a
    provider flow; its inbox takes a push with its secret only, and ends the flow COMPLETED."""
    c = dataplane
    first = _prepare(c, "urn:uuid:c1", "p1")
    assert first.status_code == 200, first.text
    flow = first.json()
    assert flow["state"] == "PREPARED" and flow["side"] == "consumer"
    inbox = flow["dataAddress"]["endpoint"]
    assert inbox == "http://127.0.0.1:10/api/public/inbox/urn:uuid:c1"
    secret = next(
        p["value"] for p in flow["dataAddress"]["endpointProperties"] if p["name"] == "authorization"
    )
    assert len(secret) >= 32
    for mid in ("p1", "p2"):  # a resend, and a second prepare: the same destination and secret
        assert _prepare(c, "urn:uuid:c1", mid).json()["dataAddress"] == flow["dataAddress"]
    other = _prepare(c, "urn:uuid:c2", "p3").json()["dataAddress"]
    assert other["endpointProperties"] != flow["dataAddress"]["endpointProperties"]  # its own secret
    chosen = {"endpoint": "https://sink.example/in", "endpointProperties": []}
    assert _prepare(c, "urn:uuid:c3", "p4", dataAddress=chosen).json()["dataAddress"] == chosen
    s3 = _prepare(c, "urn:uuid:c4", "p5", transferType="AmazonS3-PUSH")
    assert s3.status_code == 400 and "dataAddress: the bucket to receive the push in" in s3.json()["details"]

    # sides do not mix: no `start` for a prepared flow, no `prepare` for a started one
    refused = _start(c, "urn:uuid:c1", "s1", transferType="HttpData-PUSH", dataAddress=chosen)
    assert refused.status_code == 409 and "consumer (prepared) flow" in refused.json()["message"]
    assert _start(c, "f-prov", "s2").status_code == 200
    assert _prepare(c, "f-prov", "p6", transferType="HttpData-PULL").status_code == 409

    # the inbox: wrong secret 403, another flow's secret 403, a pull flow 404; its own: stored, COMPLETED
    assert (
        c.post(
            "/api/public/inbox/urn:uuid:c1", content=b"[1]", headers={"Authorization": "Bearer x"}
        ).status_code
        == 403
    )
    assert c.post("/api/public/inbox/urn:uuid:c2", content=b"[1]",
                  headers={"Authorization": f"Bearer {secret}"}).status_code == 403  # fmt: skip
    pull = _prepare(c, "urn:uuid:c5", "p7", transferType="HttpData-PULL")
    assert pull.status_code == 200 and "dataAddress" not in pull.json()
    assert c.post("/api/public/inbox/urn:uuid:c5", content=b"[1]",
                  headers={"Authorization": f"Bearer {secret}"}).status_code == 404  # fmt: skip
    pushed = c.post("/api/public/inbox/urn:uuid:c1", content=b"[1,2,3]",
                    headers={"Authorization": f"Bearer {secret}", "X-Dadam-Dataset": "ds"})  # fmt: skip
    assert pushed.status_code == 201, pushed.text
    done = c.get(f"{BASE}/urn:uuid:c1/status", auth=CP).json()
    assert done["state"] == "COMPLETED" and done["bytesReceived"] == 7
    # the control plane's `started` (and the rest) may come after the push: answered, not refused
    for name in ("started", "completed"):
        late = _signal(c, "urn:uuid:c1", name, f"late-{name}")
        assert late.status_code == 200 and late.json()["state"] == "COMPLETED"
    ended = _signal(c, "urn:uuid:c2", "terminate", "t-c2")
    assert ended.json()["state"] == "TERMINATED"
    other_secret = next(p["value"] for p in other["endpointProperties"] if p["name"] == "authorization")
    late_push = c.post("/api/public/inbox/urn:uuid:c2", content=b"[1]",
                       headers={"Authorization": f"Bearer {other_secret}"})  # fmt: skip
    assert late_push.status_code == 409 and "TERMINATED" in late_push.text


def test_callbacks_are_resent_with_the_same_id_until_acknowledged(
    dataplane_app: tuple[httpx.Client, Any],
) -> None:
    """A flow ended on the data plane calls the control plane back; a 503 answer (or none) gets the
    same callback again, with the same message id, until a 2xx; then it is not sent again."""

    client, app = dataplane_app
    received: list[tuple[str, dict[str, Any]]] = []
    stub = FastAPI()

    @stub.post("/api/signaling/transfers/{tid}/dataflow/{event}")
    async def callback(tid: str, event: str, request: Request) -> Any:
        raw = await request.body()
        verify_signal(KEY, request.headers.get("authorization"), issuer=DATA_PLANE,
                      audience=request.url.path, body=raw)  # fmt: skip
        received.append((f"{tid}/{event}", orjson.loads(raw)))
        return JSONResponse({}, status_code=503 if len(received) < 3 else 200)

    # stopped before the counts are checked, so no callback lands after them: not the fixture
    served = serve_in_thread(stub, **SERVE)
    url = served.url
    try:
        assert _start(client, "f-cb", "m1", callbackAddress=f"{url}/api/signaling").status_code == 200
        assert app.state.flows.errored("f-cb", "the usage policy's count is used up")
        assert _flow_status(client, "f-cb") == "TERMINATED"
        wait_until(lambda: len(received) >= 3, "three callback attempts")
        engine = app.state.runtime.engine
        wait_until(lambda: _pending_callback(engine) is None, "the acknowledgement to be recorded")
        time.sleep(0.3)  # the acknowledged callback is not sent again (several poll rounds)
    finally:
        served.stop()
    assert len(received) == 3
    assert {where for where, _ in received} == {"f-cb/errored"}
    assert len({body["messageId"] for _, body in received}) == 1
    assert received[0][1]["reason"] == "the usage policy's count is used up"


def _flow_status(client: httpx.Client, flow: str) -> str:
    state: str = client.get(f"{BASE}/{flow}/status", auth=CP).json()["state"]
    return state


def _pending_callback(engine: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(flows_table.c.callback_event).where(flows_table.c.flow_id == "f-cb")
        ).scalar()


# ---------------------------------------------------------------------- end to end, over HTTP
@pytest.fixture(params=BACKENDS)
def signaled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, Node, Node]]:
    env = {"DADAM_DATAPLANE_SIGNALING_SECRET": SECRET, **backend_env(request)}
    control_env = {"DADAM_DATAPLANE_SIGNALING_URL": "http://127.0.0.1:{dp_port}/api/signaling"}
    with split_connectors(tmp_path, env, control_env) as nodes:
        yield nodes


def _provider_transfer(control: Node, consumer_pid: str) -> dict[str, Any]:
    with control.client() as c:
        found = [t for t in c.get("/transfers").json()["items"] if t["consumerPid"] == consumer_pid]
    assert len(found) == 1
    view: dict[str, Any] = found[0]
    return view


def test_control_plane_drives_a_separate_data_plane_over_signaling(
    signaled: tuple[Node, Node, Node],
) -> None:
    control, data, consumer = signaled
    agreement = bom_agreement(control, consumer)

    # pull: the EDR in the consumer's TransferStartMessage is the data plane's answer to `start`
    payload, transfer = pull(consumer, control, agreement)
    assert len(payload) > 0
    endpoint = transfer["dataAddress"]["endpoint"]
    assert endpoint.startswith(data.base_url + "/api/public/transfers/")
    ptid = _provider_transfer(control, transfer["id"])["id"]
    assert ptid == transfer["providerPid"] and endpoint.endswith(ptid)
    assert flow_status(data, ptid, CP)["state"] == "STARTED"
    token = next(
        p["value"] for p in transfer["dataAddress"]["endpointProperties"] if p["name"] == "authorization"
    )

    def get() -> httpx.Response:
        return httpx.get(endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    with consumer.client() as c:  # the consumer suspends: the provider signals the data plane
        assert c.post(f"/transfers/{quote(transfer['id'], safe='')}/suspend").status_code == 200
    wait_until(lambda: flow_status(data, ptid, CP)["state"] == "SUSPENDED", "the suspend signal")
    refused = get()
    assert refused.status_code == 403 and "SUSPENDED" in refused.text
    with consumer.client() as c:
        assert c.post(f"/transfers/{quote(transfer['id'], safe='')}/resume").status_code == 200
    wait_until(lambda: flow_status(data, ptid, CP)["state"] == "STARTED", "the resume signal")
    again = get()
    assert again.status_code == 200 and again.content == payload

    # the data plane is down when the consumer suspends: the signal waits in the outbox (retried with
    # backoff) and is applied once the data plane is back; nothing is served meanwhile from the flow
    assert data.proc is not None
    data.proc.kill()
    data.proc.wait(timeout=10)
    with consumer.client() as c:
        assert c.post(f"/transfers/{quote(transfer['id'], safe='')}/suspend").status_code == 200
    wait_until(
        lambda: _provider_transfer(control, transfer["id"])["state"] == "SUSPENDED",
        "the provider's suspension",
    )
    data = start_node("dataplane", data.data_dir, port=data.port, env=data.env, command="dataplane",
                      log_name="dataplane2.log")  # fmt: skip
    try:
        wait_health(data)
        # the suspend signal is still waiting for its retry, but the suspension is committed in the
        # control plane: nothing is served in between
        early = get()
        assert early.status_code == 403 and "SUSPENDED" in early.text, early.text
        wait_until(lambda: flow_status(data, ptid, CP)["state"] == "SUSPENDED", "the suspend signal, resent")
        assert get().status_code == 403
        with consumer.client() as c:
            assert c.post(f"/transfers/{quote(transfer['id'], safe='')}/resume").status_code == 200
        wait_until(lambda: flow_status(data, ptid, CP)["state"] == "STARTED", "the resume signal")
        _continue_after_restart(control, data, consumer, agreement, transfer, ptid, payload, get)
    finally:
        stop_node(data)


def _continue_after_restart(
    control: Node, data: Node, consumer: Node, agreement: str, transfer: dict[str, Any], ptid: str,
    payload: bytes, get: Any,
) -> None:  # fmt: skip
    # the provider suspends and resumes: the resume goes to the data plane first, and its answer (a
    # fresh EDR) reaches the consumer in the TransferStartMessage
    with control.client() as c:
        assert c.post(f"/transfers/{quote(ptid, safe='')}/suspend").status_code == 200
    wait_until(lambda: flow_status(data, ptid, CP)["state"] == "SUSPENDED", "the provider's suspend signal")
    wait_until(
        lambda: transfer_view(consumer, transfer["id"])["state"] == "SUSPENDED", "the consumer's suspension"
    )
    with control.client() as c:
        assert c.post(f"/transfers/{quote(ptid, safe='')}/resume").status_code == 200
    wait_until(lambda: transfer_view(consumer, transfer["id"])["state"] == "STARTED", "the provider's resume")
    assert flow_status(data, ptid, CP)["state"] == "STARTED"
    fresh = transfer_view(consumer, transfer["id"])["dataAddress"]
    new_token = next(p["value"] for p in fresh["endpointProperties"] if p["name"] == "authorization")
    old_token = next(
        p["value"] for p in transfer["dataAddress"]["endpointProperties"] if p["name"] == "authorization"
    )
    assert new_token != old_token and fresh["endpoint"] == transfer["dataAddress"]["endpoint"]
    served = httpx.get(fresh["endpoint"], headers={"Authorization": f"Bearer {new_token}"}, timeout=30)
    assert served.status_code == 200 and served.content == payload
    with consumer.client() as c:
        assert c.post(f"/transfers/{quote(transfer['id'], safe='')}/terminate",
                      json={"reason": "done with it"}).status_code == 200  # fmt: skip
    ended = wait_until(
        lambda: (f := flow_status(data, ptid, CP))["state"] == "TERMINATED" and f, "the terminate signal"
    )
    assert "done with it" in (ended["reason"] or "")
    assert get().status_code == 403  # a terminated flow's tokens are refused
    pulls = [e for e in usage_of(control, agreement) if not e["id"].endswith(":push")]
    assert len(pulls) == 3 and {e["bytes"] for e in pulls} == {len(payload)}  # the three answered pulls

    # push: STARTED -> `start` with the destination -> the data plane pushes -> `completed` callback
    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": control.dsp_url, "counterPartyId": control.did,
                                       "agreementId": agreement, "format": "HttpData-PUSH"})  # fmt: skip
        assert r.status_code in (200, 201), r.text
        tid = r.json()["id"]
    view = wait_until(
        lambda: (v := transfer_view(consumer, tid))["state"] in ("COMPLETED", "TERMINATED") and v, "the push"
    )
    assert view["state"] == "COMPLETED", view
    push_tid = _provider_transfer(control, tid)["id"]
    assert _provider_transfer(control, tid)["state"] == "COMPLETED"
    assert flow_status(data, push_tid, CP)["state"] == "COMPLETED"
    pushed = [e for e in usage_of(control, agreement) if e["id"].endswith(":push")]
    assert len(pushed) == 1 and pushed[0]["bytes"] == len(payload)
    inbox = list((consumer.data_dir / "inbox").rglob("*"))
    assert any(p.is_file() and p.read_bytes() == payload for p in inbox)

    # a push the destination refuses: the data plane calls back `errored` with the reason; the
    # transfer is TERMINATED with it on both sides and nothing more is metered
    refusing = {"endpoint": f"{consumer.base_url}/api/public/inbox/urn:uuid:nobody", "authorization": "x"}
    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": control.dsp_url, "counterPartyId": control.did,
                                       "agreementId": agreement, "format": "HttpData-PUSH",
                                       "dataDestination": refusing})  # fmt: skip
        assert r.status_code in (200, 201), r.text
        bad = r.json()["id"]
    view = wait_until(
        lambda: (v := transfer_view(consumer, bad))["state"] in ("COMPLETED", "TERMINATED") and v,
        "the failure",
    )
    assert view["state"] == "TERMINATED", view
    assert "the destination answered 404" in (view["errorDetail"] or ""), view
    provider_view = _provider_transfer(control, bad)
    assert provider_view["state"] == "TERMINATED"
    assert "the data plane ended the transfer: push to" in provider_view["errorDetail"]
    failed = flow_status(data, provider_view["id"], CP)
    assert failed["state"] == "TERMINATED" and "404" in (failed["reason"] or "")
    assert len([e for e in usage_of(control, agreement) if e["id"].endswith(":push")]) == 1


def test_undeliverable_start_signal_terminates_the_transfer_with_the_reason(tmp_path: Path) -> None:
    """No data plane answers: the start signal is retried, then the transfer is TERMINATED with the
    reason, and the consumer is told. The control plane's callback endpoints refuse bad tokens."""
    dead = free_port()
    env = {"DADAM_DATAPLANE_EMBEDDED": "false", "DADAM_DATAPLANE_SIGNALING_SECRET": SECRET,
           "DADAM_DATAPLANE_SIGNALING_URL": f"http://127.0.0.1:{dead}/api/signaling",
           "DADAM_SEND_RETRY_LIMIT": "2", "DADAM_SEND_RETRY_BASE_MS": "50"}  # fmt: skip
    control = start_node("provider", tmp_path / "p", env=env)
    consumer = start_node("consumer", tmp_path / "c")
    try:
        wait_ready(control)
        wait_ready(consumer)
        agreement = bom_agreement(control, consumer)
        with consumer.client() as c:
            r = c.post("/transfers", json={"counterPartyAddress": control.dsp_url, "counterPartyId": control.did,
                                           "agreementId": agreement, "format": "HttpData-PULL"})  # fmt: skip
            tid = r.json()["id"]
        view = wait_until(
            lambda: (v := transfer_view(consumer, tid))["state"] == "TERMINATED" and v, "the termination"
        )
        provider_view = _provider_transfer(control, tid)
        assert provider_view["state"] == "TERMINATED"
        assert "data plane signal start failed" in provider_view["errorDetail"], provider_view
        assert "gave up after 2 attempts" in provider_view["errorDetail"]
        assert "data plane signal start failed" in (view["errorDetail"] or "")  # the consumer was told why

        url = f"{control.base_url}/api/signaling/transfers/{quote(provider_view['id'], safe=':')}/dataflow/completed"
        body = {"messageId": "m1", "flowId": provider_view["id"]}
        missing = httpx.post(url, json=body, timeout=10)
        assert missing.status_code == 401 and "without a bearer token" in missing.json()["message"]
        own = httpx.post(url, json=body, auth=CP, timeout=10)  # a control plane token: the wrong side
        assert own.status_code == 401 and "expected 'dadam-data-plane'" in own.json()["message"]
        ok = httpx.post(url, json=body, auth=SignalAuth(KEY, DATA_PLANE), timeout=10)
        assert ok.status_code == 200 and ok.json()["state"] == "TERMINATED"  # ended: acknowledged, no change
        unknown = httpx.post(url.replace(quote(provider_view["id"], safe=":"), "urn:uuid:nope"), json=body,
                             auth=SignalAuth(KEY, DATA_PLANE), timeout=10)  # fmt: skip
        assert unknown.status_code == 404
    finally:
        stop_node(consumer)
        stop_node(control)
