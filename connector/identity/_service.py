"""The identity bundle a running connector holds, and its HTTP routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from fastapi import APIRouter, Body, Depends
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from connector.identity._did import DidResolver, DidWebResolver
from connector.identity._keys import Identity
from connector.identity._store import PartnerDirectory, SqlReplayStore
from connector.identity._tokens import DspTokenAuth, TokenVerifier
from connector.settings import Settings

__all__ = ["IdentityService", "did_router", "partners_router"]


class IdentityService:
    """Our keys and DID, the verifier for incoming DSP tokens, the partner directory."""

    def __init__(
        self,
        identity: Identity,
        verifier: TokenVerifier,
        partners: PartnerDirectory,
        resolver: DidResolver,
        *,
        token_ttl_seconds: int = 300,
    ) -> None:
        self.identity = identity
        self.verifier = verifier
        self.partners = partners
        self.resolver = resolver
        self._ttl = token_ttl_seconds

    @classmethod
    def create(
        cls, settings: Settings, engine: Engine, *, resolver: DidResolver | None = None
    ) -> IdentityService:
        """Load (or create on first start) the signing key and wire verification against ``engine``."""
        identity = Identity.load_or_create(settings.did, settings.data_dir, settings.key_algorithm)
        identity.service_endpoints = [
            {"id": f"{settings.did}#dsp", "type": "DataService", "serviceEndpoint": settings.dsp_base_url}
        ]
        resolver = resolver or DidWebResolver(
            allow_http_loopback=settings.did_web_allow_http, cache_seconds=settings.did_cache_seconds
        )
        partners = PartnerDirectory(engine)
        verifier = TokenVerifier(
            resolver,
            settings.did,
            SqlReplayStore(engine),
            leeway_seconds=settings.token_leeway_seconds,
            partners=partners,
            trusted_dids=settings.trusted_dids,
        )
        return cls(identity, verifier, partners, resolver, token_ttl_seconds=settings.token_ttl_seconds)

    def auth_for(self, peer_did: str) -> httpx.Auth:
        """httpx auth adding a fresh self-issued token for ``peer_did`` to each request."""
        return DspTokenAuth(self.identity, peer_did, ttl_seconds=self._ttl)

    async def aclose(self) -> None:
        close = getattr(self.resolver, "aclose", None)
        if close is not None:
            await close()


def did_router(identity: Identity, *, path: str = "/.well-known/did.json") -> APIRouter:
    """Serves our DID document (did:web) at ``path``; unauthenticated, as did:web requires."""
    router = APIRouter(tags=["identity"])

    @router.get(path, summary="DID document of this participant")
    async def did_document() -> dict[str, Any]:
        return identity.did_document()

    return router


def partners_router(
    partners: PartnerDirectory, require_read: Callable[..., Any], require_write: Callable[..., Any]
) -> APIRouter:
    """Management routes for the partner directory (verified claims per partner DID).

    The DID in the path must be percent-encoded as a whole (``did%3Aweb%3Ahost%253A8181``), since
    did:web identifiers themselves contain ``%3A``.
    """
    router = APIRouter(tags=["partners"])

    @router.get("/partners", dependencies=[Depends(require_read)], summary="Every partner and its claims")
    async def list_partners() -> dict[str, Any]:
        return {"partners": await run_in_threadpool(partners.all)}

    @router.put(
        "/partners/{did:path}",
        dependencies=[Depends(require_write)],
        summary="Record what you verified about a partner (bpn, memberships, framework_agreements, ...)",
    )
    async def put_partner(did: str, claims: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return {"did": did, "claims": await run_in_threadpool(partners.put, did, claims)}

    @router.delete("/partners/{did:path}", dependencies=[Depends(require_write)], status_code=204)
    async def delete_partner(did: str) -> None:
        await run_in_threadpool(partners.delete, did)

    return router
