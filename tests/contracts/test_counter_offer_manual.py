"""Consumer with ``accept_counter_offers="manual"``: a provider's counter-offer waits in OFFERED, visible in
the management API, until the operator accepts it, answers with a new request, or rejects it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from cn_harness import CLAIMS, MEMBERS_ONLY, OPEN_POLICY, FakeOffers, Node, make_node

from contracts import StaticKeyResolver

OFFER_ID = "cd1:ds-carbon:v1"
#: MEMBERS_ONLY plus a duty the consumer never asked for.
WITH_DUTY: dict[str, Any] = {
    "permission": [{**MEMBERS_ONLY["permission"][0], "duty": [{"action": "compensate"}]}]
}


def _pair(db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]) -> tuple[Node, Node]:
    provider = make_node(
        "provider",
        db_urls(),
        keys=keys,
        offers=FakeOffers({OFFER_ID: ("ds-carbon", MEMBERS_ONLY)}),
        config={"manual_approval": True},  # so that its operator can counter-offer
    )
    nodes.append(provider)
    consumer = make_node("consumer", db_urls(), keys=keys, config={"accept_counter_offers": "manual"})
    nodes.append(consumer)
    CLAIMS[consumer.did] = {"memberships": ["catena-x"]}
    return provider, consumer


def _counter_offered(provider: Node, consumer: Node, offer: dict[str, Any]) -> tuple[str, str]:
    """Consumer requests MEMBERS_ONLY, the provider's operator counter-offers ``offer``; both ids."""
    with consumer.mgmt() as c:
        r = c.post(
            "/negotiations",
            json={
                "counterPartyAddress": provider.dsp,
                "counterPartyId": provider.did,
                "offer": {"@id": OFFER_ID, "target": "ds-carbon", **MEMBERS_ONLY},
            },
        )
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    consumer.wait_state(cid, {"REQUESTED"})
    pid = provider.manager.list_negotiations(role="provider", pending=True)[-1]["id"]
    with provider.mgmt() as p:
        r = p.post(f"/negotiations/{pid}/counter-offer", json={"offer": offer})
    assert r.status_code == 200, r.text
    return cid, pid


def _waiting_on_offer(consumer: Node, cid: str) -> dict[str, Any]:
    consumer.wait_state(cid, {"OFFERED"})
    with consumer.mgmt() as c:
        items = c.get("/negotiations", params={"pending": "true", "role": "consumer"}).json()["items"]
    assert [n["id"] for n in items] == [cid]
    view: dict[str, Any] = items[0]
    assert view["state"] == "OFFERED" and view["pending"] is True
    return view


def test_operator_accepts_a_costlier_counter_offer(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes)
    cid, pid = _counter_offered(provider, consumer, WITH_DUTY)
    view = _waiting_on_offer(consumer, cid)
    # The offer is visible, with why it was not taken automatically; nothing was sent back.
    assert view["offer"]["permission"] == WITH_DUTY["permission"]
    assert view["offer"]["assigner"] == provider.did
    assert "waiting for the operator" in view["errorDetail"] and "compensate" in view["errorDetail"]
    assert provider.wait_state(pid, {"OFFERED"})["internalState"] == "OFFERED"
    with provider.mgmt() as p:
        assert p.post(f"/negotiations/{pid}/accept").status_code == 409  # a provider does not accept
    with consumer.mgmt() as c:
        r = c.post(f"/negotiations/{cid}/accept")
        assert r.status_code == 200, r.text
        assert r.json()["pending"] is False
        assert r.json()["errorDetail"] is None  # the "waiting" note went with the decision
        assert c.post(f"/negotiations/{cid}/accept").status_code == 409  # not waiting any more
    done = consumer.wait_state(cid, {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    # The agreement carries the accepted counter-offer, duty included, signed by both.
    assert done["agreement"]["permission"] == WITH_DUTY["permission"]
    assert done["signedBy"] == ["provider", "consumer"]
    prov = provider.wait_state(pid, {"FINALIZED"})
    assert prov["agreement"] == done["agreement"]


def test_operator_answers_with_a_new_request(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes)
    cid, pid = _counter_offered(provider, consumer, WITH_DUTY)
    _waiting_on_offer(consumer, cid)
    with consumer.mgmt() as c:
        assert c.post(f"/negotiations/{cid}/counter-offer", json={}).status_code == 400
        # Back to the catalog's terms, without the duty.
        r = c.post(f"/negotiations/{cid}/counter-offer", json={"offer": MEMBERS_ONLY})
        assert r.status_code == 200, r.text
        assert r.json()["offer"]["permission"] == MEMBERS_ONLY["permission"]
    # The provider got a ContractRequestMessage on the same negotiation: REQUESTED, pending approval.
    waiting = provider.wait_state(pid, {"REQUESTED"})
    assert waiting["pending"] is True and waiting["consumerPid"] == cid
    assert (
        waiting["offer"]["permission"] == MEMBERS_ONLY["permission"]
        and waiting["offer"]["target"] == "ds-carbon"
    )
    with provider.mgmt() as p:
        assert p.post(f"/negotiations/{pid}/approve").status_code == 200
    done = consumer.wait_state(cid, {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    assert done["agreement"]["permission"] == MEMBERS_ONLY["permission"]
    assert provider.wait_state(pid, {"FINALIZED"})["agreement"] == done["agreement"]


def test_operator_rejects_the_counter_offer_with_a_reason(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes)
    cid, pid = _counter_offered(provider, consumer, WITH_DUTY)
    _waiting_on_offer(consumer, cid)
    with consumer.mgmt() as c:
        r = c.post(f"/negotiations/{cid}/reject", json={"reason": "we do not pay for this dataset"})
        assert r.status_code == 200, r.text
        assert c.post(f"/negotiations/{cid}/counter-offer", json={"offer": OPEN_POLICY}).status_code == 409
    done = consumer.wait_state(cid, {"TERMINATED"})
    assert done["errorDetail"] == "rejected by the operator: we do not pay for this dataset"
    prov = provider.wait_state(pid, {"TERMINATED"})
    assert "we do not pay for this dataset" in prov["errorDetail"]


def test_manual_mode_also_waits_for_an_offer_that_grants_more(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    """In manual mode nothing is accepted behind the operator's back, not even a better offer."""
    provider, consumer = _pair(db_urls, keys, nodes)
    cid, pid = _counter_offered(provider, consumer, OPEN_POLICY)
    view = _waiting_on_offer(consumer, cid)
    assert "grants at least what we asked for" in view["errorDetail"]
    # The DSP GET of the provider shows the same state.
    r = httpx.get(f"{provider.dsp}/negotiations/{pid}", headers={"X-Test-Caller": consumer.did})
    assert r.json()["state"] == "OFFERED"
    with consumer.mgmt() as c:
        assert c.post(f"/negotiations/{cid}/accept").status_code == 200
    done = consumer.wait_state(cid, {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    assert done["agreement"]["permission"] == OPEN_POLICY["permission"]
