"""Every TP and TP_C scenario of docs/dsp-conformance.md against `dadam conformance serve`.

Steps: ``("expect", endpoint)`` the connector sends that message to the TCK stand-in;
``("send", endpoint)`` the TCK sends it to the connector (2xx expected); ``("refuse", endpoint)``
the TCK sends it and expects a 4xx other than 404; ``("state", STATE)`` the connector's GET
reaches that state (polled, as the TCK does for transfers).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from conformance_testing import CTX, TckStandIn

E, SEND, REF, ST = "expect", "send", "refuse", "state"
start, susp, compl, term = "start", "suspension", "completion", "termination"

# fmt: off
PROVIDER: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "TP:01-01": ("ATP0101", [(E, start), (E, term), (ST, "TERMINATED")]),
    "TP:01-02": ("ATP0102", [(E, start), (E, compl), (ST, "COMPLETED")]),
    "TP:01-03": ("ATP0103", [(E, start), (E, susp), (E, term), (ST, "TERMINATED")]),
    "TP:01-04": ("ATP0104", [(E, start), (E, susp), (E, start), (E, compl), (ST, "COMPLETED")]),
    "TP:01-05": ("ATP0105", [(E, term), (ST, "TERMINATED")]),
    "TP:02-01": ("ATP0201", [(E, start), (ST, "STARTED"), (SEND, term), (ST, "TERMINATED")]),
    "TP:02-02": ("ATP0202", [(E, start), (ST, "STARTED"), (SEND, compl), (ST, "COMPLETED")]),
    "TP:02-03": ("ATP0203", [(E, start), (ST, "STARTED"), (SEND, susp), (ST, "SUSPENDED"), (SEND, term), (ST, "TERMINATED")]),
    "TP:02-04": ("ATP0204", [(E, start), (ST, "STARTED"), (SEND, susp), (ST, "SUSPENDED"), (SEND, start), (ST, "STARTED"), (SEND, compl), (ST, "COMPLETED")]),
    "TP:02-05": ("ATP0205", [(ST, "REQUESTED"), (SEND, term), (ST, "TERMINATED")]),
    "TP:03-01": ("ATP0301", [(ST, "REQUESTED"), (REF, compl), (ST, "REQUESTED")]),
    "TP:03-02": ("ATP0302", [(ST, "REQUESTED"), (REF, susp), (ST, "REQUESTED")]),
    "TP:03-03": ("ATP0303", [(E, start), (ST, "STARTED"), (SEND, susp), (ST, "SUSPENDED"), (REF, compl), (ST, "SUSPENDED")]),
    "TP:03-04": ("ATP0304", [(E, start), (ST, "STARTED"), (SEND, term), (ST, "TERMINATED"), (REF, start), (ST, "TERMINATED")]),
    "TP:03-05": ("ATP0305", [(E, start), (ST, "STARTED"), (SEND, term), (REF, susp), (ST, "TERMINATED")]),
    "TP:03-06": ("ATP0306", [(E, start), (ST, "STARTED"), (SEND, term), (REF, compl), (ST, "TERMINATED")]),
}
CONSUMER: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "TP_C:01-01": ("ATPC0101", [(SEND, start), (ST, "STARTED"), (SEND, term), (ST, "TERMINATED")]),
    "TP_C:01-02": ("ATPC0102", [(SEND, start), (ST, "STARTED"), (SEND, compl), (ST, "COMPLETED")]),
    "TP_C:01-03": ("ATPC0103", [(SEND, start), (ST, "STARTED"), (SEND, susp), (ST, "SUSPENDED"), (SEND, term), (ST, "TERMINATED")]),
    "TP_C:01-04": ("ATPC0104", [(SEND, start), (ST, "STARTED"), (SEND, susp), (ST, "SUSPENDED"), (SEND, start), (ST, "STARTED"), (SEND, compl), (ST, "COMPLETED")]),
    "TP_C:01-05": ("ATPC0105", [(SEND, term), (ST, "TERMINATED")]),
    "TP_C:02-01": ("ATPC0201", [(SEND, start), (E, term), (ST, "TERMINATED")]),
    "TP_C:02-02": ("ATPC0202", [(SEND, start), (E, compl), (ST, "COMPLETED")]),
    "TP_C:02-03": ("ATPC0203", [(SEND, start), (E, susp), (E, term), (ST, "TERMINATED")]),
    "TP_C:02-04": ("ATPC0204", [(SEND, start), (E, susp), (E, start), (E, compl), (ST, "COMPLETED")]),
    "TP_C:02-05": ("ATPC0205", [(E, term), (ST, "TERMINATED")]),
    "TP_C:03-01": ("ATPC0301", [(ST, "REQUESTED"), (REF, compl), (ST, "REQUESTED")]),
    "TP_C:03-02": ("ATPC0302", [(ST, "REQUESTED"), (REF, susp), (ST, "REQUESTED")]),
    "TP_C:03-03": ("ATPC0303", [(SEND, start), (ST, "STARTED"), (SEND, susp), (ST, "SUSPENDED"), (REF, compl), (ST, "SUSPENDED")]),
    "TP_C:03-04": ("ATPC0304", [(SEND, start), (ST, "STARTED"), (SEND, term), (ST, "TERMINATED"), (REF, "start-no-address"), (ST, "TERMINATED")]),
    "TP_C:03-05": ("ATPC0305", [(SEND, start), (SEND, term), (REF, susp), (ST, "TERMINATED")]),
    "TP_C:03-06": ("ATPC0306", [(SEND, start), (SEND, term), (REF, compl), (ST, "TERMINATED")]),
}
# fmt: on
TYPES = {
    start: "TransferStartMessage",
    susp: "TransferSuspensionMessage",
    compl: "TransferCompletionMessage",
    term: "TransferTerminationMessage",
    "start-no-address": "TransferStartMessage",
}  # fmt: skip
ADDRESS = {
    "@type": "DataAddress",
    "endpoint": "http://example.com",
    "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
}


def _message(endpoint: str, provider_pid: str, consumer_pid: str, *, to_consumer: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"@context": CTX, "@type": TYPES[endpoint], "@id": str(uuid.uuid4()),
                            "providerPid": provider_pid, "consumerPid": consumer_pid}  # fmt: skip
    if endpoint == start and to_consumer:
        body["dataAddress"] = ADDRESS
    if endpoint in (susp, term):
        body["code"] = "1"
    return body


def _state(url: str, expected: str) -> None:
    last = None
    for _ in range(150):
        last = httpx.get(url).json().get("state")
        if last == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"state {last}, expected {expected}")


def _run(steps: list[tuple[str, str]], stand_in: TckStandIn, cut_pid: str, peer_pid: str, base: str,
         *, consumer_side: bool) -> None:  # fmt: skip
    own = f"{base}/transfers/{cut_pid}"
    provider_pid, consumer_pid = (peer_pid, cut_pid) if consumer_side else (cut_pid, peer_pid)
    for kind, arg in steps:
        if kind == E:
            body = stand_in.expect(f"/transfers/{peer_pid}/{arg}")
            assert body["@type"] == TYPES[arg]
        elif kind == ST:
            _state(own, arg)
        else:
            time.sleep(0.3)  # the TCK sends after its own copy moved on
            endpoint = start if arg == "start-no-address" else arg
            msg = _message(arg, provider_pid, consumer_pid, to_consumer=consumer_side and arg == start)
            r = httpx.post(f"{own}/{endpoint}", json=msg)
            if kind == SEND:
                assert 200 <= r.status_code < 300, (arg, r.status_code, r.text)
            else:
                assert 400 <= r.status_code < 500 and r.status_code != 404, (arg, r.status_code, r.text)


@pytest.mark.parametrize("scenario", sorted(PROVIDER))
def test_provider_scenario(scenario: str, cut: dict[str, str], tck: tuple[TckStandIn, str]) -> None:
    stand_in, k = tck
    agreement, steps = PROVIDER[scenario]
    url = cut["dataspacetck.dsp.connector.http.url"]
    cpid = str(uuid.uuid4())
    trq = {"@context": CTX, "@type": "TransferRequestMessage", "@id": str(uuid.uuid4()), "consumerPid": cpid,
           "agreementId": agreement, "format": "HttpData-PULL", "callbackAddress": k}  # fmt: skip
    ack = httpx.post(url + "/transfers/request", json=trq)
    assert ack.status_code in (200, 201), ack.text
    _run(steps, stand_in, ack.json()["providerPid"], cpid, url, consumer_side=False)


@pytest.mark.parametrize("scenario", sorted(CONSUMER))
def test_consumer_scenario(scenario: str, cut: dict[str, str], tck: tuple[TckStandIn, str]) -> None:
    stand_in, k = tck
    agreement, steps = CONSUMER[scenario]
    hook = cut["dataspacetck.dsp.connector.transfer.initiate.url"]
    r = httpx.post(hook, json={"providerId": "TCK_PARTICIPANT", "agreementId": agreement,
                               "format": "HttpData-PULL", "connectorAddress": k})  # fmt: skip
    assert r.status_code == 200, r.text
    trq = stand_in.expect("/transfers/request", where=lambda b: b.get("agreementId") == agreement)
    cpid = trq["consumerPid"]
    _run(steps, stand_in, cpid, f"tck-{cpid}", trq["callbackAddress"], consumer_side=True)
