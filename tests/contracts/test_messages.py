"""Wire messages: every body we emit is schema-valid (official 2025-1 schemas) and expands as intended."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cn_harness import SPEC, schema_errors

import vocab
from connector.errors import ValidationError
from contracts import SIGNATURE_KEY, parse_message
from contracts._messages import (
    AgreementMessage,
    AgreementVerificationMessage,
    ContractRequestMessage,
    NegotiationEventMessage,
    OfferMessage,
    TerminationMessage,
    error_body,
    negotiation_body,
)

OFFER = {"@id": "cd:ds:1", "@type": "Offer", "target": "ds", "permission": [{"action": "use"}]}
AGREEMENT = {
    "@id": "urn:uuid:a1",
    "@type": "Agreement",
    "target": "ds",
    "timestamp": "2026-01-01T00:00:00Z",
    "assigner": "did:web:p",
    "assignee": "did:web:c",
    "permission": [{"action": "use"}],
}
DSPACE = "https://w3id.org/dspace/2025/1/"

BODIES: list[dict[str, Any]] = [
    ContractRequestMessage("urn:uuid:c", OFFER, "http://c/dsp", None, "urn:uuid:m1").to_json(),
    ContractRequestMessage("urn:uuid:c", OFFER, None, "urn:uuid:p").to_json(),
    OfferMessage("urn:uuid:p", OFFER, "urn:uuid:c").to_json(),
    AgreementMessage("urn:uuid:p", "urn:uuid:c", AGREEMENT, "eyJ..sig").to_json(),
    AgreementVerificationMessage("urn:uuid:p", "urn:uuid:c", "eyJ..sig").to_json(),
    NegotiationEventMessage("urn:uuid:p", "urn:uuid:c", "ACCEPTED").to_json(),
    NegotiationEventMessage("urn:uuid:p", "urn:uuid:c", "FINALIZED").to_json(),
    TerminationMessage("urn:uuid:p", "urn:uuid:c", "1", ("policy denied",)).to_json(),
    TerminationMessage("urn:uuid:p", "urn:uuid:c").to_json(),
    negotiation_body("urn:uuid:p", "urn:uuid:c", "REQUESTED"),
    error_body("urn:uuid:p", "urn:uuid:c", "invalid", ["not allowed"]),
]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: str(b["@type"]))
def test_emitted_bodies_are_schema_valid(body: dict[str, Any]) -> None:
    assert schema_errors(body) == []
    assert body["@context"] == ["https://w3id.org/dspace/2025/1/context.jsonld"]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: str(b["@type"]))
def test_emitted_bodies_expand_to_dspace_terms(body: dict[str, Any]) -> None:
    expanded = vocab.expand(body)
    assert len(expanded) == 1
    node = expanded[0]
    assert node["@type"] == [DSPACE + body["@type"]]
    if "providerPid" in body:
        assert node[DSPACE + "providerPid"] == [{"@id": body["providerPid"]}]
    if body["@type"] == "ContractNegotiationEventMessage":
        assert node[DSPACE + "eventType"] == [{"@id": DSPACE + body["eventType"]}]
    if SIGNATURE_KEY in body:
        assert node[SIGNATURE_KEY] == [{"@value": body[SIGNATURE_KEY]}], "the signature survives JSON-LD"


@pytest.mark.parametrize(
    "path", sorted((SPEC / "dsp" / "negotiation" / "example").glob("*.json")), ids=lambda p: p.name
)
def test_official_examples_parse_and_round_trip(path: Any) -> None:
    body = json.loads(path.read_text())
    msg = parse_message(body, body["@type"])
    out = msg.to_json()
    for key in (
        "providerPid",
        "consumerPid",
        "offer",
        "agreement",
        "callbackAddress",
        "eventType",
        "code",
        "reason",
    ):
        assert out.get(key) == body.get(key), key
    assert schema_errors(out) == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"@type": "ContractRequestMessage", "consumerPid": "c", "offer": OFFER}, "exactly one of"),
        (
            {
                "@type": "ContractRequestMessage",
                "consumerPid": "c",
                "providerPid": "p",
                "callbackAddress": "http://x",
                "offer": OFFER,
            },
            "exactly one of",
        ),
        (
            {"@type": "ContractRequestMessage", "callbackAddress": "http://x", "offer": OFFER},
            "consumerPid: required",
        ),
        (
            {
                "@type": "ContractRequestMessage",
                "consumerPid": "c",
                "callbackAddress": "http://x",
                "offer": {"@id": "o", "target": "d"},
            },
            "permission",
        ),
        (
            {
                "@type": "ContractRequestMessage",
                "consumerPid": "c",
                "callbackAddress": "http://x",
                "offer": {"@id": "o", "permission": [{"action": "use"}]},
            },
            "target",
        ),
        (
            {
                "@type": "ContractNegotiationEventMessage",
                "providerPid": "p",
                "consumerPid": "c",
                "eventType": "dspace:NOPE",
            },
            "eventType",
        ),
        (
            {
                "@type": "ContractAgreementMessage",
                "providerPid": "p",
                "consumerPid": "c",
                "agreement": {"@type": "Agreement"},
            },
            "agreement.@id",
        ),
        (
            {
                "@type": "ContractNegotiationTerminationMessage",
                "providerPid": "p",
                "@context": "https://example.com/ctx",
            },
            "consumerPid",
        ),
        (
            {"@type": "ContractOfferMessage", "providerPid": "p", "consumerPid": "c", "offer": OFFER},
            "expected ContractRequestMessage",
        ),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_malformed_messages_are_rejected_with_every_problem(body: Any, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_message(
            body,
            "ContractRequestMessage"
            if not isinstance(body, dict) or body["@type"] == "ContractOfferMessage"
            else body["@type"],
        )
    assert problem in " ".join(info.value.reasons())
    assert info.value.status_hint == 400
