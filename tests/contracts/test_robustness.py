"""Bad peers and bad messages: retries, timeouts, replays, out-of-order, malformed, misaddressed, not yours."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cn_harness import CTX, OPEN_POLICY, TCK_DID, FakeOffers, Node, Tck, make_node

from connector.errors import TokenError, ValidationError
from connector.identity import Caller, ReplayClaim, SqlReplayStore
from connector.identity._store import replay_key, token_replay_table
from contracts import LocalKeySigner, RetryPolicy, StaticKeyResolver
from contracts._negotiation_states import Role
from contracts._process import inbox
from contracts._signing import sign_agreement
from contracts._tables import negotiations

OFFER_ID = "cd1:ds1:v1"


@pytest.fixture
def provider(db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]) -> Node:
    """A provider that waits for manual approval, so the negotiation stays in REQUESTED."""
    node = make_node(
        "provider",
        db_urls(),
        keys=keys,
        offers=FakeOffers({OFFER_ID: ("ds1", OPEN_POLICY)}),
        config={"manual_approval": True},
    )
    nodes.append(node)
    return node


def _crq(tck: Tck, provider: Node) -> tuple[str, str]:
    return tck.request_negotiation(provider, OFFER_ID, "ds1")


def _state(provider: Node, ppid: str) -> tuple[str, int]:
    with provider.engine.connect() as conn:
        row = (
            conn.execute(sa.select(negotiations).where(negotiations.c.provider_pid == ppid)).mappings().one()
        )
    return row["state"], row["version"]


def test_invalid_messages_are_rejected_and_change_nothing(provider: Node, tck: Tck) -> None:
    ppid, cpid = _crq(tck, provider)
    before = _state(provider, ppid)
    base = f"{provider.dsp}/negotiations/{ppid}"
    pids = {"providerPid": ppid, "consumerPid": cpid}
    cases: list[tuple[str, Any, int, str]] = [
        # out of order: verification and ACCEPTED in REQUESTED
        (
            f"{base}/agreement/verification",
            {"@type": "ContractAgreementVerificationMessage", **pids},
            400,
            "not allowed in state REQUESTED",
        ),
        (
            f"{base}/events",
            {"@type": "ContractNegotiationEventMessage", **pids, "eventType": "ACCEPTED"},
            400,
            "not allowed",
        ),
        # a provider-only event sent to the provider
        (
            f"{base}/events",
            {"@type": "ContractNegotiationEventMessage", **pids, "eventType": "FINALIZED"},
            400,
            "not allowed",
        ),
        # malformed
        (
            f"{base}/termination",
            {"@type": "ContractNegotiationTerminationMessage", "providerPid": ppid},
            400,
            "consumerPid: required",
        ),
        (
            f"{base}/termination",
            {"@type": "ContractOfferMessage", **pids},
            400,
            "expected ContractNegotiationTerminationMessage",
        ),
        # wrongly addressed
        (
            f"{base}/termination",
            {"@type": "ContractNegotiationTerminationMessage", "providerPid": "other", "consumerPid": cpid},
            400,
            "addressed to 'other'",
        ),
        (
            f"{base}/termination",
            {"@type": "ContractNegotiationTerminationMessage", "providerPid": ppid, "consumerPid": "x"},
            400,
            "peer's pid",
        ),
        # unknown pid
        (
            f"{provider.dsp}/negotiations/nope/termination",
            {"@type": "ContractNegotiationTerminationMessage", **pids},
            404,
            "no negotiation",
        ),
    ]
    for url, body, status, reason in cases:
        r = tck.post(url, body)
        assert r.status_code == status, (url, body, r.text)
        err = r.json()
        assert err["@type"] == "ContractNegotiationError", err
        assert any(reason in x for x in err["reason"]), (reason, err)
    r = tck.http.post(f"{base}/termination", content=b"{not json")
    assert r.status_code == 400 and r.json()["@type"] == "ContractNegotiationError"
    assert _state(provider, ppid) == before, "errors never change state"


def test_not_yours_is_404(provider: Node, tck: Tck) -> None:
    ppid, cpid = _crq(tck, provider)
    other = {"X-Test-Caller": "did:web:intruder"}
    assert httpx.get(f"{provider.dsp}/negotiations/{ppid}", headers=other).status_code == 404
    r = httpx.post(
        f"{provider.dsp}/negotiations/{ppid}/termination",
        json={
            "@context": CTX,
            "@type": "ContractNegotiationTerminationMessage",
            "providerPid": ppid,
            "consumerPid": cpid,
        },
        headers=other,
    )
    assert r.status_code == 404
    assert tck.http.get(f"{provider.dsp}/negotiations/{ppid}").json()["state"] == "REQUESTED"


def test_redelivered_message_is_acked_once(provider: Node, tck: Tck) -> None:
    ppid, cpid = _crq(tck, provider)
    body = {
        "@context": CTX,
        "@id": "urn:uuid:same-message",
        "@type": "ContractNegotiationTerminationMessage",
        "providerPid": ppid,
        "consumerPid": cpid,
        "code": "1",
    }
    url = f"{provider.dsp}/negotiations/{ppid}/termination"
    first = tck.http.post(url, json=body)
    again = tck.http.post(url, json=body)
    assert first.status_code == again.status_code == 200
    assert first.json()["state"] == again.json()["state"] == "TERMINATED"
    # Same id, different content: a replay attack, not a redelivery.
    forged = tck.http.post(url, json={**body, "code": "2"})
    assert forged.status_code in (400, 409)
    assert forged.json()["@type"] == "ContractNegotiationError"


def test_initial_request_redelivered_gets_the_same_negotiation(
    provider: Node, tck: Tck, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also: on PostgreSQL a new request is written by one statement (row, message id and the
    reaction together, decision 0409); a resend or a reused consumerPid writes nothing there
    and is answered by the locking path."""
    taken: list[bool] = []
    original = provider.manager._request_optimistic

    def spy(*args: Any) -> Any:
        out = original(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(provider.manager, "_request_optimistic", spy)
    body = {
        "@context": CTX,
        "@id": "urn:uuid:crq-1",
        "@type": "ContractRequestMessage",
        "consumerPid": "urn:uuid:c-1",
        "offer": {"@id": OFFER_ID, "@type": "Offer", "target": "ds1", "permission": [{"action": "use"}]},
        "callbackAddress": tck.url,
    }
    a = tck.http.post(f"{provider.dsp}/negotiations/request", json=body)
    b = tck.http.post(f"{provider.dsp}/negotiations/request", json=body)
    assert a.status_code == 201 and b.status_code in (200, 201)
    assert a.json()["providerPid"] == b.json()["providerPid"]
    # Another request reusing the consumerPid is not a redelivery: refused.
    c = tck.http.post(f"{provider.dsp}/negotiations/request", json={**body, "@id": "urn:uuid:crq-2"})
    assert c.status_code == 400 and "already names negotiation" in " ".join(c.json()["reason"])
    assert len(provider.manager.list_negotiations(role="provider")) == 1
    assert taken == ([True, False, False] if provider.engine.dialect.name == "postgresql" else [])
    with provider.engine.connect() as conn:  # the refused request left no trace
        ids = conn.execute(sa.select(inbox.c.message_id)).scalars().all()
    assert "urn:uuid:crq-1" in ids and "urn:uuid:crq-2" not in ids
    # waiting for the operator (manual approval), as the one write stored it
    view = provider.manager.list_negotiations(role="provider")[0]
    assert (view["internalState"], view["errorDetail"]) == ("REQUESTED", "waiting for manual approval")


def _consumer(db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], **kw: Any) -> Node:
    node = make_node("consumer", db_urls(), keys=keys, **kw)
    nodes.append(node)
    return node


