"""Management API: CRUD + paged queries for datasets, policies, contract definitions; auth; errors."""

from __future__ import annotations

from typing import Any

import pytest
from connector_testing import API_KEY, MGMT, TestClient

from catalog.samples import sample_datasets
from connector.api import ApiKeyAuth
from connector.app import create_app
from connector.runtime import Runtime


def _dataset_json(ds_id: str = "new-dataset", **kw: Any) -> dict[str, Any]:
    body = sample_datasets()[2].model_dump(mode="json")
    body.update({"id": ds_id, **kw})
    return body


def test_requests_without_a_valid_key_are_refused(client: TestClient, runtime: Runtime) -> None:
    before = runtime.catalog_store.revision()
    r = client.get(f"{MGMT}/datasets")
    assert r.status_code == 401
    assert set(r.json()) >= {"error", "message", "details"}
    assert client.get(f"{MGMT}/datasets", headers={"X-Api-Key": "wrong"}).status_code == 401
    r = client.post(f"{MGMT}/datasets", json=_dataset_json(), headers={"X-Api-Key": "wrong"})
    assert r.status_code == 401
    assert runtime.catalog_store.revision() == before


def test_fallback_api_key_auth(runtime: Runtime) -> None:
    app = create_app(runtime=runtime, management_auth=ApiKeyAuth(runtime.settings))
    with TestClient(app) as c:
        r = c.get(f"{MGMT}/datasets")
        assert r.status_code == 401
        assert r.json() == {"error": "unauthorized", "message": "missing X-Api-Key header", "details": []}
        r = c.get(f"{MGMT}/datasets", headers={"X-Api-Key": "wrong"})
        assert r.json()["message"] == "invalid API key"
        assert c.get(f"{MGMT}/datasets", headers={"X-Api-Key": API_KEY}).status_code == 200


def test_dataset_crud(client: TestClient, auth: dict[str, str], runtime: Runtime) -> None:
    r = client.post(f"{MGMT}/datasets", json=_dataset_json(), headers=auth)
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith(f"{MGMT}/datasets/new-dataset")
    assert r.json()["data_address"]["type"] == "file"  # the provider's own view includes the address
    got = client.get(f"{MGMT}/datasets/new-dataset", headers=auth).json()
    assert got == r.json()
    assert client.post(f"{MGMT}/datasets", json=_dataset_json(), headers=auth).status_code == 409
    r = client.put(f"{MGMT}/datasets/new-dataset", json=_dataset_json(title="Renamed"), headers=auth)
    assert r.status_code == 200 and r.json()["title"] == "Renamed"
    r = client.put(f"{MGMT}/datasets/other", json=_dataset_json(), headers=auth)
    assert r.status_code == 400
    assert r.json()["details"] == ["body.id: 'new-dataset' does not match the path id 'other'"]
    assert client.put(f"{MGMT}/datasets/nope", json=_dataset_json("nope"), headers=auth).status_code == 404
    assert client.delete(f"{MGMT}/datasets/new-dataset", headers=auth).status_code == 204
    r = client.get(f"{MGMT}/datasets/new-dataset", headers=auth)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


def test_dataset_ids_with_colons_and_slashes(client: TestClient, auth: dict[str, str]) -> None:
    ds_id = "urn:dadam:pcf/2026/bd-330"
    assert client.post(f"{MGMT}/datasets", json=_dataset_json(ds_id), headers=auth).status_code == 201
    assert client.get(f"{MGMT}/datasets/{ds_id}", headers=auth).json()["id"] == ds_id


