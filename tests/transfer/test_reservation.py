"""A paid transfer reserves funds at start (two-phase); unfunded it is refused with the reason;
a termination releases the reservation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from transfer_nodes import connectors

from connector._demo import (
    Node,
    fetch_catalog,
    negotiate,
    record_partner,
    seed_provider,
)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    with connectors(tmp_path, {"DADAM_BANK_RESERVATION_MINOR_UNITS": "500"}) as pair:
        yield pair


def _transfer(consumer: Node, provider: Node, agreement_id: str, state: str) -> dict[str, Any]:
    import time

    with consumer.client() as c:
        tid = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                                         "agreementId": agreement_id}).json()["id"]  # fmt: skip
        for _ in range(200):
            view: dict[str, Any] = c.get(f"/transfers/{quote(tid, safe='')}").json()
            if view["state"] == state:
                return view
            time.sleep(0.05)
    raise AssertionError(f"transfer never reached {state}: {view}")


def test_reservation_at_start_refusal_and_release(nodes: tuple[Node, Node]) -> None:
    provider, consumer = nodes
    seed_provider(provider)
    record_partner(provider, consumer)
    pcf = next(d for d in fetch_catalog(consumer, provider)["dataset"] if d["@id"] == "pcf-brake-disc-bd330v")
    agreement = negotiate(consumer, provider, pcf["hasPolicy"][0]["@id"])["agreement"]["@id"]
    account = f"/bank/accounts/prepaid:{quote(consumer.did, safe='')}"
    with provider.client() as p:
        p.post("/bank/deposits", json={"party": consumer.did, "amount": 300, "ref": "d1"}).raise_for_status()
    refused = _transfer(consumer, provider, agreement, "TERMINATED")
    assert "could not reserve 500" in refused["errorDetail"]
    assert "exceeds_credits" in refused["errorDetail"]
    with provider.client() as p:
        p.post("/bank/deposits", json={"party": consumer.did, "amount": 700, "ref": "d2"}).raise_for_status()
        started = _transfer(consumer, provider, agreement, "STARTED")
        assert p.get(account).json()["debits_pending"] == 500
    with consumer.client() as c:
        c.post(f"/transfers/{quote(started['id'], safe='')}/terminate", json={"reason": "not needed"})
    import time

    with provider.client() as p:
        for _ in range(100):
            if p.get(account).json()["debits_pending"] == 0:
                break
            time.sleep(0.05)
        acc = p.get(account).json()
        assert (acc["debits_pending"], acc["balance"]) == (0, 1000)  # released, nothing spent
        # the provider terminates a transfer itself: released at once too
        second = _transfer(consumer, provider, agreement, "STARTED")
        assert p.get(account).json()["debits_pending"] == 500
        r = p.post(
            f"/transfers/{quote(second['providerPid'], safe='')}/terminate", json={"reason": "maintenance"}
        )
        assert r.status_code == 200, r.text
        assert p.get(account).json()["debits_pending"] == 0
        assert p.get("/bank/verify").json()["ok"]
