"""DADAM_NEGOTIATION_MANUAL_APPROVAL on a real provider (`dadam serve`): permitted requests wait in the
management API (``?pending=true``) until the operator approves or rejects them with a reason."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from connector._demo import (
    Node,
    fetch_catalog,
    record_partner,
    seed_provider,
    start_node,
    stop_node,
    wait_ready,
)


@pytest.fixture
def pair(db_urls: Callable[[], str], tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    provider = start_node(
        "provider",
        tmp_path / "provider",
        env={"DADAM_DATABASE_URL": db_urls(), "DADAM_NEGOTIATION_MANUAL_APPROVAL": "true"},
    )
    consumer = start_node("consumer", tmp_path / "consumer", env={"DADAM_DATABASE_URL": db_urls()})
    try:
        wait_ready(provider)
        wait_ready(consumer)
        seed_provider(provider)
        record_partner(provider, consumer)
        yield provider, consumer
    finally:
        stop_node(consumer)
        stop_node(provider)


def _path(nid: str, action: str = "") -> str:
    return f"/negotiations/{quote(nid, safe='')}" + (f"/{action}" if action else "")


def _wait(client: httpx.Client, nid: str, states: set[str], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = client.get(_path(nid)).json()
        if view["state"] in states:
            return view
        time.sleep(0.05)
    raise AssertionError(f"{nid} never reached {states}: {view}")


def _waiting(provider: httpx.Client, timeout: float = 30.0) -> dict[str, Any]:
    """The one negotiation the provider lists as waiting for approval."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = provider.get("/negotiations", params={"pending": "true"}).json()["items"]
        if items:
            assert len(items) == 1, items
            found: dict[str, Any] = items[0]
            return found
        time.sleep(0.05)
    raise AssertionError("nothing is waiting for approval")


def _start(consumer: httpx.Client, provider: Node, offer_id: str) -> str:
    r = consumer.post(
        "/negotiations",
        json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did, "offerId": offer_id},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_manual_approval_setting_approve_and_reject(pair: tuple[Node, Node]) -> None:
    provider, consumer = pair
    catalog = fetch_catalog(consumer, provider)
    pcf = next(d for d in catalog["dataset"] if d["@id"] == "pcf-brake-disc-bd330v")
    offer_id = pcf["hasPolicy"][0]["@id"]
    with provider.client() as p, consumer.client() as c:
        # Approve: the permitted request waits, is listed as pending, and finalizes once approved.
        first = _start(c, provider, offer_id)
        waiting = _waiting(p)
        assert waiting["pending"] is True and waiting["state"] == "REQUESTED"
        assert waiting["errorDetail"] == "waiting for manual approval"
        assert waiting["consumerPid"] == first  # the consumer's id is its consumerPid
        assert waiting["id"] not in [
            n["id"] for n in p.get("/negotiations", params={"pending": "false"}).json()["items"]
        ]
        assert c.get(_path(first)).json()["state"] == "REQUESTED"  # nothing agreed behind the operator's back
        r = p.post(_path(waiting["id"], "approve"))
        assert r.status_code == 200, r.text
        assert r.json()["pending"] is False
        assert r.json()["errorDetail"] is None  # the "waiting" note went with the decision
        done = _wait(c, first, {"FINALIZED", "TERMINATED"})
        assert done["state"] == "FINALIZED", done["errorDetail"]
        assert done["signedBy"] == ["provider", "consumer"]
        assert p.get("/negotiations", params={"pending": "true"}).json()["items"] == []
        # Approving or rejecting what is not waiting is a conflict.
        assert p.post(_path(waiting["id"], "approve")).status_code == 409
        assert p.post(_path(waiting["id"], "reject"), json={"reason": "too late"}).status_code == 409

        # Reject: the operator's reason reaches the consumer.
        second = _start(c, provider, offer_id)
        waiting = _waiting(p)
        assert waiting["consumerPid"] == second
        assert p.post(_path(waiting["id"], "reject"), json={}).status_code == 400  # a reason is required
        assert p.post(_path(waiting["id"], "reject"), json={"reason": "  "}).status_code == 400
        r = p.post(_path(waiting["id"], "reject"), json={"reason": "no contract with you this quarter"})
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "TERMINATED" and r.json()["pending"] is False
        refused = _wait(c, second, {"FINALIZED", "TERMINATED"})
        assert refused["state"] == "TERMINATED"
        assert "no contract with you this quarter" in refused["errorDetail"], refused["errorDetail"]
        assert "terminated by the counter-party" in refused["errorDetail"]
        on_provider = _wait(p, waiting["id"], {"TERMINATED"})
        assert on_provider["errorDetail"] == "rejected by the operator: no contract with you this quarter"
        assert p.post(_path(waiting["id"], "approve")).status_code == 409
        assert p.get("/negotiations", params={"pending": "true"}).json()["items"] == []
        assert p.post(_path("urn:uuid:nope", "approve")).status_code == 404
