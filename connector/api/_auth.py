"""Fallback management-API authentication (X-Api-Key only) and the anonymous DSP caller.

``connector.identity`` provides the full management auth (API key and OAuth2 client-credentials
bearer tokens with read/write scopes) and DCP token verification for DSP peers; ``create_app``
uses them when they are available. These fallbacks keep the app safe without them:

* :class:`ApiKeyAuth` accepts only ``X-Api-Key`` equal to ``DADAM_API_KEY`` (constant-time compare)
  for both read and write; with no key configured every management call is refused (401).
* :func:`anonymous_caller` identifies every DSP peer as ``anonymous`` with no claims. With the
  fail-closed access evaluator such a caller sees only datasets whose access policy is
  unconditional, so nothing protected leaks.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from connector.errors import AuthError
from connector.identity import Caller
from connector.settings import Settings

__all__ = ["ANONYMOUS", "ApiKeyAuth", "anonymous_caller"]

ANONYMOUS = Caller(did="anonymous")


async def anonymous_caller() -> Caller:
    """DSP caller dependency used when no identity verifier is configured."""
    return ANONYMOUS


class ApiKeyAuth:
    """``require_read`` / ``require_write`` dependencies checking ``X-Api-Key``."""

    def __init__(self, settings: Settings) -> None:
        self._key = settings.api_key.get_secret_value().encode() if settings.api_key else None

    def _check(self, request: Request) -> None:
        if self._key is None:
            raise AuthError("management API is disabled: no DADAM_API_KEY is configured")
        given = request.headers.get("x-api-key")
        if given is None:
            raise AuthError("missing X-Api-Key header")
        if not hmac.compare_digest(given.encode(), self._key):
            raise AuthError("invalid API key")

    async def require_read(self, request: Request) -> None:
        self._check(request)

    async def require_write(self, request: Request) -> None:
        self._check(request)
