"""RFC 8785 canonical JSON, signing keys, DID documents and JWS."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import ConfigError, TokenError
from connector.identity import Identity, StaticDidResolver, canonical_json, did_web_url, find_key, verify_jws

DID = "did:web:provider.example.com"


def test_jcs_sorts_by_utf16_code_units_and_escapes_minimally() -> None:
    # RFC 8785 §3.2.3 sorting example: keys ordered by UTF-16 code units, not by code points
    value = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
             "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}  # fmt: skip
    out = canonical_json(value).decode()
    keys = list(json.loads(out))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert canonical_json({"a": 'x\n\u0001"\\/'}) == b'{"a":"x\\n\\u0001\\"\\\\/"}'
    # ASCII names (sorted without the UTF-16 key), nested, and a mix in one object
    nested = {"b": {"z": 1, "Z": 2, "_": 3}, "B": [{"y": 1, "a": 2}], "\u00e9": 0, "a": None}
    assert (
        canonical_json(nested) == '{"B":[{"a":2,"y":1}],"a":null,"b":{"Z":2,"_":3,"z":1},"\u00e9":0}'.encode()
    )


@pytest.mark.parametrize(
    ("number", "text"),
    [(0.0, "0"), (-0.0, "0"), (1e21, "1e+21"), (1e-7, "1e-7"), (123456789012345680000.0, "123456789012345680000"),
     (4.5, "4.5"), (0.002, "0.002"), (-1.25e-10, "-1.25e-10"), (333333333.3333333, "333333333.3333333"),
     (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"), (100.0, "100"), (1e23, "1e+23")],
)  # fmt: skip
def test_jcs_numbers_follow_ecmascript(number: float, text: str) -> None:
    assert canonical_json(number).decode() == text


def test_jcs_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError, match="NaN"):
        canonical_json(float("nan"))
    with pytest.raises(TypeError):
        canonical_json({"a": object()})
    with pytest.raises(ValueError, match="double"):
        canonical_json(2**60)


@pytest.mark.parametrize("alg", ["ES256", "Ed25519"])
def test_key_created_once_persisted_private_and_rotatable(tmp_path: Path, alg: str) -> None:
    ident = Identity.load_or_create(DID, tmp_path, alg)  # type: ignore[arg-type]
    files = list((tmp_path / "keys").glob("*.jwk.json"))
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    again = Identity.load_or_create(DID, tmp_path, alg)  # type: ignore[arg-type]
    assert again.kid == ident.kid
    signed = ident.sign_jws(b"agreement")
    new_kid = again.rotate()
    assert again.kid.endswith(new_kid) and again.kid != ident.kid
    doc = again.did_document()
    assert doc["id"] == DID
    assert len(doc["verificationMethod"]) == 2
    assert all("d" not in vm["publicKeyJwk"] for vm in doc["verificationMethod"])
    # a signature made before the rotation still verifies against the published document
    resolver = StaticDidResolver({DID: doc})
    assert verify_jws(signed, key_resolver=lambda d, k: find_key(resolver.documents[d], d, k)) == b"agreement"
    reloaded = Identity.load_or_create(DID, tmp_path)
    assert reloaded.kid == again.kid


def test_broken_key_folder_is_a_config_error(tmp_path: Path) -> None:
    Identity.load_or_create(DID, tmp_path)
    (tmp_path / "keys" / "current").write_text("nope")
    with pytest.raises(ConfigError, match="does not name one of the keys"):
        Identity.load_or_create(DID, tmp_path)


@pytest.mark.parametrize("alg", ["ES256", "Ed25519"])
def test_jws_detached_and_tampering(tmp_path: Path, alg: str) -> None:
    ident = Identity.load_or_create(DID, tmp_path, alg)  # type: ignore[arg-type]
    payload = canonical_json({"agreement": "a1", "target": "ds1"})
    token = ident.sign_jws(payload, detached=True)
    assert token.count(".") == 2 and ".." in token
    assert verify_jws(token, key_resolver=ident.resolve_own, detached_payload=payload) == payload
    with pytest.raises(TokenError, match="does not verify"):
        verify_jws(token, key_resolver=ident.resolve_own, detached_payload=payload.replace(b"ds1", b"ds2"))
    other = Identity.load_or_create("did:web:other", tmp_path / "o", alg)  # type: ignore[arg-type]
    with pytest.raises(TokenError, match=r"signed by did:web:provider\.example\.com, expected did:web:other"):
        verify_jws(
            token, key_resolver=other.resolve_own, expected_did="did:web:other", detached_payload=payload
        )


def test_did_web_urls() -> None:
    assert did_web_url("did:web:example.com") == "https://example.com/.well-known/did.json"
    assert (
        did_web_url("did:web:example.com%3A8443:user:alice") == "https://example.com:8443/user/alice/did.json"
    )
    assert (
        did_web_url("did:web:127.0.0.1%3A8181", allow_http_loopback=True)
        == "http://127.0.0.1:8181/.well-known/did.json"
    )
    # http is only ever used for loopback hosts
    assert did_web_url("did:web:evil.example.com", allow_http_loopback=True).startswith("https://")
    with pytest.raises(TokenError, match="only did:web"):
        did_web_url("did:key:z6Mk")


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40))
def test_fast_string_escaping_equals_the_spelled_out_rules(s: str) -> None:
    from connector.identity._jcs import _string, _string_py

    assert _string(s) == _string_py(s)
