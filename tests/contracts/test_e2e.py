"""Two connectors (separate databases, real HTTP on loopback) negotiate end to end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cn_harness import CLAIMS, MEMBERS_ONLY, OPEN_POLICY, FakeOffers, Node, make_node

from contracts import StaticKeyResolver, verify_export
from contracts._negotiation_states import State
from contracts._process import outbox
from contracts._tables import negotiations

OFFER_ID = "cd1:ds-carbon:v1"


def _pair(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], policy: dict[str, Any], **kw: Any
) -> tuple[Node, Node]:
    provider = make_node(
        "provider", db_urls(), keys=keys, offers=FakeOffers({OFFER_ID: ("ds-carbon", policy)}), **kw
    )
    nodes.append(provider)
    consumer = make_node("consumer", db_urls(), keys=keys, sign=kw.get("sign", True))
    nodes.append(consumer)
    return provider, consumer


def _start(consumer: Node, provider: Node, policy: dict[str, Any]) -> dict[str, Any]:
    with consumer.mgmt() as c:
        r = c.post(
            "/negotiations",
            json={
                "counterPartyAddress": provider.dsp,
                "counterPartyId": provider.did,
                "offer": {"@id": OFFER_ID, "target": "ds-carbon", **policy},
            },
        )
    assert r.status_code == 201, r.text
    return r.json()


def test_negotiation_finalizes_with_both_signatures(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes, OPEN_POLICY)
    started = _start(consumer, provider, OPEN_POLICY)
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    assert done["signedBy"] == ["provider", "consumer"]
    prov_view = provider.manager.list_negotiations(role="provider")[0]
    prov_view = provider.wait_state(prov_view["id"], {"FINALIZED"})
    assert prov_view["signedBy"] == ["provider", "consumer"]
    assert prov_view["agreement"] == done["agreement"]
    agreement = done["agreement"]
    assert agreement["assigner"] == provider.did and agreement["assignee"] == consumer.did
    assert agreement["target"] == "ds-carbon"
    # Either side's export verifies offline, and a tampered copy does not.
    for node, nid in ((consumer, done["id"]), (provider, prov_view["id"])):
        with node.mgmt() as c:
            exported = c.get(f"/negotiations/{nid}/agreement").json()
        assert exported["signedBy"] == "both"
        assert all(check.ok for check in verify_export(exported)), verify_export(exported)
        tampered = {**exported, "agreement": {**exported["agreement"], "target": "other"}}
        assert not any(check.ok for check in verify_export(tampered))
    # DSP GET on both sides agrees.
    r = httpx.get(
        f"{provider.dsp}/negotiations/{done['providerPid']}", headers={"X-Test-Caller": consumer.did}
    )
    assert r.json()["state"] == "FINALIZED"
    r = httpx.get(
        f"{consumer.dsp}/negotiations/{done['consumerPid']}", headers={"X-Test-Caller": provider.did}
    )
    assert r.json()["state"] == "FINALIZED"


def test_a_received_message_and_the_reply_to_it_are_one_row_write(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    """The state a received message leads to (e.g. REQUESTED) and the state of the reply to it
    (AGREEING) are stored with one UPDATE; each write steps the row's version once. Both sides
    wait before replying, so every ACK is recorded before the next message arrives and the
    number of writes is exact."""
    provider = make_node(
        "provider",
        db_urls(),
        keys=keys,
        offers=FakeOffers({OFFER_ID: ("ds-carbon", OPEN_POLICY)}),
        config={"reply_delay_s": 0.3},
    )
    nodes.append(provider)
    consumer = make_node("consumer", db_urls(), keys=keys, config={"reply_delay_s": 0.3})
    nodes.append(consumer)
    started = _start(consumer, provider, OPEN_POLICY)
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    prov_id = provider.manager.list_negotiations(role="provider")[0]["id"]
    provider.wait_state(prov_id, {"FINALIZED"})

    def version(node: Node, nid: str) -> int:
        with node.engine.connect() as conn:
            return int(
                conn.execute(sa.select(negotiations.c.version).where(negotiations.c.id == nid)).scalar_one()
            )

    # provider: inserted (0), REQUESTED+AGREEING (1), AGREED (2), VERIFIED+FINALIZING (3), FINALIZED (4)
    assert version(provider, prov_id) == 4
    # consumer: inserted (0), REQUESTING (1), REQUESTED (2), AGREED+VERIFYING (3), VERIFIED (4), FINALIZED (5)
    assert version(consumer, started["id"]) == 5


def test_acks_recorded_with_the_next_message_leave_nothing_behind(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    """On PostgreSQL the ACK of a message is usually recorded by the write of the peer's next
    message (decision 0410). Whatever the timing, both sides end FINALIZED with every outbox
    row sent and each message sent once, also when the provider stops right after the consumer
    finished (nothing is left to a lease expiry)."""
    provider, consumer = _pair(db_urls, keys, nodes, OPEN_POLICY)
    for _ in range(3):
        started = _start(consumer, provider, OPEN_POLICY)
        assert consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})["internalState"] == "FINALIZED"
    nodes.remove(provider)
    provider.stop()  # at once
    for node in (provider, consumer):
        with node.engine.connect() as conn:  # a stopped node's engine opens a new connection
            states = conn.execute(sa.select(negotiations.c.state)).scalars().all()
            out = conn.execute(sa.select(outbox.c.status, outbox.c.attempts)).all()
        node.engine.dispose()
        assert states == [int(State.FINALIZED)] * 3, (node.name, states)
        assert {tuple(r) for r in out} == {("sent", 1)}, (node.name, out)
        assert len(out) == 6, node.name  # 2 messages per negotiation on each side


def test_received_messages_take_the_optimistic_path_on_postgres(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a message for an existing negotiation is applied without a transaction (the
    row read unlocked, then one version-guarded statement). A message the state does not take
    writes nothing there and gets its error from the locking path, as before (a resend of an
    applied message likewise: ``test_process.py``'s optimistic write test). SQLite: always
    the locking path (one writer anyway)."""
    provider = make_node(
        "provider", db_urls(), keys=keys, offers=FakeOffers({OFFER_ID: ("ds-carbon", OPEN_POLICY)})
    )
    nodes.append(provider)
    # The consumer waits before replying, so the provider has recorded the ACK of its agreement
    # (a row write) before the verification comes: the version it reads then still holds.
    consumer = make_node("consumer", db_urls(), keys=keys, config={"reply_delay_s": 0.3})
    nodes.append(consumer)
    taken: list[tuple[str, bool]] = []
    for node in (provider, consumer):
        original = node.manager._receive_optimistic

        def spy(*args: Any, _orig: Any = original, _name: str = node.name) -> Any:
            out = _orig(*args)
            taken.append((_name, out is not None))
            return out

        monkeypatch.setattr(node.manager, "_receive_optimistic", spy)
    started = _start(consumer, provider, OPEN_POLICY)
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    prov = provider.wait_state(provider.manager.list_negotiations(role="provider")[0]["id"], {"FINALIZED"})
    if provider.engine.dialect.name != "postgresql":
        assert taken == []
        return
    # the provider's verification (its initial request opens a row; the consumer, replying
    # late, always takes the locking path)
    assert taken == [("provider", True)], taken
    # a verification after FINALIZED, twice: the locking path's error both times, no change
    verification = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@id": "urn:uuid:late-verification",
        "@type": "ContractAgreementVerificationMessage",
        "providerPid": prov["providerPid"],
        "consumerPid": prov["consumerPid"],
    }
    url = f"{provider.dsp}/negotiations/{prov['providerPid']}/agreement/verification"
    taken.clear()
    first = httpx.post(url, json=verification, headers={"X-Test-Caller": consumer.did})
    assert first.status_code == 400 and "not allowed in state FINALIZED" in first.json()["reason"][0]
    assert taken == [("provider", False)]
    taken.clear()
    again = httpx.post(url, json=verification, headers={"X-Test-Caller": consumer.did})
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert taken == [("provider", False)]
    assert provider.manager.get(prov["id"])["internalState"] == "FINALIZED"


