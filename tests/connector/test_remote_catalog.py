"""A consumer reads a provider's catalog over DSP through its management API (in-process peers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from connector_testing import TestClient
from fastapi import FastAPI
from pydantic import SecretStr

from catalog import Category
from catalog.samples import sample_datasets, seed_samples
from connector._dsp_client import DspClient, peer_did_for_address
from connector._remote_api import remote_catalog_router
from connector.api import install_error_handlers
from connector.app import create_app
from connector.runtime import Runtime
from connector.settings import Settings

PROVIDER = "http://provider.test/api/dsp/2025-1"


async def _allow() -> None:
    return None


@pytest.fixture
def provider_app(tmp_path: Path) -> Iterator[FastAPI]:
    settings = Settings(  # type: ignore[call-arg]
        public_url="http://provider.test",
        data_dir=tmp_path / "p",
        database_url=SecretStr(f"sqlite:///{(tmp_path / 'p.db').as_posix()}"),
        catalog_page_size=1,
    )
    rt = Runtime.create(settings)
    seed_samples(rt.catalog_store)
    # a second open supply-chain dataset, so paging has two pages for an unauthenticated caller
    bom = next(d for d in sample_datasets() if d.category == Category.SUPPLY_CHAIN)
    rt.catalog_store.create_dataset(bom.model_copy(update={"id": "bom-second-line"}))
    try:
        yield create_app(runtime=rt)
    finally:
        rt.close()


def _consumer(transport: httpx.AsyncBaseTransport) -> TestClient:
    app = FastAPI()
    install_error_handlers(app, dsp_path="/api/dsp/2025-1")
    app.include_router(remote_catalog_router(DspClient(transport=transport), _allow), prefix="/mgmt")
    return TestClient(app)


def _ids(catalog: dict[str, Any]) -> list[str]:
    return [d["@id"] for d in catalog.get("dataset", [])]


def test_consumer_fetches_every_page_of_the_provider_catalog(provider_app: FastAPI) -> None:
    with _consumer(httpx.ASGITransport(app=provider_app)) as c:
        first = c.post("/mgmt/catalog/request", json={"counterPartyAddress": PROVIDER})
        assert first.status_code == 200, first.text
        assert first.json()["@type"] == "Catalog"
        assert len(_ids(first.json())) == 1  # provider pages by one
        everything = c.post("/mgmt/catalog/request", json={"counterPartyAddress": PROVIDER, "allPages": True})
        assert everything.status_code == 200
        ids = _ids(everything.json())
        assert len(ids) == len(set(ids)) >= 2, ids


def test_consumer_fetches_one_dataset_and_gets_the_providers_reason_for_unknown_ids(
    provider_app: FastAPI,
) -> None:
    with _consumer(httpx.ASGITransport(app=provider_app)) as c:
        ids = _ids(
            c.post("/mgmt/catalog/request", json={"counterPartyAddress": PROVIDER, "allPages": True}).json()
        )
        one = c.post(
            "/mgmt/catalog/dataset/request", json={"counterPartyAddress": PROVIDER, "datasetId": ids[0]}
        )
        assert one.status_code == 200
        assert one.json()["@id"] == ids[0]
        missing = c.post(
            "/mgmt/catalog/dataset/request", json={"counterPartyAddress": PROVIDER, "datasetId": "urn:nope:1"}
        )
        assert missing.status_code == 400
        assert "404" in missing.text
        assert "urn:nope:1" in missing.text  # the provider's own reason is passed on


def test_unreachable_partner_is_a_502_with_the_cause() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _consumer(httpx.MockTransport(down)) as c:
        r = c.post("/mgmt/catalog/request", json={"counterPartyAddress": PROVIDER})
        assert r.status_code == 502
        assert "cannot reach partner" in r.text


def test_partner_answering_something_else_than_a_catalog_is_rejected() -> None:
    def wrong(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"@type": "Dataset", "@id": "x"})

    with _consumer(httpx.MockTransport(wrong)) as c:
        r = c.post("/mgmt/catalog/request", json={"counterPartyAddress": PROVIDER})
        assert r.status_code == 400
        assert "expected 'Catalog'" in r.text


def test_bad_request_body_names_the_missing_field_and_peer_did_is_derived() -> None:
    with _consumer(httpx.MockTransport(lambda r: httpx.Response(500))) as c:
        bad = c.post("/mgmt/catalog/request", json={"address": PROVIDER})
        assert bad.status_code in (400, 422)
        assert "counterPartyAddress" in bad.text
    assert peer_did_for_address("https://p.example.com:8443/api/dsp/2025-1") == "did:web:p.example.com%3A8443"


def test_policy_dry_run_is_mounted_on_the_management_api(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path,
        database_url=SecretStr(f"sqlite:///{(tmp_path / 'x.db').as_posix()}"),
        api_key=SecretStr("k"),
    )
    with TestClient(create_app(settings)) as c:
        policy = {"@type": "Set", "permission": [{"action": "use"}]}
        assert c.post("/api/management/v1/policies/validate", json={"policy": policy}).status_code == 401
        r = c.post(
            "/api/management/v1/policies/validate",
            json={"policy": policy, "profile": "odrl"},
            headers={"X-Api-Key": "k"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["valid"] is True
        # the DID document is served for did:web resolution
        doc = c.get("/.well-known/did.json").json()
        assert doc["id"] == settings.did