def _start(consumer: Node, tck: Tck, dataset: str = "ds1") -> str:
    view = consumer.manager.start_negotiation(
        tck.url,
        offer={"@id": OFFER_ID, "target": dataset, **OPEN_POLICY},
        counterparty_id=TCK_DID,
    )
    return str(view["id"])


def test_peer_503_is_retried_then_succeeds(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], tck: Tck
) -> None:
    consumer = _consumer(db_urls, keys, nodes)
    tck.answers = [(503, 0), (503, 0)]
    nid = _start(consumer, tck)
    view = consumer.wait_state(nid, {"REQUESTED"})
    assert view["providerPid"] == tck.provider_pid
    assert tck.received.qsize() == 3, "two 503s and one success"


def test_peer_503_forever_terminates_with_reason(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], tck: Tck
) -> None:
    consumer = _consumer(db_urls, keys, nodes)
    tck.answers = [(503, 0)] * 5
    nid = _start(consumer, tck)
    view = consumer.wait_state(nid, {"TERMINATED"})
    assert "gave up after 3 attempts" in view["errorDetail"] and "503" in view["errorDetail"]


def test_slow_peer_times_out_and_terminates(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], tck: Tck
) -> None:
    consumer = _consumer(
        db_urls, keys, nodes, http=httpx.Client(timeout=0.2), retry=RetryPolicy(limit=2, base_s=0.01)
    )
    tck.answers = [(200, 1.0)] * 3
    nid = _start(consumer, tck)
    view = consumer.wait_state(nid, {"TERMINATED"})
    assert "timeout sending ContractRequestMessage" in view["errorDetail"]


