"""Signaling mode (decision record 0452) when a data plane callback races the control plane's
state: a push finishes on the data plane while the transfer is suspended on the control plane, so
the ``completed`` callback is answered 409; it is resent with the same message id and, once the
transfer is STARTED again, completes it exactly once. Separate processes, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from test_signaling import SECRET, SERVE
from threaded_server import serve_in_thread
from transfer_nodes import BACKENDS, backend_env, bom_agreement, split_connectors, transfer_view, wait_until

from connector._demo import Node, usage_of
from connector.dataplane._flows import flows
from contracts._process import inbox, outbox

pytestmark = pytest.mark.slow


@pytest.fixture(params=BACKENDS)
def signaled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, Node, Node, str]]:
    db = backend_env(request)
    env = {"DADAM_DATAPLANE_SIGNALING_SECRET": SECRET, "DADAM_SEND_RETRY_BASE_MS": "50", **db}
    control_env = {"DADAM_DATAPLANE_SIGNALING_URL": "http://127.0.0.1:{dp_port}/api/signaling"}
    url = db.get("DADAM_DATABASE_URL") or f"sqlite:///{(tmp_path / 'p' / 'dadam.db').as_posix()}"
    with split_connectors(tmp_path, env, control_env) as nodes:
        yield (*nodes, url)


class _SlowDestination:
    """An HTTP push destination that holds each push until :attr:`release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = threading.Event()
        self.bodies: list[bytes] = []
        self.app = FastAPI()

        @self.app.post("/inbox")
        async def receive(request: Request) -> JSONResponse:
            self.arrived.set()
            await asyncio.to_thread(self.release.wait, 120)
            self.bodies.append(await request.body())
            return JSONResponse({}, status_code=201)


def test_completed_callback_answered_409_is_resent_and_completes_once(
    signaled: tuple[Node, Node, Node, str],
) -> None:
    control, data, consumer, db_url = signaled
    agreement = bom_agreement(control, consumer)
    slow = _SlowDestination()
    served = serve_in_thread(slow.app, **SERVE)
    url = served.url
    engine = sa.create_engine(db_url)
    try:
        with consumer.client() as c:
            r = c.post("/transfers", json={"counterPartyAddress": control.dsp_url, "counterPartyId": control.did,
                                           "agreementId": agreement, "format": "HttpData-PUSH",
                                           "dataDestination": {"endpoint": f"{url}/inbox", "authorization": "t"}})  # fmt: skip
            assert r.status_code == 201, r.text
            tid = r.json()["id"]
        assert slow.arrived.wait(60), "the data plane did not start pushing"
        with control.client() as c:
            ptid = next(t["id"] for t in c.get("/transfers").json()["items"] if t["consumerPid"] == tid)

        # the consumer suspends while the push is under way; the data plane learns it too late
        with consumer.client() as c:
            assert c.post(f"/transfers/{quote(tid, safe='')}/suspend").status_code == 200
        wait_until(lambda: transfer_view(consumer, tid)["state"] == "SUSPENDED", "the suspension")

        def flow() -> Any:
            with engine.connect() as conn:
                return conn.execute(sa.select(flows).where(flows.c.flow_id == ptid)).mappings().first()

        wait_until(lambda: flow()["state"] == "SUSPENDED", "the suspend signal")
        slow.release.set()  # the push ends: the flow completes, its `completed` callback meets SUSPENDED
        row = wait_until(lambda: (f := flow())["callback_attempts"] >= 2 and f, "two refused callbacks")
        assert row["state"] == "COMPLETED" and row["callback_event"] == "completed"
        callback_id = row["callback_id"]
        with control.client() as c:
            assert c.get(f"/transfers/{quote(ptid, safe='')}").json()["state"] == "SUSPENDED"

        # resumed: the late `resume` signal finds the flow COMPLETED (nothing pushed again); the next
        # resend of the callback completes the transfer, once
        with consumer.client() as c:
            assert c.post(f"/transfers/{quote(tid, safe='')}/resume").status_code == 200
        view = wait_until(lambda: (v := transfer_view(consumer, tid))["state"] in ("COMPLETED", "TERMINATED") and v,
                     "the completion")  # fmt: skip
        assert view["state"] == "COMPLETED", view
        with control.client() as c:
            assert c.get(f"/transfers/{quote(ptid, safe='')}").json()["state"] == "COMPLETED"
        wait_until(lambda: flow()["callback_event"] is None, "the acknowledgement")
        with engine.connect() as conn:
            accepted = conn.execute(
                sa.select(inbox.c.message_id).where(inbox.c.kind == "dataflow-callback", inbox.c.process_id == ptid)
            ).scalars().all()  # fmt: skip
            completions = conn.execute(
                sa.select(sa.func.count()).where(
                    outbox.c.process_id == ptid, outbox.c.message_type == "TransferCompletionMessage"
                )
            ).scalar()
        assert accepted == [callback_id]  # the one callback, accepted under the id it was first sent with
        assert completions == 1
        assert len(slow.bodies) == 1 and slow.bodies[0]
        pushed = [e for e in usage_of(control, agreement) if e["id"].endswith(":push")]
        assert len(pushed) == 1 and pushed[0]["bytes"] == len(slow.bodies[0])
        assert httpx.get(f"{data.base_url}/healthz", timeout=5).status_code == 200
    finally:
        slow.release.set()
        served.stop()
        engine.dispose()
