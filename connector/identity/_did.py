"""did:web resolution (W3C did:web method) with a cache, and a static resolver for tests and offline use."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import unquote

import httpx

from connector.errors import TokenError
from connector.identity._keys import PublicKey

__all__ = ["DidResolver", "DidWebResolver", "StaticDidResolver", "did_web_url", "find_key"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def did_web_url(did: str, *, allow_http_loopback: bool = False) -> str:
    """The URL of the DID document of a did:web (https; http only for loopback when allowed)."""
    if not did.startswith("did:web:"):
        raise TokenError(f"only did:web identifiers are supported, got {did!r}")
    parts = did[len("did:web:") :].split(":")
    if not parts[0]:
        raise TokenError(f"malformed did:web {did!r}")
    host_port = unquote(parts[0])
    host = host_port.rsplit(":", 1)[0] if host_port.count(":") == 1 else host_port
    path = "/".join(unquote(p) for p in parts[1:])
    scheme = "http" if allow_http_loopback and _is_loopback(host) else "https"
    if path:
        return f"{scheme}://{host_port}/{path}/did.json"
    return f"{scheme}://{host_port}/.well-known/did.json"


def find_key(document: Mapping[str, Any], did: str, kid: str) -> PublicKey:
    """The verification method ``kid`` (absolute, ``#frag`` or ``frag``) of ``did``'s document."""
    if document.get("id") != did:
        raise TokenError(f"the DID document served for {did} has id {document.get('id')!r}")
    frag = kid.split("#", 1)[1] if "#" in kid else kid
    if kid.startswith("did:") and kid.split("#", 1)[0] != did:
        raise TokenError(f"key {kid} does not belong to {did}")
    wanted = {f"{did}#{frag}", f"#{frag}"}
    methods = document.get("verificationMethod") or []
    for vm in methods if isinstance(methods, list) else []:
        if isinstance(vm, Mapping) and vm.get("id") in wanted:
            jwk = vm.get("publicKeyJwk")
            if not isinstance(jwk, Mapping):
                raise TokenError(f"verification method {kid} has no publicKeyJwk")
            controller = vm.get("controller", did)
            if controller != did:
                raise TokenError(f"verification method {kid} is controlled by {controller}, not {did}")
            return PublicKey(id=f"{did}#{frag}", controller=did, jwk=jwk)
    raise TokenError(f"{did}'s DID document has no verification method {kid}")


class DidResolver(Protocol):
    """Resolves a DID to its DID document."""

    async def resolve(self, did: str) -> Mapping[str, Any]: ...


class StaticDidResolver:
    """A fixed DID -> document map (tests, air-gapped set-ups)."""

    def __init__(self, documents: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.documents: dict[str, Mapping[str, Any]] = dict(documents or {})

    async def resolve(self, did: str) -> Mapping[str, Any]:
        try:
            return self.documents[did]
        except KeyError:
            raise TokenError(f"cannot resolve {did}: unknown DID") from None

    def cached(self, did: str) -> Mapping[str, Any] | None:
        """The document at hand without waiting (None: :meth:`resolve` says why not)."""
        return self.documents.get(did)


class DidWebResolver:
    """Fetches did:web documents over HTTPS (http for loopback when allowed) and caches them."""

    def __init__(
        self,
        *,
        allow_http_loopback: bool = False,
        cache_seconds: float = 300.0,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._allow_http = allow_http_loopback
        self._ttl = cache_seconds
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False)
        self._cache: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    def invalidate(self, did: str) -> None:
        """Forget a cached document (e.g. after the peer rotated its key)."""
        self._cache.pop(did, None)

    def cached(self, did: str) -> Mapping[str, Any] | None:
        """The cached, unexpired document of ``did``; None when :meth:`resolve` has to fetch it."""
        hit = self._cache.get(did)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    async def resolve(self, did: str) -> Mapping[str, Any]:
        hit = self._cache.get(did)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        lock = self._locks.setdefault(did, asyncio.Lock())
        async with lock:
            hit = self._cache.get(did)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
            url = did_web_url(did, allow_http_loopback=self._allow_http)
            try:
                resp = await self._http.get(url, headers={"Accept": "application/did+json, application/json"})
            except httpx.HTTPError as exc:
                raise TokenError(
                    f"cannot resolve {did}: {url} unreachable ({exc.__class__.__name__})"
                ) from None
            if resp.status_code != 200:
                raise TokenError(f"cannot resolve {did}: {url} answered {resp.status_code}")
            try:
                doc = resp.json()
            except ValueError:
                raise TokenError(f"cannot resolve {did}: {url} did not return JSON") from None
            if not isinstance(doc, dict):
                raise TokenError(f"cannot resolve {did}: the DID document is not a JSON object")
            if doc.get("id") != did:
                raise TokenError(f"cannot resolve {did}: the document at {url} is for {doc.get('id')!r}")
            self._cache[did] = (time.monotonic() + self._ttl, doc)
            return doc