def _agreement(consumer: Node, target: str) -> dict[str, Any]:
    return {
        "@id": str(uuid.uuid4()),
        "@type": "Agreement",
        "target": target,
        "timestamp": "2026-01-01T00:00:00Z",
        "assigner": TCK_DID,
        "assignee": consumer.did,
        "permission": [{"action": "use"}],
    }


def _send_agreement(
    consumer: Node, tck: Tck, nid: str, agreement: dict[str, Any], signature: str | None = None
) -> None:
    cpid = consumer.manager.get(nid)["consumerPid"]
    body: dict[str, Any] = {
        "@type": "ContractAgreementMessage",
        "providerPid": tck.provider_pid,
        "consumerPid": cpid,
        "agreement": agreement,
    }
    if signature:
        body["https://w3id.org/dadam/v1/agreementSignature"] = signature
    r = tck.post(f"{consumer.dsp}/negotiations/{cpid}/agreement", body)
    assert r.status_code == 200, r.text


def test_consumer_terminates_an_agreement_it_did_not_ask_for(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], tck: Tck
) -> None:
    consumer = _consumer(db_urls, keys, nodes)
    nid = _start(consumer, tck)
    consumer.wait_state(nid, {"REQUESTED"})
    tck.expect("ContractRequestMessage", "/negotiations/request")
    _send_agreement(consumer, tck, nid, _agreement(consumer, "another-dataset"))
    trm = tck.expect("ContractNegotiationTerminationMessage", f"/negotiations/{tck.provider_pid}/termination")
    assert "another-dataset" in " ".join(trm["reason"])
    view = consumer.wait_state(nid, {"TERMINATED"})
    assert "agreement rejected" in view["errorDetail"] or "another-dataset" in (view["errorDetail"] or "")


def test_consumer_rejects_a_bad_provider_signature(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], tck: Tck
) -> None:
    consumer = _consumer(db_urls, keys, nodes)
    nid = _start(consumer, tck)
    consumer.wait_state(nid, {"REQUESTED"})
    tck.expect("ContractRequestMessage", "/negotiations/request")
    impostor = LocalKeySigner(TCK_DID)
    keys.add(impostor.kid, LocalKeySigner(TCK_DID).public_jwk())  # the published key is another one
    agreement = _agreement(consumer, "ds1")
    _send_agreement(consumer, tck, nid, agreement, sign_agreement(impostor, agreement))
    trm = tck.expect("ContractNegotiationTerminationMessage", f"/negotiations/{tck.provider_pid}/termination")
    assert "provider signature invalid" in " ".join(trm["reason"])
    time.sleep(0.1)
    assert consumer.manager.get(nid)["internalState"] in ("TERMINATING", "TERMINATED")


def _recorded(engine: sa.Engine, jti: str) -> int:
    """How many times the TCK's token id ``jti`` is in ``engine``'s replay table (0 or 1)."""
    t = token_replay_table
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).where(t.c.token_key == replay_key(TCK_DID, jti)))
        return int(count.scalar_one())


