"""A consumer that terminates its transfer before the provider has acknowledged the request.

The provider's pid (the address of a TransferTerminationMessage) arrives only with that
acknowledgement. Before this was handled, the termination was queued to ``.../transfers/None/
termination`` with ``providerPid: null``.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import sqlalchemy as sa

from contracts._process import HttpSender, RetryPolicy, Worker, outbox
from contracts._transfer import TransferManager, transfers
from contracts._transfer_states import Command, TState

PROVIDER = "http://provider.test/dsp"


class Provider:
    """A scripted provider: answers the TransferRequestMessage 503 until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def reply(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.seen.append((request.url.path, body))
        if request.url.path.endswith("/transfers/request"):
            if not self.release.is_set():
                return httpx.Response(503, json={"error": "busy"})
            return httpx.Response(201, json={"@type": "TransferProcess", "providerPid": "prov-1",
                                              "consumerPid": body["consumerPid"], "state": "REQUESTED"})  # fmt: skip
        return httpx.Response(200, json={})


def _consumer(engine: sa.Engine, provider: Provider) -> TransferManager:
    sender = HttpSender(httpx.Client(transport=httpx.MockTransport(provider.reply)))
    worker = Worker(engine, [], sender, retry=RetryPolicy(limit=50, base_s=0.0))
    return TransferManager(
        engine, participant_id="did:web:consumer.test", dsp_base_url="http://consumer.test/dsp", worker=worker
    )


def _view(manager: TransferManager, pid: str) -> dict[str, Any]:
    with manager.engine.connect() as conn:
        row = conn.execute(sa.select(transfers).where(transfers.c.id == pid)).mappings().one()
    return {
        "state": TState(row["state"]).name,
        "provider_pid": row["provider_pid"],
        "error": row["error_detail"],
    }


def test_termination_waits_for_the_acknowledgement_that_names_the_provider_pid(engine: sa.Engine) -> None:
    provider = Provider()
    manager = _consumer(engine, provider)
    pid = manager.start_transfer(PROVIDER, "agr-1", counterparty_id="did:web:provider.test")["id"]
    assert manager.worker.run_once() == 1  # the request: 503, stays in the outbox for a retry
    manager.run_command(pid, Command.TERMINATE, "changed my mind")
    view = _view(manager, pid)
    assert (
        view["state"] == "TERMINATING" and view["provider_pid"] is None and view["error"] == "changed my mind"
    )
    with engine.connect() as conn:  # nothing addressed to a provider pid we do not know
        queued = conn.execute(
            sa.select(outbox.c.message_type, outbox.c.url).where(outbox.c.process_id == pid)
        ).all()
    assert [q.message_type for q in queued] == ["TransferRequestMessage"]

    provider.release.set()
    for _ in range(5):  # the request is acknowledged, then the termination goes out
        manager.worker.run_once()
    terminations = [(path, body) for path, body in provider.seen if path.endswith("/termination")]
    assert len(terminations) == 1
    path, body = terminations[0]
    assert path == "/dsp/transfers/prov-1/termination"
    assert (
        body["providerPid"] == "prov-1"
        and body["consumerPid"] == pid
        and body["reason"] == ["changed my mind"]
    )
    view = _view(manager, pid)
    assert (
        view["state"] == "TERMINATED"
        and view["provider_pid"] == "prov-1"
        and view["error"] == "changed my mind"
    )


def test_a_request_that_never_left_ends_at_once(engine: sa.Engine) -> None:
    """No request in the outbox (in signaling mode it is queued only once the consumer's data plane
    has prepared the flow): nobody to tell, TERMINATED at once."""
    provider = Provider()
    manager = _consumer(engine, provider)
    pid = manager.start_transfer(PROVIDER, "agr-2", counterparty_id="did:web:provider.test")["id"]
    with engine.begin() as conn:  # as if the request were still waiting for the data plane
        conn.execute(sa.delete(outbox).where(outbox.c.process_id == pid))
    manager.run_command(pid, Command.TERMINATE, "no answer")
    view = _view(manager, pid)
    assert view["state"] == "TERMINATED" and view["error"] == "no answer"
    assert manager.worker.run_once() == 0 and provider.seen == []
