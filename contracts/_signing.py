"""Agreement signatures: detached JWS over the agreement's RFC 8785 canonical JSON.

The provider signs the agreement it sends; the consumer verifies that signature and countersigns
the same bytes in its verification message. Both JWS are stored with the negotiation, and
:func:`export_agreement` writes a self-contained file (agreement, both signatures, the signers'
public keys) that :func:`verify_export` checks offline (``dadam agreement verify FILE``).

Keys come from a :class:`Signer` (our DID key) and a :class:`KeyResolver` (a peer's public key by
``kid`` = ``<did>#<key>``). Until the identity package exposes its own, :class:`LocalKeySigner`
and :class:`StaticKeyResolver` implement them with an in-memory EC P-256 key.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from joserfc import jws
from joserfc.jwk import ECKey

from connector.errors import TokenError, ValidationError
from connector.identity import b64url_decode, verify_signature
from connector.identity import canonical_json as _jcs

__all__ = [
    "DidWebKeyResolver",
    "KeyResolver",
    "LocalKeySigner",
    "SignatureCheck",
    "Signer",
    "StaticKeyResolver",
    "canonical_json",
    "export_agreement",
    "sign_agreement",
    "verify_agreement_signature",
    "verify_export",
]


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 (JCS) canonical form of a JSON value: :func:`connector.identity.canonical_json`."""
    try:
        return _jcs(obj)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"canonical JSON: {exc}") from None


class Signer(Protocol):
    """Signs with this connector's DID key. ``kid`` is ``<did>#<key id>``."""

    did: str
    kid: str

    def sign_detached(self, payload: bytes) -> str:
        """A compact JWS with a detached payload (``header..signature``)."""
        ...

    def public_jwk(self) -> dict[str, Any]: ...


class KeyResolver(Protocol):
    """Finds a peer's public key (JWK) by ``kid``; None when unknown."""

    def public_jwk(self, kid: str) -> dict[str, Any] | None: ...


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LocalKeySigner:
    """An EC P-256 (ES256) signer holding its key in memory."""

    def __init__(self, did: str, key: ECKey | None = None, key_id: str = "key-1") -> None:
        self.did = did
        self.kid = f"{did}#{key_id}"
        self._key = key or ECKey.generate_key("P-256")

    def sign_detached(self, payload: bytes) -> str:
        token = jws.serialize_compact({"alg": "ES256", "kid": self.kid}, payload, self._key)
        head, _, sig = token.split(".")
        return f"{head}..{sig}"

    def public_jwk(self) -> dict[str, Any]:
        return dict(self._key.as_dict(private=False))


@dataclass
class StaticKeyResolver:
    """Public keys by kid, e.g. from resolved DID documents or a test fixture."""

    keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, kid: str, jwk: dict[str, Any]) -> None:
        self.keys[kid] = jwk

    def public_jwk(self, kid: str) -> dict[str, Any] | None:
        return self.keys.get(kid)


class DidWebKeyResolver:
    """Resolves ``did:web`` verification methods over HTTPS (HTTP only when ``allow_http``, for
    loopback tests and demos), caching documents. Returns the ``publicKeyJwk`` of ``kid``."""

    def __init__(self, client: Any = None, *, allow_http: bool = False) -> None:
        import httpx

        self.client = client or httpx.Client(timeout=5.0)
        self.allow_http = allow_http
        self._cache: dict[str, dict[str, Any]] = {}

    @staticmethod
    def did_url(did: str, allow_http: bool) -> str:
        from urllib.parse import unquote

        if not did.startswith("did:web:"):
            raise ValidationError(f"not a did:web: {did!r}")
        parts = [unquote(p) for p in did.removeprefix("did:web:").split(":")]
        host, path = parts[0], parts[1:]
        scheme = "http" if allow_http and host.split(":")[0] in ("127.0.0.1", "localhost") else "https"
        tail = "/".join(path) + "/did.json" if path else ".well-known/did.json"
        return f"{scheme}://{host}/{tail}"

    def public_jwk(self, kid: str) -> dict[str, Any] | None:
        did = kid.split("#", 1)[0]
        doc = self._cache.get(did)
        if doc is None:
            try:
                resp = self.client.get(self.did_url(did, self.allow_http))
                resp.raise_for_status()
                doc = resp.json()
            except Exception:
                return None
            if not isinstance(doc, dict):
                return None
            self._cache[did] = doc
        for vm in doc.get("verificationMethod") or []:
            if not isinstance(vm, dict):
                continue
            vid = str(vm.get("id", ""))
            if vid == kid or (vid.startswith("#") and did + vid == kid):
                jwk = vm.get("publicKeyJwk")
                return dict(jwk) if isinstance(jwk, dict) else None
        return None


