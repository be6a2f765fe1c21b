"""`dadam conformance serve` as the DSP TCK drives it: properties, `ready`, MET/CAT and a CN flow.

The connector runs as a real subprocess; a small TCK stand-in (uvicorn on loopback) receives the
connector's callbacks, reproducing the TCK's message shapes and its 2xx / 4xx-not-404 rules.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "catalog"))
from catalog_testing import schema_errors
from conformance_testing import CTX, TckStandIn

import vocab


def test_prints_every_property_the_tck_needs(cut: dict[str, str]) -> None:
    for key in (
        "dataspacetck.dsp.connector.agent.id",
        "dataspacetck.dsp.connector.http.url",
        "dataspacetck.dsp.connector.http.base.url",
        "dataspacetck.dsp.connector.negotiation.initiate.url",
    ):
        assert cut.get(key), key


def test_met_01_01_and_cat_01_01_to_03(cut: dict[str, str]) -> None:
    base, url = cut["dataspacetck.dsp.connector.http.base.url"], cut["dataspacetck.dsp.connector.http.url"]
    version = httpx.get(base + "/.well-known/dspace-version").json()
    assert any(v["version"] == "2025-1" and v["path"] and v["binding"] for v in version["protocolVersions"])
    catalog = httpx.post(url + "/catalog/request", json={"@context": CTX, "@type": "CatalogRequestMessage"})
    assert catalog.status_code == 200
    assert schema_errors(catalog.json()) == []
    expanded = vocab.expand(catalog.json())
    ids = {d["@id"] for d in expanded[0]["http://www.w3.org/ns/dcat#dataset"]}
    assert "CAT0101" in ids
    dataset = httpx.get(url + "/catalog/datasets/CAT0102")
    assert dataset.status_code == 200
    assert dataset.json()["@id"] == "CAT0102"
    assert schema_errors(dataset.json()) == []
    missing = httpx.get(url + "/catalog/datasets/CAT0103")
    assert missing.json()["@type"] == "CatalogError"


def test_cn_01_04_provider_agrees_then_finalizes(cut: dict[str, str], tck: tuple[TckStandIn, str]) -> None:
    """CN:01-04: CRQ; C→T AGR; T→C VER; C→T FIN — then a TRM in FINALIZED is refused (CN:03-01 style)."""
    stand_in, k = tck
    url = cut["dataspacetck.dsp.connector.http.url"]
    consumer_pid = str(uuid.uuid4())
    crq = {
        "@context": CTX,
        "@type": "ContractRequestMessage",
        "@id": str(uuid.uuid4()),
        "consumerPid": consumer_pid,
        "offer": {
            "@id": "CD123:ACN0104:456",
            "@type": "Offer",
            "target": "ACN0104",
            "permission": [{"action": "use"}],
        },
        "callbackAddress": k,
    }
    ack = httpx.post(url + "/negotiations/request", json=crq)
    assert ack.status_code in (200, 201), ack.text
    assert ack.json()["@type"] == "ContractNegotiation"
    assert ack.json()["state"] == "REQUESTED"
    provider_pid = ack.json()["providerPid"]
    agreement = stand_in.expect(f"/negotiations/{consumer_pid}/agreement")
    assert agreement["@type"] == "ContractAgreementMessage"
    assert agreement["agreement"]["target"] == "ACN0104"
    ver = {
        "@context": CTX,
        "@type": "ContractAgreementVerificationMessage",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
    }
    assert (
        httpx.post(f"{url}/negotiations/{provider_pid}/agreement/verification", json=ver).status_code == 200
    )
    fin = stand_in.expect(f"/negotiations/{consumer_pid}/events")
    assert fin["eventType"] == "FINALIZED"
    state = httpx.get(f"{url}/negotiations/{provider_pid}").json()
    assert state["state"] == "FINALIZED"
    trm = {
        "@context": CTX,
        "@type": "ContractNegotiationTerminationMessage",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "code": "1",
    }
    refused = httpx.post(f"{url}/negotiations/{provider_pid}/termination", json=trm)
    assert 400 <= refused.status_code < 500 and refused.status_code != 404
    assert httpx.get(f"{url}/negotiations/{provider_pid}").json()["state"] == "FINALIZED"


def _tp(mtype: str, provider_pid: str, consumer_pid: str, **extra: Any) -> dict[str, Any]:
    return {"@context": CTX, "@type": mtype, "@id": str(uuid.uuid4()), "providerPid": provider_pid,
            "consumerPid": consumer_pid, **extra}  # fmt: skip


def test_tp_01_04_provider_starts_suspends_resumes_completes(
    cut: dict[str, str], tck: tuple[TckStandIn, str]
) -> None:
    stand_in, k = tck
    url = cut["dataspacetck.dsp.connector.http.url"]
    cpid = str(uuid.uuid4())
    trq = {"@context": CTX, "@type": "TransferRequestMessage", "@id": str(uuid.uuid4()), "consumerPid": cpid,
           "agreementId": "ATP0104", "format": "HttpData-PULL", "callbackAddress": k}  # fmt: skip
    ack = httpx.post(url + "/transfers/request", json=trq)
    assert ack.status_code in (200, 201), ack.text
    assert schema_errors(ack.json(), "TransferProcess") == []
    ppid = ack.json()["providerPid"]
    start = stand_in.expect(f"/transfers/{cpid}/start")
    assert schema_errors(start, "TransferStartMessage") == []
    assert start["dataAddress"]["endpoint"]  # pull: the EDR is in the start message
    assert stand_in.expect(f"/transfers/{cpid}/suspension")["@type"] == "TransferSuspensionMessage"
    assert stand_in.expect(f"/transfers/{cpid}/start")["@type"] == "TransferStartMessage"  # resume
    assert stand_in.expect(f"/transfers/{cpid}/completion")["@type"] == "TransferCompletionMessage"
    for _ in range(50):
        if httpx.get(f"{url}/transfers/{ppid}").json()["state"] == "COMPLETED":
            break
        time.sleep(0.1)
    assert httpx.get(f"{url}/transfers/{ppid}").json()["state"] == "COMPLETED"
    # TP:03-06 style: nothing is accepted after the end
    late = httpx.post(f"{url}/transfers/{ppid}/completion", json=_tp("TransferCompletionMessage", ppid, cpid))
    assert 400 <= late.status_code < 500 and late.status_code != 404


def test_tp_c_02_03_consumer_suspends_then_terminates(
    cut: dict[str, str], tck: tuple[TckStandIn, str]
) -> None:
    stand_in, k = tck
    hook = cut["dataspacetck.dsp.connector.transfer.initiate.url"]
    r = httpx.post(hook, json={"providerId": "TCK_PARTICIPANT", "agreementId": "ATPC0203", "format": "HttpData-PULL",
                               "connectorAddress": k})  # fmt: skip
    assert r.status_code == 200, r.text
    trq = stand_in.expect("/transfers/request")
    assert schema_errors(trq, "TransferRequestMessage") == []
    cpid, base = trq["consumerPid"], trq["callbackAddress"]
    time.sleep(0.3)  # the TCK sends its start after its own state moved on
    start = _tp("TransferStartMessage", f"tck-{cpid}", cpid,
                dataAddress={"@type": "DataAddress", "endpoint": "http://example.com",
                             "endpointType": "https://w3id.org/idsa/v4.1/HTTP"})  # fmt: skip
    assert httpx.post(f"{base}/transfers/{cpid}/start", json=start).status_code == 200
    assert httpx.get(f"{base}/transfers/{cpid}").json()["state"] == "STARTED"
    assert stand_in.expect(f"/transfers/tck-{cpid}/suspension")["@type"] == "TransferSuspensionMessage"
    assert stand_in.expect(f"/transfers/tck-{cpid}/termination")["@type"] == "TransferTerminationMessage"
    for _ in range(50):
        if httpx.get(f"{base}/transfers/{cpid}").json()["state"] == "TERMINATED":
            break
        time.sleep(0.1)
    assert httpx.get(f"{base}/transfers/{cpid}").json()["state"] == "TERMINATED"
