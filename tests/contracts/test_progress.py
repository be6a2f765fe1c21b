"""Consumers follow progress through webhooks (callbackAddresses) and a server-sent events stream."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cn_harness import OPEN_POLICY, FakeOffers, Node, Tck, make_node

from contracts import StaticKeyResolver

OFFER_ID = "cd1:ds1:v1"


@pytest.fixture
def hooks() -> Iterator[Tck]:
    t = Tck()  # used as a plain HTTP recorder for webhook calls
    yield t
    t.stop()


def _negotiate_following_sse(
    consumer: Node,
    provider: Node,
    callbacks: list[str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[str, list[str]]:
    """Follow the consumer's SSE stream (with query ``params``) while it negotiates OFFER_ID with
    ``provider`` to the end; returns the negotiation id and the internal states its events
    reported, in order."""
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    connected = threading.Event()

    def follow() -> None:
        with (
            httpx.Client(timeout=None) as c,
            c.stream("GET", f"{consumer.url}/mgmt/negotiations/events", params=params) as r,
        ):
            assert r.headers["content-type"].startswith("text/event-stream")
            connected.set()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    ev = json.loads(line[6:])
                    events.put(ev)
                    if ev["state"] in ("FINALIZED", "TERMINATED"):
                        return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    assert connected.wait(5)
    request: dict[str, Any] = {
        "counterPartyAddress": provider.dsp,
        "counterPartyId": provider.did,
        "offer": {"@id": OFFER_ID, "target": "ds1", **OPEN_POLICY},
    }
    if callbacks:
        request["callbackAddresses"] = callbacks
    with consumer.mgmt() as c:
        r = c.post("/negotiations", json=request)
    assert r.status_code == 201, r.text
    nid = r.json()["id"]
    consumer.wait_state(nid, {"FINALIZED"})
    t.join(10)
    seen = []
    while not events.empty():
        ev = events.get_nowait()
        if ev["id"] == nid:
            seen.append(ev["internalState"])
    return nid, seen


def test_webhooks_and_sse_report_every_state(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], hooks: Tck
) -> None:
    provider = make_node(
        "provider", db_urls(), keys=keys, offers=FakeOffers({OFFER_ID: ("ds1", OPEN_POLICY)})
    )
    nodes.append(provider)
    consumer = make_node("consumer", db_urls(), keys=keys)
    nodes.append(consumer)

    nid, seen = _negotiate_following_sse(consumer, provider, [hooks.url + "/hooks/negotiations"])
    assert seen[0] == "REQUESTING" and seen[-1] == "FINALIZED", seen
    assert "VERIFYING" in seen or "VERIFIED" in seen, seen

    # Webhooks: delivered through the outbox, in order, each with the negotiation's view.
    calls: list[dict[str, Any]] = []
    while len(calls) < len(seen):
        path, body = hooks.received.get(timeout=5)
        assert path == "/hooks/negotiations"
        calls.append(body)
    assert [c["internalState"] for c in calls] == seen
    assert all(c["@type"] == "NegotiationStateChanged" and c["id"] == nid for c in calls)
    assert calls[-1]["signedBy"] == ["provider", "consumer"]


def test_sse_reports_every_state_without_webhooks(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    """Without webhooks, the consumer's ACK-driven states (REQUESTED, VERIFIED) are recorded
    without the handler's locking transaction (AckTransition): the SSE stream
    still reports each of them at once. The replicas' change poll is switched off here, so the
    events come from the process that made the change; both sides wait 0.3 s before replying so
    every ACK is recorded before the next message arrives (the sequence is then exact)."""
    slow = {"reply_delay_s": 0.3}
    provider = make_node(
        "provider",
        db_urls(),
        keys=keys,
        offers=FakeOffers({OFFER_ID: ("ds1", OPEN_POLICY)}),
        config=slow,
    )
    nodes.append(provider)
    consumer = make_node("consumer", db_urls(), keys=keys, config=slow)
    nodes.append(consumer)
    consumer.manager.sse_poll_s = 60.0
    _, seen = _negotiate_following_sse(consumer, provider)
    assert seen == ["REQUESTING", "REQUESTED", "AGREED", "VERIFYING", "VERIFIED", "FINALIZED"]


def test_sse_filtered_by_state_and_role(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    """A client waiting for outcomes asks for the terminal states only: it gets the consumer's
    FINALIZED event and none of the intermediate ones (state names as events show them, any
    case, comma-separated or repeated, with or without the dspace: prefix)."""
    provider = make_node(
        "provider", db_urls(), keys=keys, offers=FakeOffers({OFFER_ID: ("ds1", OPEN_POLICY)})
    )
    nodes.append(provider)
    consumer = make_node("consumer", db_urls(), keys=keys)
    nodes.append(consumer)
    params = {"state": "finalized,dspace:TERMINATED", "role": "consumer"}
    _, seen = _negotiate_following_sse(consumer, provider, params=params)
    assert seen == ["FINALIZED"]


def test_sse_filter_rejects_unknown_states_and_roles(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    consumer = make_node("consumer", db_urls(), keys=keys)
    nodes.append(consumer)
    with consumer.mgmt() as c:
        r = c.get("/negotiations/events", params={"state": "FINALIZED,DONE", "role": "broker"})
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/")
        text = r.text
        assert "'DONE'" in text and "'broker'" in text and "FINALIZED" in text


def test_management_api_lists_with_paging_and_rejects_bad_input(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    consumer = make_node("consumer", db_urls(), keys=keys)
    nodes.append(consumer)
    with consumer.mgmt() as c:
        for i in range(5):
            r = c.post(
                "/negotiations",
                json={
                    "counterPartyAddress": "http://127.0.0.1:9/dsp",
                    "offer": {"@id": f"o{i}", "target": "ds", **OPEN_POLICY},
                },
            )
            assert r.status_code == 201
        page1 = c.get("/negotiations", params={"limit": 2}).json()["items"]
        page3 = c.get("/negotiations", params={"limit": 2, "offset": 4}).json()["items"]
        assert [n["offerId"] for n in page1] == ["o0", "o1"] and [n["offerId"] for n in page3] == ["o4"]
        assert c.get("/negotiations", params={"state": "NOPE"}).status_code == 400
        assert c.get("/negotiations", params={"limit": 0}).status_code == 400
        assert c.post("/negotiations", json={"offerId": "x"}).status_code == 400
        assert c.post("/negotiations", json={"counterPartyAddress": "http://x"}).status_code == 400
        assert c.get("/negotiations/nope").status_code == 404
        # terminate one that is still being requested
        nid = page1[0]["id"]
        r = c.post(f"/negotiations/{nid}/terminate", json={"reason": "changed my mind"})
        assert r.status_code == 200 and r.json()["state"] == "TERMINATED"
        assert "changed my mind" in r.json()["errorDetail"]
        # terminal: a second terminate is refused
        assert c.post(f"/negotiations/{nid}/terminate", json={}).status_code == 400
