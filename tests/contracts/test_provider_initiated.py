"""Provider-initiated negotiation: the provider offers (management ``POST /negotiations/offers``), the
consumer's DSP ``POST /negotiations/offers`` creates a negotiation in OFFERED, and it ends in a signed
agreement once the consumer accepts (by its operator, or automatically for unconditional use)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cn_harness import CLAIMS, CTX, MEMBERS_ONLY, OPEN_POLICY, FakeOffers, Node, Tck, make_node

from connector._demo import Node as ServedNode
from connector._demo import fetch_catalog, record_partner, seed_provider, start_node, stop_node, wait_ready
from contracts import Event, Role, State, StaticKeyResolver, handle, verify_export

MEMBERS = "cd1:ds-carbon:v1"
OPEN = "cd2:ds-open:v1"
MEMBER_CLAIMS = {"memberships": ["catena-x"]}


def _provider(db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]) -> Node:
    provider = make_node(
        "provider",
        db_urls(),
        keys=keys,
        offers=FakeOffers({MEMBERS: ("ds-carbon", MEMBERS_ONLY), OPEN: ("ds-open", OPEN_POLICY)}),
    )
    provider.manager.claims_for = lambda did: CLAIMS.get(did, {})  # the partner directory's role
    nodes.append(provider)
    return provider


def _consumer(db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], **config: Any) -> Node:
    consumer = make_node("consumer", db_urls(), keys=keys, config=config)
    nodes.append(consumer)
    return consumer


def _offer(provider: Node, consumer_dsp: str, consumer_did: str, offer_id: str) -> httpx.Response:
    with provider.mgmt() as p:
        return p.post(
            "/negotiations/offers",
            json={"counterPartyAddress": consumer_dsp, "counterPartyId": consumer_did, "offerId": offer_id},
        )


def _waiting(consumer: Node, timeout: float = 10.0) -> dict[str, Any]:
    """The one negotiation the consumer lists as waiting for its operator."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with consumer.mgmt() as c:
            items = c.get("/negotiations", params={"pending": "true"}).json()["items"]
        if items:
            assert len(items) == 1, items
            found: dict[str, Any] = items[0]
            return found
        time.sleep(0.02)
    raise AssertionError("no negotiation is waiting for the consumer's operator")


def test_table_has_the_initial_offer_transitions() -> None:
    assert handle(Role.PROVIDER, State.INITIAL, Event.SEND_OFFER).state is State.OFFERING
    assert handle(Role.CONSUMER, State.INITIAL, Event.RECV_INITIAL_OFFER).state is State.OFFERED
    # From OFFERED the consumer answers like in any negotiation.
    assert handle(Role.CONSUMER, State.OFFERED, Event.SEND_ACCEPTED).state is State.ACCEPTING
    assert handle(Role.CONSUMER, State.OFFERED, Event.SEND_REQUEST).state is State.REQUESTING


