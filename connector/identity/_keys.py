"""The participant's signing keys, DID document, JWS signatures and DCP self-issued ID tokens.

Keys live in ``<data_dir>/keys/`` as private JWK files (mode 0600) named by their RFC 7638
thumbprint, plus a ``current`` file naming the key that signs. :meth:`Identity.rotate` adds a new
current key and keeps the old ones in the DID document, so signatures made before a rotation
still verify. All replicas of one connector must share the same key folder (Kubernetes: a
Secret), never create their own.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey

from connector.errors import ConfigError, TokenError

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "Identity",
    "KeyResolver",
    "PublicKey",
    "algorithm_for_jwk",
    "import_public_jwk",
    "verify_jws",
]

Algorithm = Literal["ES256", "Ed25519"]
AnyKey = ECKey | OKPKey
#: Algorithms we accept on signatures and tokens. ``EdDSA`` is the older name of Ed25519 (RFC 9864
#: deprecates it); peers such as EDC still send it, so it is accepted when verifying, never produced.
SUPPORTED_ALGORITHMS = ("ES256", "Ed25519", "EdDSA")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A verification key: its absolute id (``did#fragment``), controller DID and JWK."""

    id: str
    controller: str
    jwk: Mapping[str, Any]


#: Finds the public key ``kid`` of ``did`` (``kid`` may be absolute ``did#x``, ``#x`` or ``x``).
KeyResolver = Callable[[str, str], PublicKey]


def algorithm_for_jwk(jwk: Mapping[str, Any]) -> str:
    """The JWS algorithm a JWK signs with (ES256 for P-256, Ed25519 for OKP Ed25519)."""
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        return "ES256"
    if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
        return "Ed25519"
    raise TokenError(
        f"unsupported key type {jwk.get('kty')}/{jwk.get('crv')}: only P-256 and Ed25519 are accepted"
    )


def import_public_jwk(jwk: Mapping[str, Any]) -> AnyKey:
    """A joserfc key from a public JWK (cached); refuses private material and unknown key types."""
    try:
        # the cache key: orjson with sorted keys (json.dumps was most of a cache hit's cost)
        text = orjson.dumps(dict(jwk), option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, ValueError) as exc:
        raise TokenError(f"a verification key must be a JSON object (JWK): {exc}") from None
    return _import_cached(text)


@lru_cache(maxsize=4096)
def _import_cached(jwk_json: str) -> AnyKey:
    jwk: dict[str, Any] = orjson.loads(jwk_json)
    if "d" in jwk:
        raise TokenError("a published verification key must not contain private material ('d')")
    algorithm_for_jwk(jwk)
    try:
        if jwk["kty"] == "EC":
            return ECKey.import_key(dict(jwk))
        return OKPKey.import_key(dict(jwk))
    except (JoseError, ValueError, KeyError) as exc:
        raise TokenError(f"invalid verification key: {exc}") from None


_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(part: str) -> bytes:
    """Strict base64url without padding: ValueError for padding or any other character."""
    if "=" in part or "+" in part or "/" in part:
        raise ValueError("not base64url without padding")
    try:
        # bytes.translate: str.translate with a mapping costs about 3x the whole decode
        data = part.encode("ascii").translate(_TO_STANDARD)
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not base64url: {exc}") from None


def _raw_sign(key: AnyKey, data: bytes) -> bytes:
    """The JWS signature of ``data`` (RFC 7518 section 3.4 for ES256: r and s, 32 bytes each)."""
    private = key.private_key
    if isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(data)
    raise ConfigError("the signing key has no private part")


def _raw_verify(key: AnyKey, alg: str, signature: bytes, data: bytes) -> bool:
    public = key.public_key
    try:
        if alg == "ES256" and isinstance(public, ec.EllipticCurvePublicKey):
            if len(signature) != 64:
                return False
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            public.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
            return True
        if alg in ("Ed25519", "EdDSA") and isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def verify_signature(jwk: Mapping[str, Any], alg: str, signature: bytes, signing_input: bytes) -> bool:
    """True when ``signature`` is the JWS signature (RFC 7518: ES256 as r || s, or Ed25519) of
    ``signing_input`` by the public ``jwk``; False for a wrong signature or an algorithm that does
    not fit the key. TokenError for a key we cannot use (private material, unsupported type)."""
    if alg not in SUPPORTED_ALGORITHMS:
        raise TokenError(f"unsupported JWS algorithm {alg!r}; accepted: {', '.join(SUPPORTED_ALGORITHMS)}")
    return _raw_verify(import_public_jwk(jwk), alg, signature, signing_input)


