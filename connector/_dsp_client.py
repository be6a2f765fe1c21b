"""Consumer side of the DSP catalog protocol: ask a partner's connector for its catalog.

:class:`DspClient` speaks DSP 2025-1 over HTTP (httpx) and authenticates every request with the
``auth_for(peer_did)`` hook (connector.identity's DCP self-issued token, in production). It
returns the partner's compact JSON as received, after checking its shape, and explains every
failure: the peer's own ``CatalogError`` reasons are kept in the raised error.

Peer DID: callers pass ``peer_did``; :func:`peer_did_for_address` derives the did:web a dadam
peer uses by default (from the address's scheme-less host and port) when none is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from connector.errors import RemoteProtocolError, TransportError, ValidationError
from vocab import DSP_CONTEXT

__all__ = ["DspClient", "peer_did_for_address"]

AuthFor = Callable[[str], httpx.Auth | None]


def peer_did_for_address(address: str) -> str:
    """The did:web that a dadam connector at ``address`` uses by default (host and port only)."""
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("counterPartyAddress must be an absolute http(s) URL", errors=[address])
    host = parts.hostname + (f"%3A{parts.port}" if parts.port else "")
    return f"did:web:{host}"


def _reasons(body: Any) -> list[str]:
    if isinstance(body, Mapping):
        reason = body.get("reason")
        if isinstance(reason, list):
            return [str(r) for r in reason]
        if reason is not None:
            return [str(reason)]
    return []


class DspClient:
    """Catalog requests to partners. One instance per connector; ``aclose()`` when done."""

    def __init__(
        self,
        *,
        auth_for: AuthFor | None = None,
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._auth_for = auth_for
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self, method: str, url: str, peer_did: str, *, json: Any = None, expect_type: str
    ) -> tuple[dict[str, Any], httpx.Response]:
        auth = self._auth_for(peer_did) if self._auth_for else None
        try:
            resp = await self._http.request(method, url, json=json, auth=auth or httpx.USE_CLIENT_DEFAULT)
        except httpx.TimeoutException as exc:
            raise TransportError(f"partner did not answer in time: {exc}", context={"url": url}) from None
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach partner: {exc}", context={"url": url}) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 500:
            raise TransportError(
                f"partner answered {resp.status_code}",
                status=resp.status_code,
                context={"url": url, "reasons": _reasons(body)},
            )
        if resp.status_code >= 400:
            reasons = _reasons(body) or [resp.text[:300]]
            raise RemoteProtocolError(
                f"partner refused the request with {resp.status_code}: {'; '.join(reasons)}",
                context={"url": url, "status": resp.status_code},
            )
        if not isinstance(body, dict):
            raise RemoteProtocolError(
                "partner answered with a body that is not a JSON object", context={"url": url}
            )
        if body.get("@type") != expect_type:
            raise RemoteProtocolError(
                f"partner answered @type {body.get('@type')!r}, expected {expect_type!r}",
                context={"url": url},
            )
        return body, resp

    async def catalog(
        self,
        address: str,
        peer_did: str,
        *,
        filter: list[Any] | None = None,
        url: str | None = None,
    ) -> tuple[dict[str, Any], str | None]:
        """One catalog page from ``address`` (the partner's DSP base) and the URL of the next page."""
        message: dict[str, Any] = {"@context": [DSP_CONTEXT], "@type": "CatalogRequestMessage"}
        if filter is not None:
            message["filter"] = filter
        target = url or address.rstrip("/") + "/catalog/request"
        body, resp = await self._request("POST", target, peer_did, json=message, expect_type="Catalog")
        nxt = resp.links.get("next", {}).get("url")
        return body, nxt

    async def catalog_all(
        self, address: str, peer_did: str, *, filter: list[Any] | None = None, max_pages: int = 1000
    ) -> dict[str, Any]:
        """The whole catalog, following ``Link: rel="next"``; datasets of all pages merged."""
        first, nxt = await self.catalog(address, peer_did, filter=filter)
        datasets = list(first.get("dataset", []))
        pages = 1
        while nxt and pages < max_pages:
            page, nxt = await self.catalog(address, peer_did, filter=filter, url=nxt)
            datasets.extend(page.get("dataset", []))
            pages += 1
        merged = dict(first)
        merged["dataset"] = datasets
        return merged

    async def dataset(self, address: str, peer_did: str, dataset_id: str) -> dict[str, Any]:
        """``GET <address>/catalog/datasets/{id}``: one dataset with its offers."""
        url = address.rstrip("/") + "/catalog/datasets/" + quote(dataset_id, safe="")
        body, _ = await self._request("GET", url, peer_did, expect_type="Dataset")
        return body

    async def version(self, root_url: str) -> dict[str, Any]:
        """The partner's ``/.well-known/dspace-version`` document (unauthenticated)."""
        url = root_url.rstrip("/") + "/.well-known/dspace-version"
        try:
            resp = await self._http.get(url)
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach partner: {exc}", context={"url": url}) from None
        if resp.status_code != 200:
            raise RemoteProtocolError(f"version endpoint answered {resp.status_code}", context={"url": url})
        data: dict[str, Any] = resp.json()
        return data