def test_a_new_negotiation_is_one_statement_on_postgres(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: starting a negotiation stores the new row, already REQUESTING, with its
    request in one statement (decision 0409); the row is then what the locking path would
    have stored (version 1: inserted and moved once). With a webhook to call (a write of its
    own), and always on SQLite, the locking path starts it."""
    provider, consumer = _pair(db_urls, keys, nodes, OPEN_POLICY)
    taken: list[str] = []
    original = consumer.manager._start_optimistic

    def spy(pid: str, *args: Any) -> Any:
        taken.append(pid)
        return original(pid, *args)

    monkeypatch.setattr(consumer.manager, "_start_optimistic", spy)
    started = _start(consumer, provider, OPEN_POLICY)
    assert started["internalState"] == "REQUESTING" and started["state"] == "REQUESTED"
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    # Against a peer that is down (the rows stay as stored), the one statement stores what
    # the locking path stores for a negotiation with a webhook.
    rows = []
    for hooks in ([], ["http://127.0.0.1:9/hook"]):
        view = consumer.manager.start_negotiation(
            "http://127.0.0.1:9/dsp",
            offer={"@id": OFFER_ID, "target": "ds-carbon", **OPEN_POLICY},
            counterparty_id=provider.did,
            callbacks=hooks,
        )
        with consumer.engine.connect() as conn:
            row = (
                conn.execute(sa.select(negotiations).where(negotiations.c.id == view["id"])).mappings().one()
            )
        assert view["internalState"] == "REQUESTING" and row["version"] == 1
        assert row["deadline"] > row["state_since"] == row["updated_at"] >= row["created_at"]
        varying = ("callbacks", "id", "consumer_pid", "state_since", "deadline", "created_at", "updated_at")
        rows.append({k: v for k, v in row.items() if k not in varying})
    assert rows[0] == rows[1]
    pg = consumer.engine.dialect.name == "postgresql"
    assert len(taken) == (2 if pg else 0)


def test_unsigned_provider_still_interoperates(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider = make_node(
        "provider",
        db_urls(),
        keys=keys,
        offers=FakeOffers({OFFER_ID: ("ds-carbon", OPEN_POLICY)}),
        sign=False,
    )
    nodes.append(provider)
    consumer = make_node("consumer", db_urls(), keys=keys)
    nodes.append(consumer)
    started = _start(consumer, provider, OPEN_POLICY)
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    assert done["signedBy"] == ["consumer"]
    exported = consumer.manager.export(done["id"])
    assert exported["signedBy"] == "one party"


def test_policy_denial_terminates_with_the_engines_explanation(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes, MEMBERS_ONLY)
    started = _start(consumer, provider, MEMBERS_ONLY)
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "TERMINATED"
    assert "contract policy denied" in done["errorDetail"]
    assert "Membership" in done["errorDetail"] or "permission[0]" in done["errorDetail"]


def test_policy_permits_a_member(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes, MEMBERS_ONLY)
    CLAIMS[consumer.did] = {"memberships": ["catena-x"]}
    started = _start(consumer, provider, MEMBERS_ONLY)
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]


def test_requesting_more_than_offered_is_refused(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes, MEMBERS_ONLY)
    CLAIMS[consumer.did] = {"memberships": ["catena-x"]}
    started = _start(consumer, provider, OPEN_POLICY)  # drops the constraint: asks for more
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "TERMINATED"
    assert "not within the offer" in done["errorDetail"]


def test_manual_approval(db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]) -> None:
    provider, consumer = _pair(db_urls, keys, nodes, OPEN_POLICY, config={"manual_approval": True})
    started = _start(consumer, provider, OPEN_POLICY)
    consumer.wait_state(started["id"], {"REQUESTED"})
    pending = provider.manager.list_negotiations(role="provider")[0]
    assert pending["pending"] and pending["state"] == "REQUESTED"
    with provider.mgmt() as c:
        assert c.post(f"/negotiations/{pending['id']}/approve").status_code == 200
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]


def test_unknown_offer_is_a_400_with_reason(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes, OPEN_POLICY)
    body = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractRequestMessage",
        "consumerPid": "urn:uuid:c1",
        "offer": {"@id": "nope:ds:1", "@type": "Offer", "target": "ds", "permission": [{"action": "use"}]},
        "callbackAddress": consumer.dsp,
    }
    r = httpx.post(f"{provider.dsp}/negotiations/request", json=body, headers={"X-Test-Caller": consumer.did})
    assert r.status_code == 400
    err = r.json()
    assert err["@type"] == "ContractNegotiationError" and any("nope:ds:1" in x for x in err["reason"])


def test_peer_down_terminates_with_reason(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    consumer = make_node("consumer", db_urls(), keys=keys)
    nodes.append(consumer)
    view = consumer.manager.start_negotiation(
        "http://127.0.0.1:9/dsp", offer={"@id": OFFER_ID, "target": "ds-carbon", **OPEN_POLICY}
    )
    done = consumer.wait_state(view["id"], {"TERMINATED"})
    assert "could not deliver ContractRequestMessage" in done["errorDetail"]
    assert "gave up after 3 attempts" in done["errorDetail"] and "cannot reach" in done["errorDetail"]


def test_state_timeout_terminates(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes, OPEN_POLICY, config={"manual_approval": True})
    consumer.manager.config.state_timeout_s = 0.5
    started = _start(consumer, provider, OPEN_POLICY)
    done = consumer.wait_state(started["id"], {"TERMINATED"})
    assert "timed out in state REQUESTED" in done["errorDetail"]
    # The provider was told.
    prov = provider.manager.list_negotiations(role="provider")[0]
    prov = provider.wait_state(prov["id"], {"TERMINATED"})
    assert "terminated by the counter-party" in prov["errorDetail"]


def test_provider_counter_offer_granting_more_is_accepted(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes, MEMBERS_ONLY, config={"manual_approval": True})
    CLAIMS[consumer.did] = {"memberships": ["catena-x"]}
    started = _start(consumer, provider, MEMBERS_ONLY)
    consumer.wait_state(started["id"], {"REQUESTED"})
    pending = provider.manager.list_negotiations(role="provider")[0]
    # The provider drops its membership condition: the consumer gets more than it asked for.
    with provider.mgmt() as c:
        r = c.post(f"/negotiations/{pending['id']}/counter-offer", json={"offer": OPEN_POLICY})
    assert r.status_code == 200, r.text
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    assert done["agreement"]["permission"] == [{"action": "use"}], "the agreement carries the counter-offer"


def test_provider_counter_offer_narrower_than_asked_is_refused(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes, OPEN_POLICY, config={"manual_approval": True})
    started = _start(consumer, provider, OPEN_POLICY)
    consumer.wait_state(started["id"], {"REQUESTED"})
    pending = provider.manager.list_negotiations(role="provider")[0]
    with provider.mgmt() as c:
        assert (
            c.post(f"/negotiations/{pending['id']}/counter-offer", json={"offer": MEMBERS_ONLY}).status_code
            == 200
        )
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "TERMINATED"
    assert "offer is not what we asked for" in done["errorDetail"] and "Membership" in done["errorDetail"]


def test_provider_counter_offer_wider_than_asked_is_refused_by_the_consumer(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node]
) -> None:
    provider, consumer = _pair(db_urls, keys, nodes, MEMBERS_ONLY, config={"manual_approval": True})
    CLAIMS[consumer.did] = {"memberships": ["catena-x"]}
    started = _start(consumer, provider, MEMBERS_ONLY)
    consumer.wait_state(started["id"], {"REQUESTED"})
    pending = provider.manager.list_negotiations(role="provider")[0]
    # A counter-offer with an extra duty the consumer never agreed to.
    wider = {"permission": [{**MEMBERS_ONLY["permission"][0], "duty": [{"action": "compensate"}]}]}
    with provider.mgmt() as c:
        assert (
            c.post(f"/negotiations/{pending['id']}/counter-offer", json={"offer": wider}).status_code == 200
        )
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "TERMINATED"
    assert "offer is not what we asked for" in done["errorDetail"], done["errorDetail"]
    assert "compensate" in done["errorDetail"], done["errorDetail"]


def _db_row(node: Node, pid: str) -> dict[str, Any]:
    with node.engine.connect() as conn:
        return dict(conn.execute(sa.select(negotiations).where(negotiations.c.id == pid)).mappings().one())


def test_the_row_our_last_write_stored_saves_the_read_on_postgres(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a connector remembers each negotiation's row as its last guarded write (or
    the worker's ACK) stored it, so the peer's next message is applied with one statement and
    no read (decision 0411). What it remembers is exactly the stored row; finished
    negotiations are forgotten. SQLite takes the locking path and remembers nothing."""
    provider, consumer = _pair(db_urls, keys, nodes, OPEN_POLICY)
    reads: list[str] = []
    kept: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for node in (provider, consumer):
        find, keep = node.manager._find, node.manager._keep_row

        def spy_find(*args: Any, _orig: Any = find, _name: str = node.name, **kw: Any) -> Any:
            if not kw.get("lock", True):
                reads.append(_name)
            return _orig(*args, **kw)

        def spy_keep(role: Any, pid: str, row: Any, _orig: Any = keep, _node: Node = node) -> None:
            if row is not None:  # kept after its write committed, before anything is sent on
                kept.append((_node.name, dict(row), _db_row(_node, pid)))
            _orig(role, pid, row)

        monkeypatch.setattr(node.manager, "_find", spy_find)
        monkeypatch.setattr(node.manager, "_keep_row", spy_keep)
    for _ in range(3):
        started = _start(consumer, provider, OPEN_POLICY)
        done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
        assert done["internalState"] == "FINALIZED", done["errorDetail"]
        assert done["signedBy"] == ["provider", "consumer"]
    for view in provider.manager.list_negotiations(role="provider"):
        provider.wait_state(view["id"], {"FINALIZED"})
    if provider.engine.dialect.name != "postgresql":
        assert provider.manager._rows == {} and consumer.manager._rows == {}
        return
    # agreement and finalized event (consumer), verification (provider): no read, 3 times
    assert reads == [], reads
    assert kept, "nothing remembered"
    for name, remembered, stored in kept:
        assert remembered == stored, name
    assert provider.manager._rows == {} and consumer.manager._rows == {}  # all FINALIZED


def test_a_stale_remembered_row_changes_nothing_but_the_path(
    db_urls: Callable[[], str], keys: StaticKeyResolver, nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remembered row another writer has moved past (a replica, a timeout) fails the guarded
    write; the locking path then reads the row and applies the message once. A caller that is
    not the counter-party of the remembered row gets the locking path's 404, nothing changed."""
    provider, consumer = _pair(db_urls, keys, nodes, OPEN_POLICY)
    fell_back: list[str] = []
    for node in (provider, consumer):
        take, receive = node.manager._take_row, node.manager._receive_optimistic

        def stale(role: Any, pid: str, _orig: Any = take) -> Any:
            row = _orig(role, pid)
            if row is not None:
                row["version"] -= 1
            return row

        def spy(*args: Any, _orig: Any = receive, _name: str = node.name) -> Any:
            out = _orig(*args)
            if out is None:
                fell_back.append(_name)
            return out

        monkeypatch.setattr(node.manager, "_take_row", stale)
        monkeypatch.setattr(node.manager, "_receive_optimistic", spy)
    started = _start(consumer, provider, OPEN_POLICY)
    done = consumer.wait_state(started["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    assert done["signedBy"] == ["provider", "consumer"]
    prov = provider.wait_state(provider.manager.list_negotiations(role="provider")[0]["id"], {"FINALIZED"})
    assert prov["agreement"] == done["agreement"]
    if provider.engine.dialect.name == "postgresql":
        assert sorted(fell_back) == ["consumer", "consumer", "provider"], fell_back
        with provider.engine.connect() as conn:  # each message applied once: one row per id
            inbox = conn.execute(sa.text("SELECT count(*), count(DISTINCT message_id) FROM dsp_inbox")).one()
        assert inbox[0] == inbox[1] == 2  # the request and the verification
    # not the counter-party: 404 from the locking path, the remembered row forgotten
    monkeypatch.undo()
    view = consumer.manager.start_negotiation(
        "http://127.0.0.1:9/dsp",  # nobody answers: the row stays REQUESTING
        offer={"@id": OFFER_ID, "target": "ds-carbon", **OPEN_POLICY},
        counterparty_id=provider.did,
    )
    pg = consumer.engine.dialect.name == "postgresql"
    assert (("consumer", view["id"]) in consumer.manager._rows) is pg
    if pg:
        assert consumer.manager._rows[("consumer", view["id"])] == _db_row(consumer, view["id"])
    before = _db_row(consumer, view["id"])
    agreement = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@id": "urn:uuid:intruder-agreement",
        "@type": "ContractAgreementMessage",
        "providerPid": "urn:uuid:whatever",
        "consumerPid": view["id"],
        "agreement": done["agreement"],
    }
    r = httpx.post(
        f"{consumer.dsp}/negotiations/{view['id']}/agreement",
        json=agreement,
        headers={"X-Test-Caller": "did:web:intruder"},
    )
    assert r.status_code == 404, r.text
    assert _db_row(consumer, view["id"]) == before
    assert ("consumer", view["id"]) not in consumer.manager._rows
