"""The DSP fast lane (decision 0405) answers exactly as the FastAPI routes do.

Two providers, one serving the DSP POSTs in :class:`~connector.api.DspFastLane` and one through
FastAPI only, get the same sequence of messages (valid, replayed, out of order, malformed,
misaddressed, not theirs, unknown, wrong method); every answer must be the same status and body.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from cn_harness import OPEN_POLICY, TCK_DID, FakeOffers, Node, Tck, make_node

from contracts import StaticKeyResolver

OFFER_ID = "cd1:ds1:v1"


def _provider(db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], fast: bool) -> Node:
    node = make_node(
        "provider",
        db_urls(),
        keys=keys,
        offers=FakeOffers({OFFER_ID: ("ds1", OPEN_POLICY)}),
        config={"manual_approval": True},  # stays in REQUESTED: the answers do not race the worker
        fast_lane=fast,
    )
    nodes.append(node)
    return node


def _conversation(provider: Node, tck: Tck) -> list[tuple[int, Any]]:
    """What the provider answers to a fixed sequence of requests, its own pid replaced by <ppid>."""
    answers: list[tuple[int, bytes]] = []
    cpid = "urn:uuid:0d5e8e43-3c47-4a8f-b4d6-2f2a0d6f6c11"
    request = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@id": "urn:uuid:5b2c9a8e-1111-4c3e-9a55-123456789abc",
        "@type": "ContractRequestMessage",
        "consumerPid": cpid,
        "offer": {"@id": OFFER_ID, "@type": "Offer", "target": "ds1", "permission": [{"action": "use"}]},
        "callbackAddress": tck.url,
    }
    r = tck.http.post(f"{provider.dsp}/negotiations/request", json=request)
    ppid = r.json()["providerPid"]
    known = {cpid, request["@id"]}
    answers.append((r.status_code, r.content))
    base = f"{provider.dsp}/negotiations/{ppid}"
    pids = {"providerPid": ppid, "consumerPid": cpid}
    posts: list[tuple[str, bytes, dict[str, str]]] = [
        # the same initial request again: the same negotiation
        (f"{provider.dsp}/negotiations/request", orjson.dumps(request), {}),
        # same id, another consumerPid: refused (409), no second negotiation
        (f"{provider.dsp}/negotiations/request", orjson.dumps({**request, "consumerPid": "urn:uuid:x"}), {}),
        (f"{base}/agreement/verification", orjson.dumps({"@type": "ContractAgreementVerificationMessage", **pids}), {}),
        (f"{base}/events", orjson.dumps({"@type": "ContractNegotiationEventMessage", **pids, "eventType": "ACCEPTED"}), {}),
        (f"{base}/termination", orjson.dumps({"@type": "ContractNegotiationTerminationMessage", "providerPid": ppid}), {}),
        (f"{base}/termination", orjson.dumps({"@type": "ContractOfferMessage", **pids}), {}),
        (f"{base}/termination", b"{not json", {}),
        (f"{base}/termination", b"[1, 2]", {}),
        (f"{provider.dsp}/negotiations/nope/termination", orjson.dumps({"@type": "ContractNegotiationTerminationMessage", **pids}), {}),
        # not yours
        (f"{base}/termination", orjson.dumps({"@type": "ContractNegotiationTerminationMessage", **pids}), {"X-Test-Caller": "did:web:intruder"}),
        # a consumer endpoint addressed to the provider
        (f"{base}/agreement", orjson.dumps({"@type": "ContractAgreementMessage", **pids}), {}),
        # the consumer ends it
        (f"{base}/termination", orjson.dumps({"@type": "ContractNegotiationTerminationMessage", **pids, "code": "done"}), {}),
        # and cannot end it twice
        (f"{base}/termination", orjson.dumps({"@type": "ContractNegotiationTerminationMessage", **pids, "@id": f"urn:uuid:{uuid.uuid4()}"}), {}),
    ]  # fmt: skip
    for url, body, headers in posts:
        r = tck.http.post(url, content=body, headers={"Content-Type": "application/json", **headers})
        answers.append((r.status_code, r.content))
    r = tck.http.put(f"{provider.dsp}/negotiations/request", json=request)  # not a fast-lane method
    answers.append((r.status_code, r.content))
    r = tck.http.get(base)
    answers.append((r.status_code, r.content))
    out: list[tuple[int, Any]] = []
    for status, content in answers:
        text = content.decode().replace(ppid, "<ppid>").replace(provider.did, "<did>")
        text = re.sub(r"urn:uuid:[0-9a-f-]{36}", lambda m: m[0] if m[0] in known else "<generated>", text)
        out.append((status, orjson.loads(text) if text else None))
    return out


def test_fast_lane_answers_as_the_framework_does(
    db_urls: Callable[[], str],
    keys: StaticKeyResolver,
    nodes: list[Node],
    tck: Tck,
    fast_lane_served: list[str],
) -> None:
    served = fast_lane_served
    framework = _conversation(_provider(db_urls, keys, nodes, fast=False), tck)
    assert served == []
    provider = _provider(db_urls, keys, nodes, fast=True)
    fast = _conversation(provider, tck)
    assert len(served) == 14  # every POST of the conversation went through the fast lane
    assert fast == framework
    statuses = [s for s, _ in fast]
    # what the conversation covers: both successes and every kind of refusal
    assert statuses == [201, 201, 409, 400, 400, 400, 400, 400, 400, 404, 404, 400, 200, 400, 405, 200], fast
    assert fast[0][1]["state"] == "REQUESTED" and fast[-1][1]["state"] == "TERMINATED"
    assert all(body["@type"] == "ContractNegotiationError" for s, body in fast if s in (400, 404, 409))
    # the reused message id did not open a second negotiation
    assert len(provider.manager.list_negotiations(role="provider")) == 1


def test_tck_caller_is_who_the_fast_lane_sees(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], tck: Tck
) -> None:
    provider = _provider(db_urls, keys, nodes, fast=True)
    tck.request_negotiation(provider, OFFER_ID, "ds1")
    view = provider.manager.list_negotiations(role="provider")[0]
    assert view["counterPartyId"] == TCK_DID
