"""Management API authentication: ``X-Api-Key`` and OAuth2 client-credentials bearer tokens.

Scopes: ``management:read`` and ``management:write`` (write implies read). The API key grants
both. The built-in token endpoint (``POST <management>/oauth/token``, RFC 6749 §4.4) issues
short-lived HS256 JWTs for the one configured client; the signing key is derived from the client
secret, so every replica sharing the secret accepts every replica's tokens. It is enabled only
when ``DADAM_OAUTH_CLIENT_SECRET`` is set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from connector.errors import AuthError, PermissionDeniedError
from connector.settings import Settings

__all__ = ["READ_SCOPE", "WRITE_SCOPE", "ManagementAuth", "oauth_router"]

READ_SCOPE = "management:read"
WRITE_SCOPE = "management:write"
_ISSUER = "dadam-management"


class ManagementAuth:
    """FastAPI dependencies ``require_read`` / ``require_write`` and the token issuer."""

    def __init__(self, settings: Settings) -> None:
        self._api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self.client_id = settings.oauth_client_id
        secret = settings.oauth_client_secret.get_secret_value() if settings.oauth_client_secret else None
        self._secret = secret.encode() if secret else None
        self._key = (
            OctKey.import_key(hashlib.sha256(b"dadam-management-token|" + self._secret).digest())
            if self._secret
            else None
        )
        self._ttl = settings.oauth_token_ttl_seconds

    @property
    def token_endpoint_enabled(self) -> bool:
        return self._key is not None

    # -- tokens -------------------------------------------------------------------------------
    def check_client(self, client_id: str | None, client_secret: str | None) -> None:
        if self._secret is None:
            raise AuthError("the token endpoint is disabled: no DADAM_OAUTH_CLIENT_SECRET is configured")
        if client_id != self.client_id or client_secret is None:
            raise AuthError("invalid_client")
        if not hmac.compare_digest(client_secret.encode(), self._secret):
            raise AuthError("invalid_client")

    def issue(self, scopes: list[str], *, now: float | None = None) -> dict[str, Any]:
        assert self._key is not None
        t = int(now if now is not None else time.time())
        claims = {
            "iss": _ISSUER,
            "sub": self.client_id,
            "scope": " ".join(scopes),
            "iat": t,
            "exp": t + self._ttl,
            "jti": str(uuid.uuid4()),
        }
        token = jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, self._key, algorithms=["HS256"])
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self._ttl,
            "scope": " ".join(scopes),
        }

    def _token_scopes(self, token: str) -> set[str]:
        if self._key is None:
            raise AuthError("bearer tokens are not accepted: the token endpoint is disabled")
        try:
            decoded = jwt.decode(token, self._key, algorithms=["HS256"])
        except (JoseError, ValueError) as exc:
            raise AuthError(f"invalid bearer token: {exc.__class__.__name__}") from None
        claims = decoded.claims
        if claims.get("iss") != _ISSUER or claims.get("sub") != self.client_id:
            raise AuthError("invalid bearer token: wrong issuer or subject")
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp < time.time():
            raise AuthError("bearer token expired")
        return set(str(claims.get("scope", "")).split())

    # -- dependencies -------------------------------------------------------------------------
    def _scopes(self, request: Request) -> set[str]:
        return self.scopes(request.headers)

    def scopes(self, headers: Mapping[str, str]) -> set[str]:
        """The scopes the request's credentials grant (header names in lower case); AuthError."""
        key = headers.get("x-api-key")
        if key is not None:
            if self._api_key is None or not hmac.compare_digest(key.encode(), self._api_key):
                raise AuthError("invalid API key")
            return {READ_SCOPE, WRITE_SCOPE}
        auth = headers.get("authorization")
        if auth and auth[:7].lower() == "bearer ":
            return self._token_scopes(auth[7:].strip())
        raise AuthError("authentication required: send X-Api-Key or an OAuth2 bearer token")

    async def require_read(self, request: Request) -> None:
        scopes = self._scopes(request)
        if not scopes & {READ_SCOPE, WRITE_SCOPE}:
            raise PermissionDeniedError(f"the token lacks the scope {READ_SCOPE}")

    async def require_write(self, request: Request) -> None:
        self.check_write(request.headers)

    def check_write(self, headers: Mapping[str, str]) -> None:
        """:meth:`require_write` on the request's headers (lower-case names)."""
        if WRITE_SCOPE not in self.scopes(headers):
            raise PermissionDeniedError(f"the token lacks the scope {WRITE_SCOPE}")

    async def lane_write(self, headers: Mapping[str, str], defer_replay: bool) -> Callable[[], None]:
        """:meth:`require_write` as a fast lane's ``authenticate`` (no caller to return)."""
        self.check_write(headers)
        return _nobody

    def lane_write_now(self, headers: Mapping[str, str], defer_replay: bool) -> Callable[[], None]:
        """:meth:`lane_write` without the event loop (it never waits)."""
        self.check_write(headers)
        return _nobody


def _nobody() -> None:
    return None


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="dadam"'} if status == 401 else None
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def oauth_router(auth: ManagementAuth) -> APIRouter:
    """``POST /oauth/token``: OAuth2 client credentials (client auth by HTTP Basic or form fields)."""
    router = APIRouter(tags=["auth"])

    @router.post("/oauth/token", summary="OAuth2 client-credentials token endpoint")
    async def token(request: Request) -> JSONResponse:
        if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
            return _oauth_error(400, "invalid_request", "use application/x-www-form-urlencoded")
        raw = await request.body()
        if len(raw) > 8192:
            return _oauth_error(400, "invalid_request", "request body too large")
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic[:6].lower() == "basic ":
            try:
                client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
            except ValueError:
                return _oauth_error(401, "invalid_client", "malformed Basic credentials")
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
        try:
            auth.check_client(client_id, client_secret)
        except AuthError as exc:
            return _oauth_error(401, "invalid_client", exc.message)
        requested = (form.get("scope") or f"{READ_SCOPE} {WRITE_SCOPE}").split()
        unknown = [s for s in requested if s not in (READ_SCOPE, WRITE_SCOPE)]
        if unknown:
            return _oauth_error(400, "invalid_scope", f"unknown scope(s): {', '.join(unknown)}")
        return JSONResponse(auth.issue(requested), headers={"Cache-Control": "no-store"})

    return router
