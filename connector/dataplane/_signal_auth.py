"""Authentication of data plane signaling calls, in both directions (decision record 0452).

Every signaling request carries ``Authorization: Bearer <JWT>``, HS256 over the shared secret
``DADAM_DATAPLANE_SIGNALING_SECRET``, with these claims:

* ``iss``: who calls (``dadam-control-plane`` or ``dadam-data-plane``): a token the control plane
  made is never accepted by the control plane's own callback endpoints, and the other way round;
* ``aud``: the path of the endpoint called (``/api/signaling/v1/dataflows/<id>/terminate``): a token
  captured on one endpoint cannot be replayed on another (a ``start`` turned into a ``terminate``);
* ``bsh``: the base64url SHA-256 of the request body: a token cannot be replayed with another body;
* ``iat``, ``exp`` (60 s) and ``jti``.

A shared secret rather than the DID keys: the data plane of another vendor can be configured with
one value, and both sides of the channel are operated by the same participant.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Generator
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import OctKey

from connector.errors import TokenError

__all__ = [
    "CONTROL_PLANE",
    "DATA_PLANE",
    "SignalAuth",
    "sign_signal",
    "verify_signal",
]

CONTROL_PLANE = "dadam-control-plane"
DATA_PLANE = "dadam-data-plane"
TTL_S = 60
LEEWAY_S = 30


def _body_hash(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


def sign_signal(secret: bytes, *, issuer: str, audience: str, body: bytes, now: float | None = None) -> str:
    """A signaling JWT for a call to ``audience`` (the endpoint's path) with ``body``."""
    t = int(time.time() if now is None else now)
    claims = {"iss": issuer, "aud": audience, "iat": t, "exp": t + TTL_S, "jti": str(uuid.uuid4()),
              "bsh": _body_hash(body)}  # fmt: skip
    return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, OctKey.import_key(secret), algorithms=["HS256"])


def verify_signal(
    secret: bytes, authorization: str | None, *, issuer: str, audience: str, body: bytes
) -> dict[str, Any]:
    """The claims of a valid signaling token; TokenError (401) naming what is wrong otherwise."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise TokenError("signaling call without a bearer token")
    try:
        claims = dict(
            jwt.decode(authorization[7:].strip(), OctKey.import_key(secret), algorithms=["HS256"]).claims
        )
    except BadSignatureError:
        raise TokenError("signaling token signature is invalid (another secret?)") from None
    except (JoseError, ValueError):
        raise TokenError("signaling token is not an HS256 JWT") from None
    now = time.time()
    if not isinstance(claims.get("exp"), int) or claims["exp"] + LEEWAY_S < now:
        raise TokenError("signaling token expired")
    if not isinstance(claims.get("iat"), int) or claims["iat"] - LEEWAY_S > now:
        raise TokenError("signaling token issued in the future")
    if claims.get("iss") != issuer:
        raise TokenError(f"signaling token issued by {claims.get('iss')!r}, expected {issuer!r}")
    if claims.get("aud") != audience:
        raise TokenError(f"signaling token is for {claims.get('aud')!r}, not for {audience!r}")
    if claims.get("bsh") != _body_hash(body):
        raise TokenError("signaling token was made for another request body")
    return claims


class SignalAuth(httpx.Auth):
    """httpx auth that signs each request for its own path and body."""

    requires_request_body = True

    def __init__(self, secret: bytes, issuer: str) -> None:
        self._secret = secret
        self.issuer = issuer

    def __repr__(self) -> str:
        return f"SignalAuth(issuer={self.issuer!r}, secret=**********)"

    def request_headers(self, url: str, body: bytes) -> dict[str, str]:
        """The headers to add for a request to ``url`` with ``body`` (also for non-httpx senders)."""
        token = sign_signal(self._secret, issuer=self.issuer, audience=httpx.URL(url).path, body=body)
        return {"Authorization": f"Bearer {token}"}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self.request_headers(str(request.url), request.content))
        yield request
