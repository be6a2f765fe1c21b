"""DSP 2025-1 catalog endpoints and the unauthenticated version endpoint.

* ``POST <dsp>/catalog/request`` — CatalogRequestMessage (optional ``filter``, see docs/catalog.md);
  paging with ``?offset=&limit=`` and ``Link`` headers (``rel="next"``, ``rel="prev"`` and
  ``rel="previous"``; the DSP spec names the latter). 200 + Catalog.
* ``GET <dsp>/catalog/datasets/{id}`` — 200 + Dataset with ``@context``; 404 + CatalogError when the
  id is unknown or not offered to the caller.
* ``GET /.well-known/dspace-version`` — plain JSON version metadata, no authentication.

Bodies are prebuilt bytes from :class:`catalog.CatalogService` (no per-request JSON encoding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from catalog import CatalogPage, CatalogService, parse_filter
from connector.api._body import read_dsp_message
from connector.errors import ValidationError
from connector.identity import Caller

__all__ = ["dsp_catalog_router", "version_body", "version_router"]

MAX_PAGE = 1000


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"invalid {name}", errors=[f"{name}: not an integer: {raw!r}"]) from None
    if not low <= value <= high:
        raise ValidationError(
            f"invalid {name}", errors=[f"{name}: must be between {low} and {high}, got {value}"]
        )
    return value


def _links(request: Request, page: CatalogPage, limit: int) -> str | None:
    links = []

    def url(offset: int) -> str:
        return str(request.url.include_query_params(offset=offset, limit=limit))

    if page.next_offset is not None:
        links.append(f'<{url(page.next_offset)}>; rel="next"')
    if page.prev_offset is not None:
        prev = url(page.prev_offset)
        links.append(f'<{prev}>; rel="prev"')
        links.append(f'<{prev}>; rel="previous"')
    return ", ".join(links) or None


def dsp_catalog_router(
    service: CatalogService,
    caller_dependency: Callable[..., Any],
    *,
    max_body_bytes: int,
    default_page_size: int = 50,
) -> APIRouter:
    """The DSP catalog routes; ``caller_dependency`` authenticates the peer and returns a Caller."""
    router = APIRouter(tags=["dsp-catalog"])

    @router.post("/catalog/request", summary="CatalogRequestMessage → Catalog")
    async def catalog_request(request: Request, caller: Caller = Depends(caller_dependency)) -> Response:
        request.state.dsp_area = "catalog"
        message = await read_dsp_message(
            request, max_bytes=max_body_bytes, expected_types=("CatalogRequestMessage",)
        )
        flt = parse_filter(message.get("filter"))
        offset = _int_param(request, "offset", 0, 0, 10**9)
        limit = _int_param(request, "limit", default_page_size, 1, MAX_PAGE)
        page = await run_in_threadpool(service.catalog, caller, flt, offset, limit)
        headers = {}
        link = _links(request, page, limit)
        if link:
            headers["Link"] = link
        return Response(page.body, media_type="application/json", headers=headers)

    @router.get("/catalog/datasets/{dataset_id:path}", summary="Dataset by id")
    async def get_dataset(
        dataset_id: str, request: Request, caller: Caller = Depends(caller_dependency)
    ) -> Response:
        request.state.dsp_area = "catalog"
        body = await run_in_threadpool(service.dataset, caller, dataset_id)
        return Response(body, media_type="application/json")

    return router


def version_body(dsp_path: str) -> dict[str, Any]:
    """The ``/.well-known/dspace-version`` document."""
    return {
        "protocolVersions": [
            {
                "version": "2025-1",
                "path": dsp_path,
                "binding": "HTTPS",
                "identifierType": "did:web",
                "auth": {"protocol": "DCP", "version": "1.0"},
            }
        ]
    }


def version_router(dsp_path: str) -> APIRouter:
    """``GET /.well-known/dspace-version``: unauthenticated, plain JSON (no ``@context``)."""
    router = APIRouter(tags=["dsp-version"])
    body = orjson.dumps(version_body(dsp_path))

    @router.get("/.well-known/dspace-version", summary="DSP version metadata")
    async def dspace_version() -> Response:
        return Response(body, media_type="application/json")

    return router
