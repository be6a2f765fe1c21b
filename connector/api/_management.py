"""Management API (plain JSON): datasets, policies, contract definitions, DCAT-AP export.

Every collection has create (``POST``, 201 + ``Location``), read, replace (``PUT``), delete (204)
and a paged query (``GET ?offset=&limit=`` plus filters) answering
``{"items", "total", "offset", "limit", "next", "prev"}`` and a ``Link`` header. Errors are
``{"error", "message", "details": [...]}``; validation errors list every problem with its field
path (``body.publisher.id: ...``). Reads need the read scope, writes the write scope.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from catalog import (
    CatalogService,
    CatalogStore,
    Category,
    ContractDefinition,
    Dataset,
    Page,
    PolicyDefinition,
)
from connector.api._errors import UnsupportedMediaTypeError
from connector.errors import ValidationError

__all__ = ["management_router"]


async def require_json(request: Request) -> None:
    """415 unless a body-carrying request says it is JSON."""
    if request.method in ("POST", "PUT", "PATCH"):
        media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if media not in ("application/json", "application/ld+json"):
            raise UnsupportedMediaTypeError(
                f"unsupported content type {media or '(none)'!r}",
                errors=["Content-Type: must be application/json"],
            )


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _page(request: Request, page: Page[Any]) -> Response:
    def url(offset: int) -> str:
        return str(request.url.include_query_params(offset=offset, limit=page.limit))

    nxt = url(page.next_offset) if page.next_offset is not None else None
    prev = url(page.prev_offset) if page.prev_offset is not None else None
    links = [f'<{nxt}>; rel="next"'] if nxt else []
    if prev:
        links.append(f'<{prev}>; rel="prev"')
    body = {
        "items": [_dump(i) for i in page.items],
        "total": page.total,
        "offset": page.offset,
        "limit": page.limit,
        "next": nxt,
        "prev": prev,
    }
    return _json(body, headers={"Link": ", ".join(links)} if links else None)


def _same_id(path_id: str, body_id: str) -> None:
    if path_id != body_id:
        raise ValidationError(
            "id in the body differs from the id in the path",
            errors=[f"body.id: {body_id!r} does not match the path id {path_id!r}"],
        )


def management_router(
    store: CatalogStore,
    service: CatalogService,
    *,
    require_read: Callable[..., Any],
    require_write: Callable[..., Any],
) -> APIRouter:
    """The management routes; ``require_read`` / ``require_write`` are auth dependencies."""
    router = APIRouter(dependencies=[Depends(require_json)])
    read = [Depends(require_read)]
    write = [Depends(require_write)]
    offset_q = Query(0, ge=0, description="Index of the first item.")
    limit_q = Query(50, ge=1, le=1000, description="Items per page.")

    # ------------------------------------------------------------------ datasets
    @router.post(
        "/datasets",
        status_code=201,
        dependencies=write,
        tags=["datasets"],
        responses={201: {"model": Dataset}},
    )
    async def create_dataset(request: Request, dataset: Dataset = Body(...)) -> Response:
        """Create a dataset (with its private data address); 409 if the id exists."""
        ds = await run_in_threadpool(store.create_dataset, dataset)
        return _json(
            _dump(ds), 201, {"Location": str(request.url_for("management_get_dataset", dataset_id=ds.id))}
        )

    @router.get("/datasets", dependencies=read, tags=["datasets"])
    async def query_datasets(
        request: Request,
        offset: int = offset_q,
        limit: int = limit_q,
        category: Category | None = Query(None),
        keyword: str | None = Query(None),
        conforms_to: str | None = Query(None, alias="conformsTo"),
        q: str | None = Query(None, description="Case-insensitive search in id and title."),
    ) -> Response:
        """Datasets ordered by id; all given filters must hold."""
        page = await run_in_threadpool(
            lambda: store.query_datasets(
                offset=offset, limit=limit, category=category, keyword=keyword, conforms_to=conforms_to, q=q
            )
        )
        return _page(request, page)

    @router.get(
        "/datasets/{dataset_id:path}",
        dependencies=read,
        tags=["datasets"],
        responses={200: {"model": Dataset}},
        name="management_get_dataset",
    )
    async def get_dataset(dataset_id: str) -> Response:
        return _json(_dump(await run_in_threadpool(store.get_dataset, dataset_id)))

    @router.put(
        "/datasets/{dataset_id:path}",
        dependencies=write,
        tags=["datasets"],
        responses={200: {"model": Dataset}},
    )
    async def replace_dataset(dataset_id: str, dataset: Dataset = Body(...)) -> Response:
        """Replace a dataset; the body's ``id`` must equal the path id."""
        _same_id(dataset_id, dataset.id)
        return _json(_dump(await run_in_threadpool(store.update_dataset, dataset)))

    @router.delete("/datasets/{dataset_id:path}", status_code=204, dependencies=write, tags=["datasets"])
    async def delete_dataset(dataset_id: str) -> Response:
        await run_in_threadpool(store.delete_dataset, dataset_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------ policies
    @router.post(
        "/policies",
        status_code=201,
        dependencies=write,
        tags=["policies"],
        responses={201: {"model": PolicyDefinition}},
    )
    async def create_policy(request: Request, policy: PolicyDefinition = Body(...)) -> Response:
        """Store an ODRL policy (checked structurally); 409 if the id exists."""
        p = await run_in_threadpool(store.create_policy, policy)
        return _json(
            _dump(p), 201, {"Location": str(request.url_for("management_get_policy", policy_id=p.id))}
        )

    @router.get("/policies", dependencies=read, tags=["policies"])
    async def query_policies(
        request: Request, offset: int = offset_q, limit: int = limit_q, q: str | None = Query(None)
    ) -> Response:
        page = await run_in_threadpool(lambda: store.query_policies(offset=offset, limit=limit, q=q))
        return _page(request, page)

    @router.get(
        "/policies/{policy_id}",
        dependencies=read,
        tags=["policies"],
        responses={200: {"model": PolicyDefinition}},
        name="management_get_policy",
    )
    async def get_policy(policy_id: str) -> Response:
        return _json(_dump(await run_in_threadpool(store.get_policy, policy_id)))

    @router.put(
        "/policies/{policy_id}",
        dependencies=write,
        tags=["policies"],
        responses={200: {"model": PolicyDefinition}},
    )
    async def replace_policy(policy_id: str, policy: PolicyDefinition = Body(...)) -> Response:
        """Replace a policy. Offers using it as contract policy get new ids (the tag changes)."""
        _same_id(policy_id, policy.id)
        return _json(_dump(await run_in_threadpool(store.update_policy, policy)))

    @router.delete("/policies/{policy_id}", status_code=204, dependencies=write, tags=["policies"])
    async def delete_policy(policy_id: str) -> Response:
        """Delete a policy; 409 naming the contract definitions that still use it."""
        await run_in_threadpool(store.delete_policy, policy_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------ contract definitions
    @router.post(
        "/contract-definitions",
        status_code=201,
        dependencies=write,
        tags=["contract-definitions"],
        responses={201: {"model": ContractDefinition}},
    )
    async def create_contract_definition(
        request: Request, definition: ContractDefinition = Body(...)
    ) -> Response:
        """Create a contract definition; 400 if a referenced policy is missing, 409 if the id exists."""
        cd = await run_in_threadpool(store.create_contract_definition, definition)
        return _json(
            _dump(cd),
            201,
            {"Location": str(request.url_for("management_get_contract_definition", definition_id=cd.id))},
        )

    @router.get("/contract-definitions", dependencies=read, tags=["contract-definitions"])
    async def query_contract_definitions(
        request: Request,
        offset: int = offset_q,
        limit: int = limit_q,
        policy_id: str | None = Query(
            None, alias="policyId", description="Only definitions using this policy."
        ),
        q: str | None = Query(None),
    ) -> Response:
        page = await run_in_threadpool(
            lambda: store.query_contract_definitions(offset=offset, limit=limit, policy_id=policy_id, q=q)
        )
        return _page(request, page)

    @router.get(
        "/contract-definitions/{definition_id}",
        dependencies=read,
        tags=["contract-definitions"],
        responses={200: {"model": ContractDefinition}},
        name="management_get_contract_definition",
    )
    async def get_contract_definition(definition_id: str) -> Response:
        return _json(_dump(await run_in_threadpool(store.get_contract_definition, definition_id)))

    @router.put(
        "/contract-definitions/{definition_id}",
        dependencies=write,
        tags=["contract-definitions"],
        responses={200: {"model": ContractDefinition}},
    )
    async def replace_contract_definition(
        definition_id: str, definition: ContractDefinition = Body(...)
    ) -> Response:
        _same_id(definition_id, definition.id)
        return _json(_dump(await run_in_threadpool(store.update_contract_definition, definition)))

    @router.delete(
        "/contract-definitions/{definition_id}",
        status_code=204,
        dependencies=write,
        tags=["contract-definitions"],
    )
    async def delete_contract_definition(definition_id: str) -> Response:
        await run_in_threadpool(store.delete_contract_definition, definition_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------ export
    @router.get(
        "/catalog.ttl",
        dependencies=read,
        tags=["catalog"],
        responses={200: {"content": {"text/turtle": {}}}},
    )
    async def catalog_turtle() -> Response:
        """The whole catalog as DCAT-AP Turtle (public metadata only) for data portals."""
        text = await run_in_threadpool(service.to_turtle)
        return Response(text, media_type="text/turtle; charset=utf-8")

    return router
