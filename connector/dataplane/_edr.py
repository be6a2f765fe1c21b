"""EDR access tokens: short-lived JWTs signed with the provider's DID key, bound to one transfer
and one consumer. The provider's data plane is the only verifier."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from connector.errors import TokenError
from connector.identity import Identity, verify_jws

__all__ = ["EdrService"]

ENDPOINT_TYPE = "https://w3id.org/idsa/v4.1/HTTP"


class EdrService:
    """Issues the ``dataAddress`` of a pull transfer and verifies its access token."""

    def __init__(self, identity: Identity, public_base_url: str, *, ttl_seconds: int = 300) -> None:
        self.identity = identity
        self.public_base_url = public_base_url.rstrip("/")
        self.ttl_seconds = ttl_seconds

    def endpoint(self, transfer_id: str) -> str:
        return f"{self.public_base_url}/api/public/transfers/{transfer_id}"

    def token(self, transfer_id: str, consumer_did: str, *, now: float | None = None) -> str:
        t = int(now if now is not None else time.time())
        claims = {
            "iss": self.identity.did,
            "sub": consumer_did,
            "aud": "dadam-dataplane",
            "tid": transfer_id,
            "jti": str(uuid.uuid4()),
            "iat": t,
            "exp": t + self.ttl_seconds,
        }
        return self.identity.sign_jws(orjson.dumps(claims), headers={"typ": "JWT"})

    def data_address(self, transfer_id: str, consumer_did: str) -> dict[str, Any]:
        """The DSP ``DataAddress`` (endpoint + bearer token) for a TransferStartMessage."""
        return {
            "@type": "DataAddress",
            "endpointType": ENDPOINT_TYPE,
            "endpoint": self.endpoint(transfer_id),
            "endpointProperties": [
                {
                    "@type": "EndpointProperty",
                    "name": "authorization",
                    "value": self.token(transfer_id, consumer_did),
                },
                {"@type": "EndpointProperty", "name": "authType", "value": "bearer"},
            ],
        }

    def verify(self, authorization: str | None, transfer_id: str) -> dict[str, Any]:
        """The token's claims; TokenError naming the failed check (forged, expired, other transfer)."""
        if not authorization:
            raise TokenError("no access token: send the EDR's authorization value as a bearer token")
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else authorization.strip()
        payload = verify_jws(token, key_resolver=self.identity.resolve_own, expected_did=self.identity.did)
        try:
            claims: dict[str, Any] = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise TokenError("access token payload is not JSON") from None
        if claims.get("aud") != "dadam-dataplane":
            raise TokenError("not a data plane access token")
        if claims.get("tid") != transfer_id:
            raise TokenError(f"access token is for transfer {claims.get('tid')!r}, not {transfer_id!r}")
        if not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
            raise TokenError("access token expired: ask the consumer's connector for a fresh EDR")
        return claims
