"""Consumer-side data plane signaling (decision record 0452, amended): a consumer control plane
with ``DADAM_DATAPLANE_SIGNALING_URL`` signals its own ``dadam dataplane`` process: ``prepare``
before the TransferRequestMessage (a push's destination is that data plane's inbox), ``started``
with the provider's EDR, suspend / resume / terminate / completed as the transfer moves; the data
plane receives pushes and calls back ``completed``. A data plane that cannot be reached at
``prepare`` ends the transfer before the provider hears of it. Separate processes; the consumer
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from transfer_nodes import (
    BACKENDS,
    backend_env,
    bom_agreement,
    flow_status,
    split_consumer,
    transfer_view,
    wait_until,
)

from connector._demo import (
    Node,
    free_port,
    pull,
    start_node,
    stop_node,
    usage_of,
    wait_ready,
)
from connector.dataplane._signal_auth import CONTROL_PLANE, SignalAuth
from contracts._process import inbox, outbox

pytestmark = pytest.mark.slow

SECRET = "s3cret-for-consumer-signaling-0123456789"
CP = SignalAuth(SECRET.encode(), CONTROL_PLANE)


PROVIDER_MODES = {
    "provider-database": {},  # one provider process, data plane embedded
    "provider-signaled": {"DADAM_DATAPLANE_SIGNALING_URL": "http://127.0.0.1:{dp_port}/api/signaling"},
}


@pytest.fixture(params=PROVIDER_MODES)
def provider_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture(params=BACKENDS)
def consumer_split(
    request: pytest.FixtureRequest, provider_mode: str, tmp_path: Path
) -> Iterator[tuple[Node, Node, Node, str]]:
    """(provider, consumer control plane, consumer data plane, the consumer's database URL); the
    provider runs its data plane embedded, or apart and driven over signaling too."""
    db = backend_env(request)
    env = {"DADAM_DATAPLANE_SIGNALING_SECRET": SECRET, "DADAM_SEND_RETRY_BASE_MS": "50", **db}
    control_env = {"DADAM_DATAPLANE_SIGNALING_URL": "http://127.0.0.1:{dp_port}/api/signaling"}
    url = db.get("DADAM_DATABASE_URL") or f"sqlite:///{(tmp_path / 'c' / 'dadam.db').as_posix()}"
    signaled = provider_mode == "provider-signaled"
    provider_env = {"DADAM_DATAPLANE_SIGNALING_SECRET": SECRET} if signaled else {}
    with split_consumer(tmp_path, env, control_env, provider_env=provider_env,
                        provider_control_env=PROVIDER_MODES[provider_mode] if signaled else None) as nodes:  # fmt: skip
        yield (*nodes, url)


def _token(address: dict[str, Any]) -> str:
    return str(next(p["value"] for p in address["endpointProperties"] if p["name"] == "authorization"))


def _post(node: Node, path: str, **kwargs: Any) -> None:
    with node.client() as c:
        r = c.post(path, **kwargs)
        assert r.status_code == 200, r.text


def test_consumer_control_plane_signals_its_data_plane(consumer_split: tuple[Node, Node, Node, str]) -> None:
    provider, consumer, data, db_url = consumer_split
    agreement = bom_agreement(provider, consumer)

    # pull: prepared before the request, then `started` with the provider's EDR
    payload, transfer = pull(consumer, provider, agreement)
    tid = transfer["id"]
    flow = flow_status(data, tid, CP)
    assert (
        flow["state"] == "STARTED" and flow["side"] == "consumer" and flow["transferType"] == "HttpData-PULL"
    )
    assert flow["dataAddress"]["endpoint"] == transfer["dataAddress"]["endpoint"]
    assert _token(flow["dataAddress"]) == _token(transfer["dataAddress"])
    serving = provider.env.get("DADAM_DATAPLANE_PUBLIC_URL", provider.base_url)
    assert flow["dataAddress"]["endpoint"].startswith(serving + "/")  # the provider's data plane serves it

    _post(consumer, f"/transfers/{quote(tid, safe='')}/suspend")  # ours: suspend signalled
    wait_until(lambda: flow_status(data, tid, CP)["state"] == "SUSPENDED", "the consumer's suspend signal")
    _post(consumer, f"/transfers/{quote(tid, safe='')}/resume")  # acknowledged by the provider: resume
    wait_until(lambda: flow_status(data, tid, CP)["state"] == "STARTED", "the consumer's resume signal")
    ptid = transfer["providerPid"]
    _post(provider, f"/transfers/{quote(ptid, safe='')}/suspend")  # the provider's: suspend signalled
    wait_until(
        lambda: flow_status(data, tid, CP)["state"] == "SUSPENDED", "the provider's suspension, signalled"
    )
    _post(provider, f"/transfers/{quote(ptid, safe='')}/resume")  # a fresh EDR reaches the data plane
    fresh = wait_until(
        lambda: (v := transfer_view(consumer, tid))["state"] == "STARTED" and _token(v["dataAddress"]) != _token(
            transfer["dataAddress"]) and v["dataAddress"], "the provider's resume"
    )  # fmt: skip
    wait_until(lambda: (f := flow_status(data, tid, CP))["state"] == "STARTED" and _token(f["dataAddress"]) == _token(fresh),
          "the resume signal with the fresh EDR")  # fmt: skip
    _post(consumer, f"/transfers/{quote(tid, safe='')}/terminate", json={"reason": "enough"})
    ended = wait_until(
        lambda: (f := flow_status(data, tid, CP))["state"] == "TERMINATED" and f, "the terminate signal"
    )
    assert "enough" in (ended["reason"] or "")

    # push: the destination is the consumer data plane's inbox, with a secret only this flow accepts
    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                                       "agreementId": agreement, "format": "HttpData-PUSH"})  # fmt: skip
        assert r.status_code == 201, r.text
        push = r.json()["id"]
    view = wait_until(
        lambda: (v := transfer_view(consumer, push))["state"] in ("COMPLETED", "TERMINATED") and v, "the push"
    )
    assert view["state"] == "COMPLETED", view
    inbox_url = f"{data.base_url}/api/public/inbox/{push}"
    assert view["dataAddress"]["endpoint"] == inbox_url
    assert _token(view["dataAddress"]) == "**********"
    received = wait_until(
        lambda: (f := flow_status(data, push, CP))["state"] == "COMPLETED" and f, "the push flow's end"
    )
    assert received["bytesReceived"] == len(payload)
    reported = wait_until(
        lambda: transfer_view(consumer, push).get("bytesReceived"), "the completed callback"
    )
    assert reported == len(payload)  # the consumer's transfer shows what its data plane received
    files = [p for p in (consumer.data_dir / "inbox").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in files] == [payload]
    pushed = [e for e in usage_of(provider, agreement) if e["id"].endswith(":push")]
    assert len(pushed) == 1 and pushed[0]["bytes"] == len(payload)

    secret = _token(received["dataAddress"])
    wrong = httpx.post(inbox_url, content=b"x", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 403
    elsewhere = httpx.post(f"{data.base_url}/api/public/inbox/{tid}", content=b"x",
                           headers={"Authorization": f"Bearer {secret}"}, timeout=10)  # fmt: skip
    assert elsewhere.status_code == 404  # the pull flow has no inbox; the secret opens only its own

    # what the consumer's control plane was told and sent: the data plane's `completed` callback
    # accepted once; prepare, started, completed signalled in that order; nothing left unsent
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            callbacks = conn.execute(
                sa.select(sa.func.count()).where(inbox.c.kind == "dataflow-callback", inbox.c.process_id == push)
            ).scalar()  # fmt: skip
            signals = conn.execute(
                sa.select(outbox.c.message_type, outbox.c.status)
                .where(outbox.c.kind == "dataflow", outbox.c.process_id == push)
                .order_by(outbox.c.seq)
            ).all()
    finally:
        engine.dispose()
    assert callbacks == 1
    assert [tuple(s) for s in signals] == [
        ("DataFlowPrepareMessage", "sent"),
        ("DataFlowStartedMessage", "sent"),
        ("DataFlowCompletedMessage", "sent"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_consumer_data_plane_down_at_prepare_terminates_the_transfer(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """No consumer data plane answers ``prepare``: retried, then the transfer is TERMINATED with the
    reason, and the TransferRequestMessage never goes out (the provider has no such transfer)."""
    db = {"DADAM_DATABASE_URL": request.getfixturevalue("pg_url")} if backend == "postgres" else {}
    env = {"DADAM_DATAPLANE_EMBEDDED": "false", "DADAM_DATAPLANE_SIGNALING_SECRET": SECRET,
           "DADAM_DATAPLANE_SIGNALING_URL": f"http://127.0.0.1:{free_port()}/api/signaling",
           "DADAM_SEND_RETRY_LIMIT": "2", "DADAM_SEND_RETRY_BASE_MS": "50", **db}  # fmt: skip
    provider = start_node("provider", tmp_path / "p")
    consumer = start_node("consumer", tmp_path / "c", env=env)
    try:
        wait_ready(provider)
        wait_ready(consumer)
        agreement = bom_agreement(provider, consumer)
        for fmt in ("HttpData-PUSH", "HttpData-PULL"):
            with consumer.client() as c:
                r = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                                               "agreementId": agreement, "format": fmt})  # fmt: skip
                assert r.status_code == 201, r.text
                tid = r.json()["id"]
            view = wait_until(
                lambda t=tid: (v := transfer_view(consumer, t))["state"] == "TERMINATED" and v, "the end"
            )
            assert "data plane signal prepare failed" in (view["errorDetail"] or ""), view
            assert "gave up after 2 attempts" in view["errorDetail"]
            assert view["providerPid"] is None
            with provider.client() as c:
                assert [t for t in c.get("/transfers").json()["items"] if t["consumerPid"] == tid] == []
    finally:
        stop_node(consumer)
        stop_node(provider)
