"""DCP self-issued ID tokens on DSP requests: sending (httpx auth) and verifying (FastAPI dependency).

Every check DCP v1.0 requires is made, and each failure raises :class:`~connector.errors.TokenError`
with a message naming the check: missing or malformed token, unsupported algorithm, ``kid`` not in
the issuer's DID document, bad signature, ``iss`` != ``sub``, ``sub`` not the DID document's id,
wrong ``aud``, expired, ``nbf``/``iat`` in the future, lifetime over 5 minutes, replayed ``jti``,
issuer not trusted. Tokens are sent as ``Authorization: Bearer <jwt>``; a bare ``<jwt>`` (the DSP
spec's wording) is accepted too.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Collection, Generator, Mapping
from typing import Any

import httpx
import orjson
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from connector.errors import TokenError
from connector.identity._caller import Caller
from connector.identity._did import DidResolver, find_key
from connector.identity._keys import Identity, PublicKey, b64url_decode, verify_jws
from connector.identity._store import MemoryReplayStore, PartnerDirectory, ReplayClaim, ReplayStore

__all__ = ["MAX_TOKEN_LIFETIME", "DspTokenAuth", "TokenVerifier", "dsp_caller_dependency"]

#: DCP: self-issued ID tokens live at most five minutes.
MAX_TOKEN_LIFETIME = 300


class DspTokenAuth(httpx.Auth):
    """Adds a fresh DCP self-issued ID token for ``audience`` to every request."""

    def __init__(self, identity: Identity, audience: str, *, ttl_seconds: int = MAX_TOKEN_LIFETIME) -> None:
        self._identity = identity
        self._audience = audience
        self._ttl = ttl_seconds

    def request_headers(self, url: str, body: bytes) -> dict[str, str]:
        """The headers to add (also for senders that do not use httpx)."""
        return {
            "Authorization": "Bearer " + self._identity.issue_token(self._audience, ttl_seconds=self._ttl)
        }

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self.request_headers(str(request.url), request.content))
        yield request


def _b64json(part: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(b64url_decode(part))  # JSONDecodeError is a ValueError
    except (ValueError, UnicodeError):
        raise TokenError(f"malformed token: the {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"malformed token: the {what} is not a JSON object")
    return value


class TokenVerifier:
    """Verifies DCP self-issued ID tokens addressed to ``own_did``."""

    def __init__(
        self,
        resolver: DidResolver,
        own_did: str,
        replay_store: ReplayStore,
        *,
        leeway_seconds: int = 30,
        partners: PartnerDirectory | None = None,
        trusted_dids: Collection[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._resolver = resolver
        self.own_did = own_did
        self._replay = replay_store
        self._leeway = leeway_seconds
        self._partners = partners
        self._trusted = frozenset(trusted_dids)
        self._clock = clock

    async def verify(self, authorization: str | None) -> Caller:
        """The verified caller behind an ``Authorization`` header value; TokenError otherwise."""
        finish = await self.prepare(authorization)
        if isinstance(self._replay, MemoryReplayStore):
            return finish()
        return await run_in_threadpool(finish)  # the replay store is a database round trip

    async def prepare(self, authorization: str | None, *, defer_replay: bool = False) -> Callable[[], Caller]:
        """:meth:`verify` in two parts: this one checks the token's form and claims and resolves
        the issuer's DID document (on the event loop); the function it returns checks the
        signature, the times, the audience and the replay store (blocking: call it in a worker
        thread) and returns the caller. Either raises TokenError.

        ``defer_replay``: the token id is not added to the replay store; the caller carries it
        as a :class:`ReplayClaim` that the code serving the request must record before acting."""
        token, claims, iss = self._read(authorization)
        document = await self._resolver.resolve(iss)
        return self._prepared(token, claims, iss, document, defer_replay)

    def prepare_now(
        self, authorization: str | None, *, defer_replay: bool = False
    ) -> Callable[[], Caller] | None:
        """:meth:`prepare` without the event loop: the same function where the issuer's DID
        document is at hand (the resolver's cache), None where resolving it would have to wait.
        Raises TokenError as :meth:`prepare` does."""
        token, claims, iss = self._read(authorization)
        cached = getattr(self._resolver, "cached", None)
        document = cached(iss) if cached is not None else None
        if document is None:
            return None
        return self._prepared(token, claims, iss, document, defer_replay)

    def _read(self, authorization: str | None) -> tuple[str, dict[str, Any], str]:
        """The token, its claims and its issuer, with the checks that need no key."""
        if not authorization or not authorization.strip():
            raise TokenError("no token: DSP requests must carry a DCP self-issued ID token in Authorization")
        token = authorization.strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise TokenError("malformed token: expected a compact JWT (three dot-separated parts)")
        claims = _b64json(parts[1], "claims set")
        iss, sub = claims.get("iss"), claims.get("sub")
        if not isinstance(iss, str) or not isinstance(sub, str):
            raise TokenError("token has no 'iss' or 'sub' claim")
        if iss != sub:
            raise TokenError(f"iss ({iss}) != sub ({sub}): not a self-issued token")
        if self._trusted and iss not in self._trusted:
            raise TokenError(f"{iss} is not one of the trusted participants (DADAM_TRUSTED_DIDS)")
        return token, claims, iss

    def _prepared(
        self, token: str, claims: dict[str, Any], iss: str, document: Mapping[str, Any], defer_replay: bool
    ) -> Callable[[], Caller]:
        if document.get("id") != iss:
            raise TokenError(f"sub ({iss}) is not the id of its DID document ({document.get('id')!r})")
        return functools.partial(self._finish, token, claims, iss, document, defer_replay)

    def _finish(
        self, token: str, claims: dict[str, Any], iss: str, document: Mapping[str, Any], defer_replay: bool
    ) -> Caller:
        def resolve_key(did: str, kid: str) -> PublicKey:
            return find_key(document, did, kid)

        verify_jws(token, key_resolver=resolve_key, expected_did=iss)
        self._check_times(claims)
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.own_did not in audiences:
            raise TokenError(f"token is for {aud!r}, not for this connector ({self.own_did})")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise TokenError("token has no 'jti': replay protection needs one")
        claim = ReplayClaim(self._replay, iss, jti, int(claims["exp"]) + self._leeway)
        if not defer_replay:
            claim.record()
        found = self._partners.claims_for(iss) if self._partners is not None else {}
        return Caller(did=iss, claims=found, token_id=jti, replay=claim if defer_replay else None)

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = self._clock()
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not isinstance(exp, int | float):
            raise TokenError("token has no numeric 'exp'")
        if not isinstance(iat, int | float):
            raise TokenError("token has no numeric 'iat'")
        if now > exp + self._leeway:
            raise TokenError(f"token expired {int(now - exp)} s ago")
        if iat > now + self._leeway:
            raise TokenError(f"token 'iat' is {int(iat - now)} s in the future")
        if nbf is not None:
            if not isinstance(nbf, int | float):
                raise TokenError("token 'nbf' is not numeric")
            if nbf > now + self._leeway:
                raise TokenError(f"token is not valid before {int(nbf - now)} s from now ('nbf')")
        if exp - iat > MAX_TOKEN_LIFETIME + self._leeway:
            raise TokenError(
                f"token lifetime {int(exp - iat)} s exceeds the DCP maximum of {MAX_TOKEN_LIFETIME} s"
            )


def dsp_caller_dependency(verifier: TokenVerifier) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency returning the verified :class:`Caller` of a DSP request (TokenError otherwise)."""

    async def dsp_caller(request: Request) -> Caller:
        return await verifier.verify(request.headers.get("authorization"))

    return dsp_caller
