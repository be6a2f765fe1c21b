"""Two real connectors (`dadam serve` processes: DCP tokens, did:web keys, catalog) negotiate on
SQLite and on PostgreSQL; the exported agreement verifies offline, a tampered one does not."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from connector._demo import (
    Node,
    fetch_catalog,
    negotiate,
    record_partner,
    seed_provider,
    start_node,
    stop_node,
    wait_ready,
)
from connector.cli import app
from connector.identity import Identity
from contracts import verify_export


def test_two_dadam_connectors_negotiate_a_signed_contract(db_urls: Callable[[], str], tmp_path: Path) -> None:
    provider = start_node("provider", tmp_path / "provider", env={"DADAM_DATABASE_URL": db_urls()})
    consumer = start_node("consumer", tmp_path / "consumer", env={"DADAM_DATABASE_URL": db_urls()})
    try:
        wait_ready(provider)
        wait_ready(consumer)
        seed_provider(provider)
        record_partner(provider, consumer)
        catalog = fetch_catalog(consumer, provider)
        pcf = next(d for d in catalog["dataset"] if d["@id"] == "pcf-brake-disc-bd330v")
        offer_id = pcf["hasPolicy"][0]["@id"]
        exported = negotiate(consumer, provider, offer_id)  # accepted by id: the consumer fetched the offer
        assert exported["signedBy"] == "both"
        agreement = exported["agreement"]
        assert agreement["assigner"] == provider.did and agreement["assignee"] == consumer.did
        assert agreement["target"] == "pcf-brake-disc-bd330v"
        assert all(c.ok for c in verify_export(exported))
        # The provider holds the same agreement with both signatures.
        with provider.client() as c:
            mine = c.get("/negotiations", params={"role": "provider", "state": "FINALIZED"}).json()["items"]
        assert [n["agreement"] for n in mine] == [agreement]
        assert mine[0]["signedBy"] == ["provider", "consumer"]
        # Offline check with the CLI, then a tampered copy.
        f = tmp_path / "agreement.json"
        f.write_text(json.dumps(exported))
        assert CliRunner().invoke(app, ["agreement", "verify", str(f)]).exit_code == 0
        exported["agreement"]["target"] = "something-else"
        f.write_text(json.dumps(exported))
        assert CliRunner().invoke(app, ["agreement", "verify", str(f)]).exit_code == 1
        # Unknown offer: refused with the reason, nothing negotiated.
        with consumer.client() as c:
            r = c.post(
                "/negotiations",
                json={
                    "counterPartyAddress": provider.dsp_url,
                    "counterPartyId": provider.did,
                    "offerId": "nope:x:y",
                },
            )
        assert r.status_code == 404, r.text
        _replayed_tokens_are_refused(provider, consumer, mine[0])
    finally:
        stop_node(consumer)
        stop_node(provider)


def _replayed_tokens_are_refused(provider: Node, consumer: Node, negotiation: dict[str, Any]) -> None:
    """A DCP token is good for one request on a negotiation endpoint: again, it is refused with
    401 before anything else is looked at, whether its first request was answered or refused
    (on PostgreSQL its id is recorded by the statement that reads the negotiation)."""
    me = Identity.load_or_create(consumer.did, consumer.data_dir)
    pid = negotiation["providerPid"]
    url = f"{provider.dsp_url}/negotiations/{pid}/agreement/verification"
    late = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@id": "urn:uuid:late-verification",
        "@type": "ContractAgreementVerificationMessage",
        "providerPid": pid,
        "consumerPid": negotiation["consumerPid"],
    }
    token = me.issue_token(provider.did)
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as c:
        first = c.post(url, json=late)  # FINALIZED takes no verification: refused, token spent
        assert first.status_code == 400 and "not allowed in state FINALIZED" in first.json()["reason"][0]
        again = c.post(url, json=late)
        assert again.status_code == 401 and "already used (replay)" in again.text
    # a token whose request named no negotiation of ours is spent too
    token = me.issue_token(provider.did)
    unknown = f"{provider.dsp_url}/negotiations/urn:uuid:nobody/agreement/verification"
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.post(unknown, json={**late, "providerPid": "urn:uuid:nobody"}).status_code == 404
        assert c.post(url, json=late).status_code == 401
    with provider.client() as c:
        assert c.get(f"/negotiations/{negotiation['id']}").json()["state"] == "FINALIZED"