def test_provider_offers_and_the_consumer_operator_accepts(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider = _provider(db_urls, keys, nodes)
    consumer = _consumer(db_urls, keys, nodes)
    CLAIMS[consumer.did] = MEMBER_CLAIMS
    r = _offer(provider, consumer.dsp, consumer.did, MEMBERS)
    assert r.status_code == 201, r.text
    started = r.json()
    assert started["role"] == "provider" and started["state"] == "OFFERED"
    offered = provider.wait_state(started["id"], {"OFFERED"})
    # The consumer's negotiation waits for its operator, with the provider's offer in view.
    waiting = _waiting(consumer)
    assert offered["consumerPid"] == waiting["consumerPid"] == waiting["id"]
    assert waiting["role"] == "consumer" and waiting["state"] == "OFFERED"
    assert waiting["providerPid"] == started["providerPid"] == started["id"]
    assert waiting["counterPartyId"] == provider.did and waiting["counterPartyAddress"] == provider.dsp
    assert waiting["offerId"] == MEMBERS and waiting["datasetId"] == "ds-carbon"
    assert waiting["offer"]["permission"] == MEMBERS_ONLY["permission"]
    assert waiting["offer"]["assigner"] == provider.did
    assert waiting["errorDetail"] == "offer from the provider waiting for the operator"
    r = httpx.get(f"{consumer.dsp}/negotiations/{waiting['id']}", headers={"X-Test-Caller": provider.did})
    assert r.json()["state"] == "OFFERED"
    time.sleep(0.2)
    assert consumer.manager.get(waiting["id"])["internalState"] == "OFFERED"  # nothing accepted unasked
    with consumer.mgmt() as c:
        r = c.post(f"/negotiations/{waiting['id']}/accept")
        assert r.status_code == 200, r.text
    done = consumer.wait_state(waiting["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    assert done["signedBy"] == ["provider", "consumer"]
    agreement = done["agreement"]
    assert agreement["assigner"] == provider.did and agreement["assignee"] == consumer.did
    assert agreement["target"] == "ds-carbon" and agreement["permission"] == MEMBERS_ONLY["permission"]
    prov = provider.wait_state(started["id"], {"FINALIZED"})
    assert prov["agreement"] == agreement and prov["signedBy"] == ["provider", "consumer"]
    assert all(check.ok for check in verify_export(consumer.manager.export(done["id"])))


def test_auto_accept_takes_only_unconditional_use(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider = _provider(db_urls, keys, nodes)
    consumer = _consumer(db_urls, keys, nodes, accept_initial_offers="auto")
    CLAIMS[consumer.did] = MEMBER_CLAIMS
    assert _offer(provider, consumer.dsp, consumer.did, OPEN).status_code == 201
    deadline = time.time() + 10
    while not consumer.manager.list_negotiations(state="FINALIZED") and time.time() < deadline:
        time.sleep(0.02)
    [done] = consumer.manager.list_negotiations(state="FINALIZED")
    assert done["agreement"]["target"] == "ds-open" and done["signedBy"] == ["provider", "consumer"]
    # An offer with a condition is not taken automatically: it waits, saying why.
    assert _offer(provider, consumer.dsp, consumer.did, MEMBERS).status_code == 201
    waiting = _waiting(consumer)
    assert waiting["offerId"] == MEMBERS
    assert "accepted automatically only for unconditional use" in waiting["errorDetail"]
    assert "Membership" in waiting["errorDetail"], waiting["errorDetail"]


def test_consumer_rejects_or_answers_with_its_own_request(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider = _provider(db_urls, keys, nodes)
    consumer = _consumer(db_urls, keys, nodes)
    CLAIMS[consumer.did] = MEMBER_CLAIMS
    # Reject, with the reason for the provider.
    pid = _offer(provider, consumer.dsp, consumer.did, MEMBERS).json()["id"]
    cid = _waiting(consumer)["id"]
    with consumer.mgmt() as c:
        assert c.post(f"/negotiations/{cid}/reject", json={"reason": "not needed"}).status_code == 200
    assert "rejected by the operator: not needed" in provider.wait_state(pid, {"TERMINATED"})["errorDetail"]
    # Answer with a request of our own: the provider decides it like any request and agrees.
    pid = _offer(provider, consumer.dsp, consumer.did, OPEN).json()["id"]
    cid = _waiting(consumer)["id"]
    with consumer.mgmt() as c:
        r = c.post(f"/negotiations/{cid}/counter-offer", json={"offer": OPEN_POLICY})
        assert r.status_code == 200, r.text
    done = consumer.wait_state(cid, {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    assert provider.wait_state(pid, {"FINALIZED"})["agreement"] == done["agreement"]


def test_provider_checks_the_policy_again_when_the_consumer_accepts(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider = _provider(db_urls, keys, nodes)
    consumer = _consumer(db_urls, keys, nodes)
    CLAIMS[consumer.did] = MEMBER_CLAIMS
    pid = _offer(provider, consumer.dsp, consumer.did, MEMBERS).json()["id"]
    cid = _waiting(consumer)["id"]
    CLAIMS[consumer.did] = {}  # the membership ended before the consumer accepted
    with consumer.mgmt() as c:
        assert c.post(f"/negotiations/{cid}/accept").status_code == 200
    prov = provider.wait_state(pid, {"TERMINATED"})
    assert "contract policy denied" in prov["errorDetail"]
    done = consumer.wait_state(cid, {"TERMINATED"})
    assert "contract policy denied" in done["errorDetail"] and "Membership" in done["errorDetail"]


def test_provider_refuses_to_offer_what_the_consumer_may_not_have(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider = _provider(db_urls, keys, nodes)
    consumer = _consumer(db_urls, keys, nodes)
    CLAIMS[consumer.did] = {}
    r = _offer(provider, consumer.dsp, consumer.did, MEMBERS)
    assert r.status_code == 400
    assert "does not permit" in r.text and "Membership" in r.text
    assert _offer(provider, consumer.dsp, consumer.did, "cd9:nope:v1").status_code == 404
    with provider.mgmt() as p:
        assert (
            p.post(
                "/negotiations/offers", json={"counterPartyAddress": consumer.dsp, "offerId": OPEN}
            ).status_code
            == 400
        )
        bad = p.post(
            "/negotiations/offers", json={"counterPartyAddress": "ftp://x", "counterPartyId": consumer.did}
        )
        assert bad.status_code == 400 and "offerId" in bad.text and "counterPartyAddress" in bad.text
    assert provider.manager.list_negotiations() == [] and consumer.manager.list_negotiations() == []


def test_initial_offer_message_follows_the_schema_and_needs_a_consumer_pid_back(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    """Against the TCK stand-in (schema-checks what it receives, answers 200 without a body)."""
    provider = _provider(db_urls, keys, nodes)
    tck = Tck()
    try:
        started = _offer(provider, tck.url, "TCK_PARTICIPANT", OPEN).json()
        body = tck.expect("ContractOfferMessage", "/negotiations/offers")
        assert body["providerPid"] == started["providerPid"] and "consumerPid" not in body
        assert body["callbackAddress"] == provider.dsp
        assert body["offer"]["@id"] == OPEN and body["offer"]["target"] == "ds-open"
        assert body["offer"]["assigner"] == provider.did
        done = provider.wait_state(started["id"], {"TERMINATED"})
        assert done["errorDetail"] == "the consumer acknowledged ContractOfferMessage without a consumerPid"
    finally:
        tck.stop()


def _initial(provider_pid: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "@context": CTX,
        "@id": f"urn:uuid:{uuid.uuid4()}",
        "@type": "ContractOfferMessage",
        "providerPid": provider_pid,
        "offer": {"@id": OPEN, "@type": "Offer", "target": "ds-open", **OPEN_POLICY},
        "callbackAddress": "http://127.0.0.1:9/dsp",
    }
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def test_consumer_endpoint_checks_initial_offers(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    consumer = _consumer(db_urls, keys, nodes)
    url = f"{consumer.dsp}/negotiations/offers"
    peer = {"X-Test-Caller": "did:web:peer"}
    for bad in (
        _initial("urn:uuid:p0", consumerPid="urn:uuid:c0"),  # callbackAddress and consumerPid
        _initial("urn:uuid:p0", callbackAddress=None, consumerPid="urn:uuid:c0"),  # not initial
        _initial("urn:uuid:p0", callbackAddress="ftp://x"),
        _initial("urn:uuid:p0", offer={"@id": OPEN, "@type": "Offer", **OPEN_POLICY}),  # no target
        {**_initial("urn:uuid:p0"), "@type": "ContractRequestMessage"},
    ):
        r = httpx.post(url, json=bad, headers=peer)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["@type"] == "ContractNegotiationError"
    assert consumer.manager.list_negotiations() == []
    first = _initial("urn:uuid:p1")
    r = httpx.post(url, json=first, headers=peer)
    assert r.status_code == 201, r.text
    ack = r.json()
    assert ack["@type"] == "ContractNegotiation" and ack["state"] == "OFFERED"
    assert ack["providerPid"] == "urn:uuid:p1" and ack["consumerPid"]
    # The same message again: the same negotiation; another message reusing the providerPid: refused.
    again = httpx.post(url, json=first, headers=peer)
    assert again.status_code == 201 and again.json() == ack
    assert httpx.post(url, json=_initial("urn:uuid:p1"), headers=peer).status_code == 400
    assert len(consumer.manager.list_negotiations()) == 1
    # Only the peer that offered may talk about this negotiation; it may not send ACCEPTED.
    cp = ack["consumerPid"]
    event = {"@context": CTX, "@type": "ContractNegotiationEventMessage", "providerPid": "urn:uuid:p1",
             "consumerPid": cp, "eventType": "ACCEPTED"}  # fmt: skip
    other = {"X-Test-Caller": "did:web:someone-else"}
    assert httpx.get(f"{consumer.dsp}/negotiations/{cp}", headers=other).status_code == 404
    assert (
        httpx.post(f"{consumer.dsp}/negotiations/{cp}/events", json=event, headers=other).status_code == 404
    )
    assert httpx.post(f"{consumer.dsp}/negotiations/{cp}/events", json=event, headers=peer).status_code == 400
    assert consumer.manager.get(cp)["internalState"] == "OFFERED"


# --- two real connectors (`dadam serve`: DCP tokens, partner claims, catalog) ----------------------


@pytest.fixture
def served(db_urls: Callable[[], str], tmp_path: Path) -> Iterator[tuple[ServedNode, ServedNode]]:
    provider = start_node("provider", tmp_path / "provider", env={"DADAM_DATABASE_URL": db_urls()})
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


def test_two_dadam_connectors_provider_initiated(served: tuple[ServedNode, ServedNode]) -> None:
    provider, consumer = served
    catalog = fetch_catalog(consumer, provider)
    pcf = next(d for d in catalog["dataset"] if d["@id"] == "pcf-brake-disc-bd330v")
    offer_id = pcf["hasPolicy"][0]["@id"]
    # The consumer's DSP endpoint authenticates its caller like every DSP endpoint.
    unsigned = _initial("urn:uuid:p1", callbackAddress=provider.dsp_url)
    assert httpx.post(f"{consumer.dsp_url}/negotiations/offers", json=unsigned).status_code == 401
    with provider.client() as p, consumer.client() as c:
        r = p.post(
            "/negotiations/offers",
            json={
                "counterPartyAddress": consumer.dsp_url,
                "counterPartyId": consumer.did,
                "offerId": offer_id,
            },
        )
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        deadline = time.monotonic() + 30
        items: list[dict[str, Any]] = []
        while not items and time.monotonic() < deadline:
            items = c.get("/negotiations", params={"pending": "true"}).json()["items"]
            time.sleep(0.05)
        [waiting] = items
        assert waiting["counterPartyId"] == provider.did and waiting["offerId"] == offer_id
        cid = quote(waiting["id"], safe="")
        assert c.post(f"/negotiations/{cid}/accept").status_code == 200
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            view = c.get(f"/negotiations/{cid}").json()
            if view["state"] in ("FINALIZED", "TERMINATED"):
                break
            time.sleep(0.05)
        assert view["state"] == "FINALIZED", view
        exported = c.get(f"/negotiations/{cid}/agreement").json()
        assert exported["signedBy"] == "both" and all(check.ok for check in verify_export(exported))
        assert exported["agreement"]["assignee"] == consumer.did
        assert exported["agreement"]["target"] == "pcf-brake-disc-bd330v"
        mine = p.get(f"/negotiations/{quote(pid, safe='')}").json()
        assert mine["agreement"] == exported["agreement"]
