"""App factory: lifespan runs and stops workers; defaults are fail-closed; dependencies can be replaced."""

from __future__ import annotations

import asyncio
from pathlib import Path

from catalog_testing import schema_errors
from connector_testing import CTX, DSP, MGMT, TestClient
from fastapi import Request
from pydantic import SecretStr

from catalog.samples import seed_samples
from connector.api import ApiKeyAuth
from connector.app import create_app
from connector.errors import AuthError
from connector.identity import Caller
from connector.runtime import Runtime
from connector.settings import Settings


def test_workers_start_with_the_app_and_are_cancelled_at_shutdown(runtime: Runtime) -> None:
    events: list[str] = []

    async def worker() -> None:
        events.append("started")
        try:
            await asyncio.Event().wait()
        finally:
            events.append("stopped")

    runtime.workers.append(worker)
    with TestClient(create_app(runtime=runtime)) as c:
        assert c.get("/.well-known/dspace-version").status_code == 200
        assert events == ["started"]
    assert events == ["started", "stopped"]


def test_create_app_from_settings_owns_its_runtime(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dsp_path="/dsp", management_path="/admin")
    app = create_app(settings, management_auth=ApiKeyAuth(settings))
    with TestClient(app) as c:
        r = c.get("/.well-known/dspace-version")
        assert r.json()["protocolVersions"][0]["path"] == "/dsp"
        r = c.post("/dsp/catalog/request", json={"@context": CTX, "@type": "CatalogRequestMessage"})
        if app.state.runtime.identity is None:
            assert r.status_code == 200
            assert r.json()["service"][0]["endpointURL"] == "http://127.0.0.1:8181/dsp"
        else:  # identity wired: a DSP request without a DCP token is refused, with a CatalogError
            assert r.status_code == 401
            assert r.json()["@type"] == "CatalogError"
            assert schema_errors(r.json()) == []
        # no DADAM_API_KEY: the fallback management auth refuses everything
        r = c.get("/admin/datasets", headers={"X-Api-Key": ""})
        assert r.status_code == 401
        assert "no DADAM_API_KEY is configured" in r.json()["message"]
    assert (tmp_path / "dadam.db").exists()


def test_injected_caller_and_auth_dependencies_are_used(settings: Settings) -> None:
    rt = Runtime.create(settings)
    seed_samples(rt.catalog_store)
    seen: list[str] = []

    async def caller(request: Request) -> Caller:
        token = request.headers.get("authorization")
        if token != "Bearer good":
            raise AuthError("bad token")
        seen.append(token)
        return Caller(did="did:web:partner.example", claims={"memberships": ["catena-x"]})

    class OpenAuth:
        async def require_read(self) -> None:
            seen.append("read")

        async def require_write(self) -> None:
            seen.append("write")

    try:
        with TestClient(create_app(runtime=rt, dsp_caller=caller, management_auth=OpenAuth())) as c:
            msg = {"@context": CTX, "@type": "CatalogRequestMessage"}
            r = c.post(f"{DSP}/catalog/request", json=msg)
            assert r.status_code == 401 and r.json()["@type"] == "CatalogError"
            r = c.post(f"{DSP}/catalog/request", json=msg, headers={"Authorization": "Bearer good"})
            assert r.status_code == 200
            # the member sees the member-only datasets through the usage_policy engine
            assert len(r.json()["dataset"]) == 3
            assert c.get(f"{MGMT}/policies").status_code == 200
        assert seen == ["Bearer good", "read"]
    finally:
        rt.close()


def test_settings_secret_is_not_in_openapi(client: TestClient) -> None:
    assert "test-key-123" not in client.get("/openapi.json").text


def test_app_on_both_backends(tmp_path: Path, db_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=SecretStr(db_url), api_key=SecretStr("k"))
    rt = Runtime.create(settings)
    try:
        seed_samples(rt.catalog_store)
        with TestClient(create_app(runtime=rt)) as c:
            policy = {"id": "p", "policy": {"permission": [{"action": "use"}]}}
            assert c.post(f"{MGMT}/policies", json=policy, headers={"X-Api-Key": "k"}).status_code == 201
            r = c.post(f"{DSP}/catalog/request", json={"@context": CTX, "@type": "CatalogRequestMessage"})
            assert r.status_code == 200
            assert [d["@id"] for d in r.json()["dataset"]] == ["bom-brake-assembly-as-built"]
    finally:
        rt.close()


def test_unexpected_errors_are_500_without_details(runtime: Runtime) -> None:
    app = create_app(runtime=runtime)

    @app.get(f"{DSP}/negotiations/boom")
    async def boom() -> None:
        raise RuntimeError("database password is hunter2")

    @app.get(f"{MGMT}/boom")
    async def boom2() -> None:
        raise RuntimeError("database password is hunter2")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get(f"{DSP}/negotiations/boom")
        assert r.status_code == 500
        body = r.json()
        assert body["@type"] == "ContractNegotiationError"
        assert body["reason"] == ["internal error"]
        r = c.get(f"{MGMT}/boom")
        assert r.status_code == 500
        assert r.json() == {"error": "internal", "message": "internal error", "details": []}
        assert "hunter2" not in r.text
        r = c.put(f"{DSP}/catalog/request", json={})
        assert r.status_code == 405 and r.json()["@type"] == "CatalogError"
        assert "POST" in r.headers["allow"]