def verify_jws(
    token: str,
    *,
    key_resolver: KeyResolver,
    expected_did: str | None = None,
    detached_payload: bytes | None = None,
) -> bytes:
    """Verify a compact JWS whose ``kid`` header names a key of a DID; return the payload.

    ``expected_did`` pins the signer (the DID part of ``kid`` must equal it). For a detached
    signature (``header..signature``) pass the payload in ``detached_payload``.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a compact JWS (expected three dot-separated parts)")
    head_b64, payload_b64, sig_b64 = parts
    try:
        if detached_payload is not None:
            if payload_b64:
                raise TokenError("expected a detached JWS, got one with an embedded payload")
            payload, payload_b64 = detached_payload, b64url(detached_payload)
        else:
            payload = b64url_decode(payload_b64)
        header = orjson.loads(b64url_decode(head_b64))
        signature = b64url_decode(sig_b64)
    except (ValueError, UnicodeError) as exc:
        raise TokenError(f"malformed JWS: {exc}") from None
    if not isinstance(header, dict):
        raise TokenError("malformed JWS: the protected header is not a JSON object")
    if "crit" in header:  # RFC 7515 4.1.11: we implement no extension, so none can be critical
        raise TokenError(f"JWS names critical header parameters we do not support: {header['crit']!r}")
    alg = header.get("alg")
    if alg not in SUPPORTED_ALGORITHMS:
        raise TokenError(f"unsupported JWS algorithm {alg!r}; accepted: {', '.join(SUPPORTED_ALGORITHMS)}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError("JWS header has no 'kid' naming the signing key")
    did = expected_did or kid.split("#", 1)[0]
    if expected_did is not None and kid.startswith("did:") and kid.split("#", 1)[0] != expected_did:
        raise TokenError(f"JWS was signed by {kid.split('#', 1)[0]}, expected {expected_did}")
    public = key_resolver(did, kid)
    key = import_public_jwk(public.jwk)
    if (alg == "ES256") != (public.jwk.get("kty") == "EC"):
        raise TokenError(f"JWS algorithm {alg} does not match the key type of {public.id}")
    if not _raw_verify(key, str(alg), signature, f"{head_b64}.{payload_b64}".encode("ascii")):
        raise TokenError(f"JWS signature does not verify with {public.id}: bad signature")
    return payload


def _new_key(algorithm: Algorithm) -> AnyKey:
    if algorithm == "ES256":
        return ECKey.generate_key("P-256")
    return OKPKey.generate_key("Ed25519")


class Identity:
    """This participant: DID, signing keys and what they sign. Build with :meth:`load_or_create`."""

    def __init__(self, did: str, keys_dir: Path, keys: dict[str, AnyKey], current: str) -> None:
        self.did = did
        self.keys_dir = keys_dir
        self._keys = keys
        self._current = current
        self._token_header: dict[str, str] = {}
        self.service_endpoints: list[dict[str, str]] = []

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load_or_create(cls, did: str, data_dir: Path, algorithm: Algorithm = "ES256") -> Identity:
        """Load the keys under ``data_dir/keys``; create the first one if there is none."""
        keys_dir = Path(data_dir) / "keys"
        keys: dict[str, AnyKey] = {}
        if keys_dir.is_dir():
            for path in sorted(keys_dir.glob("*.jwk.json")):
                try:
                    data = json.loads(path.read_text())
                    key: AnyKey = (
                        ECKey.import_key(data) if data.get("kty") == "EC" else OKPKey.import_key(data)
                    )
                except (OSError, ValueError, JoseError) as exc:
                    raise ConfigError(f"cannot read signing key {path}: {exc}") from None
                keys[key.thumbprint()] = key
        current_file = keys_dir / "current"
        if not keys:
            ident = cls(did, keys_dir, {}, "")
            ident._add(_new_key(algorithm))
            return ident
        try:
            current = current_file.read_text().strip()
        except OSError:
            current = ""
        if current not in keys:
            raise ConfigError(f"{current_file} does not name one of the keys in {keys_dir}")
        return cls(did, keys_dir, keys, current)

    def _add(self, key: AnyKey) -> str:
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.keys_dir, 0o700)
        tp = key.thumbprint()
        path = self.keys_dir / f"{tp}.jwk.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(key.as_dict(private=True), fh)
        tmp = self.keys_dir / "current.tmp"
        tmp.write_text(tp)
        tmp.replace(self.keys_dir / "current")
        self._keys[tp] = key
        self._current = tp
        return tp

    def rotate(self, algorithm: Algorithm | None = None) -> str:
        """Create a new signing key (same algorithm unless given); old keys stay verifiable."""
        alg: Algorithm = algorithm or self.algorithm  # type: ignore[assignment]
        return self._add(_new_key(alg))

    # -- properties ---------------------------------------------------------------------------
    @property
    def kid(self) -> str:
        """Absolute id of the current verification method (``<did>#<thumbprint>``)."""
        return f"{self.did}#{self._current}"

    @property
    def algorithm(self) -> str:
        return algorithm_for_jwk(self._keys[self._current].as_dict(private=False))

    def public_keys(self) -> list[PublicKey]:
        return [
            PublicKey(id=f"{self.did}#{tp}", controller=self.did, jwk=key.as_dict(private=False))
            for tp, key in self._keys.items()
        ]

    def did_document(self) -> dict[str, Any]:
        """This participant's W3C DID document (JsonWebKey2020 verification methods)."""
        methods = [
            {"id": pk.id, "type": "JsonWebKey2020", "controller": self.did, "publicKeyJwk": dict(pk.jwk)}
            for pk in self.public_keys()
        ]
        ids = [m["id"] for m in methods]
        doc: dict[str, Any] = {
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/suites/jws-2020/v1"],
            "id": self.did,
            "verificationMethod": methods,
            "authentication": ids,
            "assertionMethod": ids,
        }
        if self.service_endpoints:
            doc["service"] = list(self.service_endpoints)
        return doc

    def resolve_own(self, did: str, kid: str) -> PublicKey:
        """A :data:`KeyResolver` over our own keys (to verify what we signed)."""
        if did != self.did:
            raise TokenError(f"key of {did} is unknown here")
        frag = kid.rsplit("#", 1)[-1]
        key = self._keys.get(frag)
        if key is None:
            raise TokenError(f"{kid} is not one of our keys")
        return PublicKey(id=f"{self.did}#{frag}", controller=self.did, jwk=key.as_dict(private=False))

    # -- signing ------------------------------------------------------------------------------
    def sign_jws(
        self, payload: bytes, *, detached: bool = False, headers: Mapping[str, Any] | None = None
    ) -> str:
        """A compact JWS over ``payload`` with our current key (``kid`` = :attr:`kid`)."""
        protected = {"alg": self.algorithm, "kid": self.kid, **dict(headers or {})}
        head = b64url(orjson.dumps(protected))
        signature = b64url(_raw_sign(self._keys[self._current], f"{head}.{b64url(payload)}".encode("ascii")))
        return f"{head}..{signature}" if detached else f"{head}.{b64url(payload)}.{signature}"

    def issue_token(self, audience: str, *, ttl_seconds: int = 300, now: float | None = None) -> str:
        """A DCP self-issued ID token for ``audience`` (iss = sub = our DID, jti, iat, nbf, exp)."""
        if not 0 < ttl_seconds <= 300:
            raise ValueError("self-issued ID tokens live at most 5 minutes")
        t = int(now if now is not None else time.time())
        claims = {
            "iss": self.did,
            "sub": self.did,
            "aud": audience,
            "jti": str(uuid.uuid4()),
            "iat": t,
            "nbf": t,
            "exp": t + ttl_seconds,
        }
        head = self._token_header.get(self._current)
        if head is None:  # per signing key: it changes with a rotation
            head = self._token_header[self._current] = b64url(
                orjson.dumps({"alg": self.algorithm, "kid": self.kid, "typ": "JWT"})
            )
        signing_input = f"{head}.{b64url(orjson.dumps(claims))}"
        return (
            f"{signing_input}.{b64url(_raw_sign(self._keys[self._current], signing_input.encode('ascii')))}"
        )