def test_validation_lists_every_problem_with_its_path(
    client: TestClient, auth: dict[str, str], runtime: Runtime
) -> None:
    before = runtime.catalog_store.revision()
    bad = _dataset_json("has space", category="weather", publisher={"id": "nope"})
    del bad["title"]
    r = client.post(f"{MGMT}/datasets", json=bad, headers=auth)
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid"
    details = body["details"]
    for path in ("body.id:", "body.title:", "body.category:", "body.publisher.id:", "body.publisher.name:"):
        assert any(d.startswith(path) for d in details), (path, details)
    assert runtime.catalog_store.revision() == before


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        ({"content": b"{}", "headers": {"content-type": "text/plain"}}, 415),
        (
            {"content": b'{"id": "' + b"x" * 5000 + b'"}', "headers": {"content-type": "application/json"}},
            413,
        ),
    ],
)
def test_bad_bodies(client: TestClient, auth: dict[str, str], kwargs: dict[str, Any], status: int) -> None:
    headers = {**auth, **kwargs.pop("headers")}
    r = client.post(f"{MGMT}/datasets", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert set(r.json()) >= {"error", "message", "details"}


def test_query_paging_and_filters(client: TestClient, auth: dict[str, str]) -> None:
    for i in range(5):
        client.post(f"{MGMT}/datasets", json=_dataset_json(f"bulk-{i}", keywords=["bulk"]), headers=auth)
    r = client.get(f"{MGMT}/datasets", params={"keyword": "bulk", "limit": 2}, headers=auth)
    body = r.json()
    assert body["total"] == 5 and [d["id"] for d in body["items"]] == ["bulk-0", "bulk-1"]
    assert body["next"] == r.links["next"]["url"]
    page3 = client.get(body["next"], headers=auth).json()
    page3 = client.get(page3["next"], headers=auth).json()
    assert [d["id"] for d in page3["items"]] == ["bulk-4"] and page3["next"] is None
    assert client.get(f"{MGMT}/datasets", params={"category": "carbon"}, headers=auth).json()["total"] == 1
    assert client.get(f"{MGMT}/datasets", params={"q": "PRODUCTION"}, headers=auth).json()["total"] == 1
    conforms = "urn:samm:io.catenax.pcf:7.0.0#Pcf"
    assert client.get(f"{MGMT}/datasets", params={"conformsTo": conforms}, headers=auth).json()["total"] == 1
    r = client.get(f"{MGMT}/datasets", params={"category": "weather", "limit": 0}, headers=auth)
    assert r.status_code == 400
    assert len(r.json()["details"]) == 2


def test_policies_and_contract_definitions(client: TestClient, auth: dict[str, str]) -> None:
    policy = {"id": "gold", "policy": {"permission": [{"action": "use"}]}}
    assert client.post(f"{MGMT}/policies", json=policy, headers=auth).status_code == 201
    r = client.post(
        f"{MGMT}/policies", json={"id": "broken", "policy": {"permission": [{}], "target": "x"}}, headers=auth
    )
    assert r.status_code == 400
    assert (
        "body.policy: policy.permission[0].action: required, a string such as 'use' or 'access'"
        in r.json()["details"]
    )
    assert (
        "body.policy: policy.target: not allowed; the catalog sets the dataset as target"
        in r.json()["details"]
    )
    cd = {
        "id": "gold-cd",
        "access_policy_id": "gold",
        "contract_policy_id": "gold",
        "selector": {"keywords": ["bom"]},
    }
    r = client.post(f"{MGMT}/contract-definitions", json=cd, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["accept_any_offer_tag"] is False
    missing = {**cd, "id": "x", "contract_policy_id": "nope"}
    r = client.post(f"{MGMT}/contract-definitions", json=missing, headers=auth)
    assert r.status_code == 400
    assert r.json()["details"] == ["contract_policy_id: policy 'nope' does not exist"]
    r = client.delete(f"{MGMT}/policies/gold", headers=auth)
    assert r.status_code == 409
    assert "gold-cd" in r.json()["message"]
    assert r.json()["context"]["contractDefinitionIds"] == ["gold-cd"]
    r = client.get(f"{MGMT}/contract-definitions", params={"policyId": "gold"}, headers=auth)
    assert [c["id"] for c in r.json()["items"]] == ["gold-cd"]
    r = client.put(
        f"{MGMT}/policies/gold",
        json={"id": "gold", "policy": {"permission": [{"action": "use"}], "profile": "urn:x"}},
        headers=auth,
    )
    assert r.status_code == 200
    assert client.get(f"{MGMT}/policies/gold", headers=auth).json()["policy"]["profile"] == "urn:x"
    assert client.delete(f"{MGMT}/contract-definitions/gold-cd", headers=auth).status_code == 204
    assert client.delete(f"{MGMT}/policies/gold", headers=auth).status_code == 204
    assert client.get(f"{MGMT}/policies", params={"q": "gold"}, headers=auth).json()["total"] == 0


def test_catalog_turtle_export_and_openapi(client: TestClient, auth: dict[str, str]) -> None:
    r = client.get(f"{MGMT}/catalog.ttl", headers=auth)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/turtle")
    assert "dcat:Dataset" in r.text
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/datasets", "/datasets/{dataset_id}", "/policies", "/contract-definitions", "/catalog.ttl"):
        assert f"{MGMT}{p}" in paths, sorted(paths)
    assert "Dataset" in spec["components"]["schemas"]
