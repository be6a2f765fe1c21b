"""Two real connectors (`dadam serve` processes: DCP tokens, did:web keys, catalog) negotiate on
SQLite and on PostgreSQL; the exported agreement verifies offline, a tampered one does not."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from connector._demo import (
    fetch_catalog,
    negotiate,
    record_partner,
    seed_provider,
    start_node,
    stop_node,
    wait_ready,
)
from connector.cli import app
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
    finally:
        stop_node(consumer)
        stop_node(provider)
