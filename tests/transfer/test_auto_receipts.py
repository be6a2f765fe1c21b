"""The provider's bank worker issues usage receipts by itself (here as soon as an agreement has one
unbilled event, DADAM_BANK_RECEIPT_EVENTS=1), priced from the agreement's compensate duty (payAmount /
unitOfCount constraints: DSP's plain-string action cannot carry a refinement), sends them to the
consumer's connector, which countersigns what matches its own metering, and settles them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from connector._demo import (
    fetch_catalog,
    negotiate,
    pull,
    record_partner,
    seed_provider,
    start_node,
    stop_node,
    wait_ready,
)
from connector.errors import TokenError


def test_receipts_issued_automatically_after_n_events(tmp_path: Path) -> None:
    provider = start_node("provider", tmp_path / "p", env={"DADAM_BANK_RECEIPT_EVENTS": "1",
                                                           "DADAM_BANK_CHECKPOINT_SECONDS": "1"})  # fmt: skip
    consumer = start_node("consumer", tmp_path / "c")
    try:
        wait_ready(provider)
        wait_ready(consumer)
        seed_provider(provider)
        record_partner(provider, consumer)
        with provider.client() as p:
            r = p.post("/policies", json={"id": "paid-per-call", "policy": {"@type": "Set", "permission": [{
                "action": "use", "duty": [{"action": "compensate", "constraint": [
                    {"leftOperand": "payAmount", "operator": "eq", "rightOperand": "0.25", "unit": "EUR"},
                    {"leftOperand": "unitOfCount", "operator": "eq", "rightOperand": "call"}]}]}]}})  # fmt: skip
            assert r.status_code in (200, 201), r.text
            r = p.post("/contract-definitions", json={"id": "track-paid", "access_policy_id": "open-access",
                       "contract_policy_id": "paid-per-call", "selector": {"dataset_ids": ["production-tracking-line2"]}})  # fmt: skip
            assert r.status_code in (200, 201), r.text
        catalog = fetch_catalog(consumer, provider)
        track = next(d for d in catalog["dataset"] if d["@id"] == "production-tracking-line2")
        offer = next(o for o in track["hasPolicy"] if "compensate" in str(o))
        agreement = negotiate(consumer, provider, offer["@id"])["agreement"]["@id"]
        with provider.client() as p:  # a compensate duty is billed in arrears from a prepaid account
            r = p.post("/bank/deposits", json={"party": consumer.did, "amount": 1000, "ref": "d1"})
            assert r.status_code in (200, 201), r.text
        data, transfer = pull(consumer, provider, agreement, request_id="req-1")
        now = time.time()
        own_event = {  # the consumer meters what it received, under the same request id
            "id": f"{transfer['providerPid']}:req-1", "agreement_id": agreement, "transfer_id": transfer["providerPid"],
            "dataset_id": "production-tracking-line2", "category": "process", "bytes": len(data), "records": 1,
            "calls": 1, "started_at": now, "ended_at": now, "outcome": "ok", "consumer": consumer.did,
            "provider": provider.did,
        }  # fmt: skip
        with consumer.client() as c:
            assert c.post("/bank/usage", json=[own_event]).status_code in (200, 201)
        receipts: list[dict[str, Any]] = []
        with provider.client() as p:
            for _ in range(150):
                body = p.get("/bank/receipts").json()
                receipts = body["items"] if isinstance(body, dict) else body
                if receipts and receipts[0]["signedBy"] == "both":
                    break
                time.sleep(0.1)
        assert len(receipts) == 1, receipts
        receipt = receipts[0]
        assert receipt["agreement"] == agreement and receipt["events"] == 1
        assert receipt["amount"] == 25 and receipt["currency"] == "EUR"  # one call at 0.25 EUR, in cents
        # sent to the consumer's connector by the worker, countersigned there, settled here
        assert receipt["signedBy"] == "both", receipt
        with provider.client() as p:
            account = p.get(f"/bank/accounts/prepaid:{quote(consumer.did, safe='')}").json()
        assert account["balance"] == 1000 - 25
        # the receipt carried our latest signed checkpoint; the consumer cosigned it
        with provider.client() as p:
            cps = p.get("/bank/checkpoints").json()["items"]
        cosigned = [cp for cp in cps if consumer.did in cp["cosignatures"]]
        assert cosigned, cps
        from connector.identity import PublicKey, verify_jws
        from contracts._signing import DidWebKeyResolver
        from metering._audit import Checkpoint

        cp = cosigned[0]
        payload = Checkpoint(cp["size"], cp["root"], cp["signature"]).payload()
        with httpx.Client() as http:
            resolver = DidWebKeyResolver(http, allow_http=True)

            def key(did: str, kid: str) -> PublicKey:
                full = kid if kid.startswith("did:") else f"{did}#{kid.split('#')[-1]}"
                return PublicKey(id=full, controller=did, jwk=resolver.public_jwk(full) or {})

            def verify(sig: str, data: bytes) -> bool:
                return (
                    verify_jws(sig, key_resolver=key, expected_did=consumer.did, detached_payload=data)
                    == data
                )

            assert verify(cp["cosignatures"][consumer.did], payload)
            with pytest.raises(TokenError):  # over other bytes it does not verify
                verify(cp["cosignatures"][consumer.did], payload + b" ")
    finally:
        stop_node(consumer)
        stop_node(provider)


def test_a_price_plan_referenced_by_link_and_hash_bills_graduated_tiers(tmp_path: Path) -> None:
    provider = start_node("provider", tmp_path / "p", env={"DADAM_BANK_RECEIPT_EVENTS": "3",
                                                           "DADAM_BANK_CHECKPOINT_SECONDS": "1"})  # fmt: skip
    consumer = start_node("consumer", tmp_path / "c")
    try:
        wait_ready(provider)
        wait_ready(consumer)
        seed_provider(provider)
        record_partner(provider, consumer)
        plan = {"currency": "EUR", "unitOfCount": "call",
                "tiers": [{"upTo": 2, "unitPrice": "0.30"}, {"upTo": None, "unitPrice": "0.20"}]}  # fmt: skip
        with provider.client() as p:
            published = p.post("/bank/price-plans", json={"id": "track-2027", "plan": plan})
            assert published.status_code == 201, published.text
            constraint = published.json()["constraint"]
            assert constraint["rightOperand"].startswith(
                provider.dsp_url + "/bank/price-plans/track-2027#sha256="
            )
            r = p.post("/policies", json={"id": "plan-priced", "policy": {"@type": "Set", "permission": [{
                "action": "use", "duty": [{"action": "compensate", "constraint": [constraint]}]}]}})  # fmt: skip
            assert r.status_code in (200, 201), r.text
            r = p.post("/contract-definitions", json={"id": "track-plan", "access_policy_id": "open-access",
                       "contract_policy_id": "plan-priced", "selector": {"dataset_ids": ["production-tracking-line2"]}})  # fmt: skip
            assert r.status_code in (200, 201), r.text
            p.post(
                "/bank/deposits", json={"party": consumer.did, "amount": 1000, "ref": "d1"}
            ).raise_for_status()
        # the consumer can fetch the plan over the DSP-authenticated bank endpoint (401 without a token)
        assert httpx.get(provider.dsp_url + "/bank/price-plans/track-2027").status_code == 401
        track = next(
            d for d in fetch_catalog(consumer, provider)["dataset"] if d["@id"] == "production-tracking-line2"
        )
        offer = next(o for o in track["hasPolicy"] if "pricePlan" in str(o))
        agreement = negotiate(consumer, provider, offer["@id"])["agreement"]["@id"]
        own = []
        for n in range(3):
            data, transfer = pull(consumer, provider, agreement, request_id=f"req-{n}")
            now = time.time()
            own.append({"id": f"{transfer['providerPid']}:req-{n}", "agreement_id": agreement,
                        "transfer_id": transfer["providerPid"], "dataset_id": "production-tracking-line2",
                        "category": "process", "bytes": len(data), "records": 1, "calls": 1, "started_at": now,
                        "ended_at": now, "outcome": "ok", "consumer": consumer.did, "provider": provider.did})  # fmt: skip
        with consumer.client() as c:
            assert c.post("/bank/usage", json=own).status_code in (200, 201)
        receipts: list[dict[str, Any]] = []
        with provider.client() as p:
            for _ in range(150):
                receipts = p.get("/bank/receipts").json()["items"]
                if receipts and receipts[0]["signedBy"] == "both":
                    break
                time.sleep(0.1)
        assert len(receipts) == 1 and receipts[0]["events"] == 3, receipts
        assert receipts[0]["amount"] == 30 + 30 + 20 and receipts[0]["signedBy"] == "both"
    finally:
        stop_node(consumer)
        stop_node(provider)
