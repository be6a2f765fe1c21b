"""Agreement signatures are checked with the connector's own JWS code: signatures made by another
JOSE implementation (joserfc here) verify, and every bad signature fails with its reason."""

from __future__ import annotations

import base64
import warnings
from typing import Any

import orjson
import pytest
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey

from connector.identity._keys import _raw_sign
from contracts import LocalKeySigner
from contracts._signing import canonical_json, sign_agreement, verify_agreement_signature

DID = "did:web:provider.example"
AGREEMENT: dict[str, Any] = {
    "@id": "urn:uuid:agreement-1",
    "@type": "Agreement",
    "target": "urn:uuid:dataset-1",
    "assigner": DID,
    "assignee": "did:web:consumer.example",
    "permission": [{"action": "use"}],
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _detached(header: dict[str, Any], key: ECKey | OKPKey, payload: bytes) -> str:
    with warnings.catch_warnings():  # "EdDSA" is the deprecated alias peers may still send
        warnings.simplefilter("ignore", SecurityWarning)
        token = jws.serialize_compact(header, payload, key, algorithms=[header["alg"]])
    head, _, sig = token.split(".")
    return f"{head}..{sig}"


def test_es256_signature_verifies_and_a_tampered_agreement_does_not() -> None:
    signer = LocalKeySigner(DID)
    token = sign_agreement(signer, AGREEMENT)
    check = verify_agreement_signature(token, AGREEMENT, expected_did=DID, jwk=signer.public_jwk())
    assert check.ok and check.kid == signer.kid and check.jwk == signer.public_jwk()
    tampered = {**AGREEMENT, "target": "urn:uuid:dataset-2"}
    bad = verify_agreement_signature(token, tampered, expected_did=DID, jwk=signer.public_jwk())
    assert not bad.ok and "does not match the agreement" in bad.reason


@pytest.mark.parametrize("alg", ["Ed25519", "EdDSA"])
def test_ed25519_signature_from_another_implementation_verifies(alg: str) -> None:
    key = OKPKey.generate_key("Ed25519")
    token = _detached({"alg": alg, "kid": f"{DID}#k"}, key, canonical_json(AGREEMENT))
    jwk = dict(key.as_dict(private=False))
    assert verify_agreement_signature(token, AGREEMENT, expected_did=DID, jwk=jwk).ok


def _es256_case(**header: Any) -> tuple[str, dict[str, Any], ECKey]:
    key = ECKey.generate_key("P-256")
    token = _detached({"alg": "ES256", "kid": f"{DID}#k", **header}, key, canonical_json(AGREEMENT))
    return token, dict(key.as_dict(private=False)), key


def test_critical_header_parameters_are_refused() -> None:
    key = ECKey.generate_key("P-256")
    head = _b64(orjson.dumps({"alg": "ES256", "kid": f"{DID}#k", "crit": ["exp"], "exp": 1}))
    signing_input = f"{head}.{_b64(canonical_json(AGREEMENT))}".encode()
    token = f"{head}..{_b64(_raw_sign(key, signing_input))}"
    jwk = dict(key.as_dict(private=False))
    check = verify_agreement_signature(token, AGREEMENT, expected_did=DID, jwk=jwk)
    assert not check.ok and "critical" in check.reason


def test_padded_or_reencoded_signatures_are_refused() -> None:
    token, jwk, _ = _es256_case()
    head, _, sig = token.split(".")
    padded = f"{head}..{sig}{'=' * (-len(sig) % 4) or '=='}"
    check = verify_agreement_signature(padded, AGREEMENT, expected_did=DID, jwk=jwk)
    assert not check.ok and "unreadable" in check.reason


def test_a_key_with_private_material_or_of_another_type_fails_with_its_reason() -> None:
    token, _, key = _es256_case()
    private = dict(key.as_dict(private=True))
    check = verify_agreement_signature(token, AGREEMENT, expected_did=DID, jwk=private)
    assert not check.ok and "private material" in check.reason
    ed = dict(OKPKey.generate_key("Ed25519").as_dict(private=False))
    check = verify_agreement_signature(token, AGREEMENT, expected_did=DID, jwk=ed)
    assert not check.ok and "does not match" in check.reason


def test_wrong_signer_and_unsupported_algorithm() -> None:
    token, jwk, _ = _es256_case()
    check = verify_agreement_signature(token, AGREEMENT, expected_did="did:web:other.example", jwk=jwk)
    assert not check.ok and "expected 'did:web:other.example'" in check.reason
    hs, _, _ = _es256_case()
    head = _b64(orjson.dumps({"alg": "HS256", "kid": f"{DID}#k"}))
    check = verify_agreement_signature(f"{head}..{hs.split('.')[2]}", AGREEMENT, expected_did=DID, jwk=jwk)
    assert not check.ok and "unsupported signature algorithm" in check.reason


@pytest.mark.parametrize(
    "jwk", [{"kty": "EC", "crv": "P-256"}, {"kty": "RSA", "n": "x", "e": "AQAB"}, {"x": {1, 2}}]
)
def test_a_broken_public_key_is_a_failed_check_not_a_crash(jwk: Any) -> None:
    token, _, _ = _es256_case()
    check = verify_agreement_signature(token, AGREEMENT, expected_did=DID, jwk=jwk)
    assert not check.ok and "unusable" in check.reason