def _inbox_has(engine: sa.Engine, message_id: str) -> bool:
    with engine.connect() as conn:
        found = conn.execute(sa.select(inbox.c.message_id).where(inbox.c.message_id == message_id))
        return found.first() is not None


def test_a_token_id_goes_in_with_the_guarded_write_and_a_spent_one_changes_nothing(
    db_urls: Callable[[], str],
    keys: StaticKeyResolver,
    nodes: list[Node],
    tck: Tck,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A DSP message whose token id is still to be recorded, for a negotiation whose row the
    connector remembers (PostgreSQL), is applied by one statement that also records the id
    (decision 0411). A token id used before is refused (401) with nothing changed: the message
    is not taken as received, so it is applied when it comes again with a fresh token. A resend
    of an applied message with a fresh token gets the negotiation's answer, no refusal."""
    consumer = _consumer(db_urls, keys, nodes)
    nid = _start(consumer, tck)
    consumer.wait_state(nid, {"REQUESTED"})
    tck.expect("ContractRequestMessage", "/negotiations/request")
    cpid = consumer.manager.get(nid)["consumerPid"]
    store = SqlReplayStore(consumer.engine)
    expires = int(time.time()) + 300
    pg = consumer.engine.dialect.name == "postgresql"
    reads: list[bool] = []
    find = consumer.manager._find

    def spy_find(*args: Any, **kw: Any) -> Any:
        reads.append(bool(kw.get("lock")))
        return find(*args, **kw)

    monkeypatch.setattr(consumer.manager, "_find", spy_find)

    def caller(jti: str) -> Caller:
        return Caller(did=TCK_DID, replay=ReplayClaim(store, TCK_DID, jti, expires))

    recorded = functools.partial(_recorded, consumer.engine)
    inbox_has = functools.partial(_inbox_has, consumer.engine)

    ppid = tck.provider_pid
    agreement = {
        "@context": CTX,
        "@id": "urn:uuid:agreement-1",
        "@type": "ContractAgreementMessage",
        "providerPid": ppid,
        "consumerPid": cpid,
        "agreement": _agreement(consumer, "ds1"),
    }
    first = caller("fresh-1")
    ack = consumer.manager.receive(Role.CONSUMER, "agreement", cpid, agreement, first)
    assert ack["state"] == "AGREED" and first.replay is not None and first.replay.recorded
    assert recorded("fresh-1") == 1
    if pg:  # applied with the remembered row: no read at all
        assert reads == [], reads
    tck.expect("ContractAgreementVerificationMessage", f"/negotiations/{ppid}/agreement/verification")
    consumer.wait_state(nid, {"VERIFIED"})
    # a spent token id: refused, nothing changed, the message not taken as received
    assert store.add(TCK_DID, "used-before", expires)
    finalized = {
        "@context": CTX,
        "@id": "urn:uuid:finalized-1",
        "@type": "ContractNegotiationEventMessage",
        "providerPid": ppid,
        "consumerPid": cpid,
        "eventType": "FINALIZED",
    }
    before = consumer.manager.get(nid)
    with pytest.raises(TokenError, match="replay"):
        consumer.manager.receive(Role.CONSUMER, "events", cpid, finalized, caller("used-before"))
    assert consumer.manager.get(nid) == before and not inbox_has("urn:uuid:finalized-1")
    # the same message with a fresh token is applied
    ack = consumer.manager.receive(Role.CONSUMER, "events", cpid, finalized, caller("fresh-2"))
    assert ack["state"] == "FINALIZED" and recorded("fresh-2") == 1
    # a resend of the applied agreement with a fresh token: the negotiation's answer
    ack = consumer.manager.receive(Role.CONSUMER, "agreement", cpid, agreement, caller("fresh-3"))
    assert ack["state"] == "FINALIZED" and recorded("fresh-3") == 1
    assert consumer.manager.get(nid)["internalState"] == "FINALIZED"


def test_the_initial_requests_token_id_goes_in_with_the_new_row(
    provider: Node, tck: Tck, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The initial request's token id is recorded by the write that creates the negotiation
    (on PostgreSQL the same statement, decision 0413), not by a statement of its own. A spent
    id is refused (401) with nothing written, before any other error of the request. When the
    new row is not written although the statement added the id (here: the catalog changed
    since the decision), the id counts as spent by this request, not as a replay: the request
    is answered, not refused."""
    store = SqlReplayStore(provider.engine)
    expires = int(time.time()) + 300
    pg = provider.engine.dialect.name == "postgresql"
    separate: list[str] = []
    add = SqlReplayStore.add

    def spy_add(self: SqlReplayStore, issuer: str, jti: str, expires_at: int) -> bool:
        separate.append(jti)
        return add(self, issuer, jti, expires_at)

    monkeypatch.setattr(SqlReplayStore, "add", spy_add)

    def caller(jti: str) -> Caller:
        return Caller(did=TCK_DID, replay=ReplayClaim(store, TCK_DID, jti, expires))

    recorded = functools.partial(_recorded, provider.engine)

    def request(mid: str, cpid: str, offer_id: str = OFFER_ID) -> dict[str, Any]:
        offer = {"@id": offer_id, "@type": "Offer", "target": "ds1", "permission": [{"action": "use"}]}
        return {
            "@context": CTX, "@id": mid, "@type": "ContractRequestMessage", "consumerPid": cpid,
            "offer": offer, "callbackAddress": tck.url,
        }  # fmt: skip

    def negotiations_of(cpid: str) -> int:
        return sum(1 for n in provider.manager.list_negotiations(role="provider") if n["consumerPid"] == cpid)

    manager = provider.manager
    first = caller("fresh-1")
    ack = manager.provider_request(request("urn:uuid:r-1", "c-1"), first)
    assert ack["state"] == "REQUESTED" and first.replay is not None and first.replay.recorded
    assert recorded("fresh-1") == 1 and separate == []  # with the write, not on its own
    # a resend with a fresh token: the same negotiation, the new id spent too
    again = manager.provider_request(request("urn:uuid:r-1", "c-1"), caller("fresh-2"))
    assert again["providerPid"] == ack["providerPid"] and recorded("fresh-2") == 1
    # a spent id: refused, nothing written
    assert store.add(TCK_DID, "used-before", expires)
    with pytest.raises(TokenError, match="replay"):
        manager.provider_request(request("urn:uuid:r-2", "c-2"), caller("used-before"))
    assert negotiations_of("c-2") == 0 and not _inbox_has(provider.engine, "urn:uuid:r-2")
    # ... and refused as a replay even when the request is bad for another reason too
    with pytest.raises(TokenError, match="replay"):
        manager.provider_request(request("urn:uuid:r-3", "c-3", "cd1:nope:v1"), caller("used-before"))
    # a request refused for another reason spends its (fresh) token id all the same
    with pytest.raises(ValidationError):
        manager.provider_request(request("urn:uuid:r-4", "c-4", "cd1:nope:v1"), caller("fresh-4"))
    assert recorded("fresh-4") == 1
    # the catalog changed between the decision and the write: on PostgreSQL the statement adds
    # the id but not the row; the request is then decided again and answered
    offers = manager.offers
    assert offers is not None
    stale = SimpleNamespace(
        resolve_offer=offers.resolve_offer,
        resolve_offer_as_of=lambda offer_id, who: (
            offers.resolve_offer(offer_id, who),
            SimpleNamespace(table=negotiations, values={"id": "no-such-revision"}),
        ),
    )
    monkeypatch.setattr(manager, "offers", stale)
    taken: list[bool] = []
    original = manager._request_optimistic

    def spy(*args: Any) -> Any:
        out = original(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(manager, "_request_optimistic", spy)
    late = caller("fresh-5")
    ack = manager.provider_request(request("urn:uuid:r-5", "c-5"), late)
    assert ack["state"] == "REQUESTED" and negotiations_of("c-5") == 1
    assert recorded("fresh-5") == 1 and late.replay is not None and late.replay.recorded
    assert taken == ([False] if pg else [])
    assert "fresh-5" not in separate
