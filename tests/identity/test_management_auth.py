"""Management API auth: X-Api-Key, and OAuth2 client-credentials tokens with read/write scopes."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator

import pytest
from fastapi import Depends, FastAPI
from pydantic import SecretStr

from connector.api import install_error_handlers
from connector.identity import READ_SCOPE, WRITE_SCOPE, ManagementAuth, oauth_router
from connector.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SECRET = "client-secret-for-tests"


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(api_key=SecretStr("the-key"), oauth_client_secret=SecretStr(SECRET))  # type: ignore[call-arg]
    auth = ManagementAuth(settings)
    app = FastAPI()
    install_error_handlers(app, dsp_path="/dsp")
    app.include_router(oauth_router(auth), prefix="/mgmt")

    @app.get("/mgmt/thing", dependencies=[Depends(auth.require_read)])
    async def read() -> dict[str, str]:
        return {"ok": "read"}

    @app.post("/mgmt/thing", dependencies=[Depends(auth.require_write)])
    async def write() -> dict[str, str]:
        return {"ok": "write"}

    with TestClient(app) as c:
        yield c


def _token(c: TestClient, scope: str | None = None, *, basic: bool = True, secret: str = SECRET) -> object:
    data = {"grant_type": "client_credentials"}
    headers = {}
    if scope:
        data["scope"] = scope
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(f"dadam-admin:{secret}".encode()).decode()
    else:
        data |= {"client_id": "dadam-admin", "client_secret": secret}
    return c.post("/mgmt/oauth/token", data=data, headers=headers)


def test_api_key_grants_read_and_write(client: TestClient) -> None:
    assert client.get("/mgmt/thing", headers={"X-Api-Key": "the-key"}).status_code == 200
    assert client.post("/mgmt/thing", headers={"X-Api-Key": "the-key"}).status_code == 200
    wrong = client.get("/mgmt/thing", headers={"X-Api-Key": "nope"})
    assert wrong.status_code == 401
    assert "invalid API key" in wrong.text
    assert client.get("/mgmt/thing").status_code == 401


@pytest.mark.parametrize("basic", [True, False])
def test_client_credentials_token_with_scopes(client: TestClient, basic: bool) -> None:
    resp = _token(client, READ_SCOPE, basic=basic)
    assert resp.status_code == 200  # type: ignore[attr-defined]
    body = resp.json()  # type: ignore[attr-defined]
    assert body["token_type"] == "Bearer"
    assert body["scope"] == READ_SCOPE
    bearer = {"Authorization": "Bearer " + body["access_token"]}
    assert client.get("/mgmt/thing", headers=bearer).status_code == 200
    forbidden = client.post("/mgmt/thing", headers=bearer)
    assert forbidden.status_code == 403
    assert WRITE_SCOPE in forbidden.text
    full = _token(client).json()["access_token"]  # type: ignore[attr-defined]
    assert client.post("/mgmt/thing", headers={"Authorization": "Bearer " + full}).status_code == 200


def test_token_endpoint_refuses_bad_requests(client: TestClient) -> None:
    bad_secret = _token(client, secret="wrong")
    assert bad_secret.status_code == 401  # type: ignore[attr-defined]
    assert bad_secret.json()["error"] == "invalid_client"  # type: ignore[attr-defined]
    bad_scope = _token(client, "admin:everything")
    assert bad_scope.status_code == 400  # type: ignore[attr-defined]
    assert bad_scope.json()["error"] == "invalid_scope"  # type: ignore[attr-defined]
    grant = client.post("/mgmt/oauth/token", data={"grant_type": "password"})
    assert grant.json()["error"] == "unsupported_grant_type"
    forged = client.get("/mgmt/thing", headers={"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"})
    assert forged.status_code == 401


def test_token_endpoint_disabled_without_secret() -> None:
    auth = ManagementAuth(Settings())  # type: ignore[call-arg]
    assert not auth.token_endpoint_enabled