def sign_agreement(signer: Signer, agreement: Mapping[str, Any]) -> str:
    """Detached JWS of ``signer`` over the agreement's canonical JSON."""
    return signer.sign_detached(canonical_json(agreement))


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """Outcome of verifying one signature; ``reason`` explains a failure."""

    ok: bool
    kid: str | None
    reason: str
    #: The public key that verified the signature (kept with the agreement for offline checks).
    jwk: dict[str, Any] | None = None


def _header(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    padded = head + "=" * (-len(head) % 4)
    data = orjson.loads(base64.urlsafe_b64decode(padded))
    if not isinstance(data, dict):
        raise ValueError("JWS header is not an object")
    return data


def verify_agreement_signature(
    token: str,
    agreement: Mapping[str, Any],
    *,
    expected_did: str | None,
    jwk: Mapping[str, Any] | None = None,
    resolver: KeyResolver | None = None,
) -> SignatureCheck:
    """Check a detached JWS over ``agreement``: key from ``jwk`` or ``resolver``, signer = ``expected_did``."""
    try:
        parts = token.split(".")
        if len(parts) != 3 or parts[1] != "":
            return SignatureCheck(False, None, "signature is not a detached compact JWS (header..signature)")
        header = _header(token)
    except (ValueError, orjson.JSONDecodeError) as exc:
        return SignatureCheck(False, None, f"signature header unreadable: {exc}")
    kid = header.get("kid")
    if not isinstance(kid, str):
        return SignatureCheck(False, None, "signature header has no kid")
    if expected_did is not None and kid.split("#", 1)[0] != expected_did:
        return SignatureCheck(False, kid, f"signed by {kid.split('#', 1)[0]!r}, expected {expected_did!r}")
    key_data = jwk if jwk is not None else (resolver.public_jwk(kid) if resolver else None)
    if key_data is None:
        return SignatureCheck(False, kid, f"no public key known for {kid!r}")
    alg = header.get("alg")
    if alg not in ("ES256", "Ed25519", "EdDSA"):
        return SignatureCheck(False, kid, f"unsupported signature algorithm {alg!r} (ES256 or Ed25519)")
    if "crit" in header:  # RFC 7515 4.1.11: we implement no extension, so none can be critical
        return SignatureCheck(False, kid, f"signature names critical header parameters: {header['crit']!r}")
    try:
        signature = b64url_decode(parts[2])
    except ValueError as exc:
        return SignatureCheck(False, kid, f"signature unreadable: {exc}")
    signing_input = f"{parts[0]}.{_b64(canonical_json(agreement))}".encode("ascii")
    try:
        ok = verify_signature(key_data, str(alg), signature, signing_input)
    except TokenError as exc:
        return SignatureCheck(False, kid, f"public key of {kid!r} unusable: {exc}")
    if not ok:
        return SignatureCheck(False, kid, "signature does not match the agreement (bad signature)")
    return SignatureCheck(True, kid, "valid", dict(key_data))


def export_agreement(
    agreement: Mapping[str, Any],
    *,
    provider_signature: str | None,
    consumer_signature: str | None,
    provider_jwk: Mapping[str, Any] | None,
    consumer_jwk: Mapping[str, Any] | None,
    negotiation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A self-contained, offline-verifiable agreement document."""
    signatures: list[dict[str, Any]] = []
    for role, sig, jwk, did in (
        ("provider", provider_signature, provider_jwk, agreement.get("assigner")),
        ("consumer", consumer_signature, consumer_jwk, agreement.get("assignee")),
    ):
        if sig:
            signatures.append({"role": role, "signer": did, "jws": sig, "publicKeyJwk": dict(jwk or {})})
    return {
        "type": "dadam:SignedAgreement",
        "agreement": dict(agreement),
        "signatures": signatures,
        "signedBy": "both" if len(signatures) == 2 else ("one party" if signatures else "nobody"),
        "negotiation": dict(negotiation or {}),
    }


def verify_export(doc: Mapping[str, Any]) -> list[SignatureCheck]:
    """Verify every signature of an exported agreement. Raises ValidationError for a malformed file."""
    agreement = doc.get("agreement")
    sigs = doc.get("signatures")
    if not isinstance(agreement, Mapping) or not isinstance(sigs, list):
        raise ValidationError("not an exported agreement", errors=["needs 'agreement' and 'signatures'"])
    results = []
    for s in sigs:
        if not isinstance(s, Mapping) or not isinstance(s.get("jws"), str):
            results.append(SignatureCheck(False, None, "signature entry malformed"))
            continue
        role = s.get("role")
        expected = agreement.get("assigner") if role == "provider" else agreement.get("assignee")
        results.append(
            verify_agreement_signature(
                s["jws"],
                agreement,
                expected_did=str(expected) if expected else None,
                jwk=s.get("publicKeyJwk") or None,
            )
        )
    return results
