"""DSP catalog endpoints over HTTP: TCK cases MET:01-01, CAT:01-01..03, errors, filters, paging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from catalog_testing import schema_errors
from connector_testing import CTX, DSP, TestClient

import vocab
from catalog import Dataset
from catalog.samples import sample_datasets, seed_tck, tck_dataset_ids
from connector.api import dsp_error_body
from connector.errors import LocalProtocolError, NotFoundError
from connector.identity import Caller
from connector.runtime import Runtime
from vocab import DCAT

REQUEST = {"@context": CTX, "@type": "CatalogRequestMessage"}


@pytest.fixture
def tck_seeded(runtime: Runtime) -> Runtime:
    base = sample_datasets()[2].model_dump()  # supply-chain: offered to everyone by "bom-open"
    for ds_id in ("CAT0101", "CAT0102"):
        base["id"] = ds_id
        runtime.catalog_store.create_dataset(Dataset.model_validate(base))
    return runtime


def test_met_01_01_version_endpoint(client: TestClient) -> None:
    r = client.get("/.well-known/dspace-version")
    assert r.status_code == 200
    body = r.json()
    assert "@context" not in body
    assert schema_errors(body, "version") == []
    [v] = [v for v in body["protocolVersions"] if v["version"] == "2025-1"]
    assert v["path"] == DSP and v["binding"] == "HTTPS"
    assert v["identifierType"] == "did:web" and v["auth"] == {"protocol": "DCP", "version": "1.0"}


def test_cat_01_01_catalog_request_lists_the_dataset(client: TestClient, tck_seeded: Runtime) -> None:
    r = client.post(f"{DSP}/catalog/request", json=REQUEST)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert isinstance(body["@context"], list)
    assert schema_errors(body) == []
    [cat] = vocab.expand(body)
    assert "CAT0101" in {d["@id"] for d in cat[DCAT.dataset]}


def test_cat_01_02_dataset_by_id(client: TestClient, tck_seeded: Runtime) -> None:
    r = client.get(f"{DSP}/catalog/datasets/CAT0102")
    assert r.status_code == 200
    body = r.json()
    assert body["@id"] == "CAT0102" and body["@context"] == CTX
    assert schema_errors(body) == []


def test_cat_01_03_unknown_dataset_is_a_catalog_error(client: TestClient, tck_seeded: Runtime) -> None:
    r = client.get(f"{DSP}/catalog/datasets/CAT0103")
    assert r.status_code == 404
    body = r.json()
    assert body["@type"] == "CatalogError"
    assert schema_errors(body) == []
    assert vocab.expand(body)[0]["@type"] == ["https://w3id.org/dspace/2025/1/CatalogError"]
    assert "CAT0103" in body["reason"][0]


def test_protected_dataset_is_not_found_for_an_anonymous_caller(client: TestClient) -> None:
    r = client.get(f"{DSP}/catalog/datasets/pcf-brake-disc-bd330v")
    assert r.status_code == 404
    assert r.json()["@type"] == "CatalogError"


def _chunks(n: int) -> Iterator[bytes]:
    yield b'{"@context": ["https://w3id.org/dspace/2025/1/context.jsonld"], "x": "'
    for _ in range(n):
        yield b"a" * 1024
    yield b'"}'


BAD_BODIES: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "malformed",
        {"content": b'{"@context": [', "headers": {"content-type": "application/json"}},
        400,
        "malformed JSON",
    ),
    ("empty", {"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty request body"),
    ("not-object", {"json": [REQUEST]}, 400, "must be a JSON object"),
    (
        "wrong-type",
        {"json": {**REQUEST, "@type": "DatasetRequestMessage"}},
        400,
        "@type: expected CatalogRequestMessage",
    ),
    ("missing-type", {"json": {"@context": CTX}}, 400, "@type: missing"),
    ("missing-context", {"json": {"@type": "CatalogRequestMessage"}}, 400, "@context: missing"),
    ("string-context", {"json": {**REQUEST, "@context": CTX[0]}}, 400, "@context: must be an array"),
    (
        "other-context",
        {"json": {**REQUEST, "@context": ["https://w3id.org/dspace/2024/1/context.json"]}},
        400,
        "older DSP version",
    ),
    (
        "dsp-2024-1",
        {"json": {**REQUEST, "@context": "https://w3id.org/dspace/2024/1/context.json"}},
        400,
        "DSP 2024-1 message",
    ),
    ("unknown-context", {"json": {**REQUEST, "@context": ["https://example.org/ctx"]}}, 400, "must contain"),
    (
        "bad-filter",
        {"json": {**REQUEST, "filter": [{"property": "title", "operator": "eq", "value": "x"}]}},
        400,
        "filter[0].property",
    ),
    (
        "filter-not-array",
        {"json": {**REQUEST, "filter": {"property": "id"}}},
        400,
        "filter: must be an array",
    ),
    (
        "content-type",
        {"content": b"{}", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported content type",
    ),
    ("no-content-type", {"content": b"{}"}, 415, "unsupported content type"),
    ("too-large-declared", {"json": {**REQUEST, "pad": "x" * 5000}}, 413, "exceeds the limit of 4096 bytes"),
    (
        "too-large-streamed",
        {"content": _chunks(8), "headers": {"content-type": "application/json"}},
        413,
        "exceeds the limit",
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "reason"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_catalog_requests_get_a_catalog_error(
    client: TestClient, runtime: Runtime, name: str, kwargs: dict[str, Any], status: int, reason: str
) -> None:
    if name == "too-large-streamed":
        kwargs = {**kwargs, "content": _chunks(8)}  # a fresh generator per run
    before = runtime.catalog_store.revision()
    r = client.post(f"{DSP}/catalog/request", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["@type"] == "CatalogError"
    assert schema_errors(body) == []
    assert any(reason in line for line in body["reason"]), body["reason"]
    assert runtime.catalog_store.revision() == before  # nothing changed


@pytest.mark.parametrize(
    ("query", "reason"), [("limit=0", "limit: must be between"), ("offset=x", "offset: not an integer")]
)
def test_bad_paging_is_a_400_catalog_error(client: TestClient, query: str, reason: str) -> None:
    r = client.post(f"{DSP}/catalog/request?{query}", json=REQUEST)
    assert r.status_code == 400
    assert any(reason in line for line in r.json()["reason"])


def test_filter_and_link_header_paging(client: TestClient, tck_seeded: Runtime) -> None:
    flt = {**REQUEST, "filter": [{"property": "category", "operator": "eq", "value": "supply-chain"}]}
    r = client.post(f"{DSP}/catalog/request?limit=2", json=flt)
    assert r.status_code == 200
    assert [d["@id"] for d in r.json()["dataset"]] == ["CAT0101", "CAT0102"]
    nxt = r.links["next"]["url"]
    assert "offset=2" in nxt and "limit=2" in nxt
    assert "prev" not in r.links
    r2 = client.post(nxt, json=flt)
    assert [d["@id"] for d in r2.json()["dataset"]] == ["bom-brake-assembly-as-built"]
    assert "next" not in r2.links
    assert r2.links["prev"]["url"] == r2.links["previous"]["url"]
    assert "offset=0" in r2.links["prev"]["url"]
    none = client.post(
        f"{DSP}/catalog/request",
        json={**REQUEST, "filter": [{"property": "id", "operator": "eq", "value": "x"}]},
    )
    assert none.status_code == 200 and "dataset" not in none.json()
    assert schema_errors(none.json()) == []


def test_unknown_dsp_route_answers_with_a_catalog_error(client: TestClient) -> None:
    r = client.get(f"{DSP}/nothing-here")
    assert r.status_code == 404
    assert r.json()["@type"] == "CatalogError"


def test_dsp_error_bodies_for_negotiation_and_transfer_validate() -> None:
    exc = LocalProtocolError(
        "ACCEPTED is not allowed in REQUESTED",
        context={"providerPid": "urn:uuid:p", "consumerPid": "urn:uuid:c"},
    )
    cn = dsp_error_body("negotiation", exc)
    assert cn["@type"] == "ContractNegotiationError"
    assert (cn["providerPid"], cn["consumerPid"], cn["code"]) == ("urn:uuid:p", "urn:uuid:c", "protocol")
    assert schema_errors(cn) == []
    tp = dsp_error_body("transfer", NotFoundError("no such transfer", context={"consumer_pid": "c1"}))
    assert tp["@type"] == "TransferError"
    assert (tp["providerPid"], tp["consumerPid"]) == ("unknown", "c1")
    assert schema_errors(tp) == []
    assert vocab.expand(tp)[0]["@type"] == ["https://w3id.org/dspace/2025/1/TransferError"]
    boom = dsp_error_body("catalog", RuntimeError("secret detail"))
    assert boom["reason"] == ["internal error"] and "secret" not in str(boom)
    with pytest.raises(ValueError, match="unknown DSP area"):
        dsp_error_body("bank", exc)


def test_tck_seed_serves_the_tck_catalog_and_offer_ids(client: TestClient, runtime: Runtime) -> None:
    seed_tck(runtime.catalog_store)
    seed_tck(runtime.catalog_store)  # idempotent
    ids = {d["@id"] for d in client.post(f"{DSP}/catalog/request?limit=100", json=REQUEST).json()["dataset"]}
    assert set(tck_dataset_ids()) <= ids
    assert "CAT0103" not in ids
    assert client.get(f"{DSP}/catalog/datasets/CAT0103").status_code == 404
    resolved = runtime.catalog.resolve_offer("CD123:ACN0304:456", Caller(did="did:web:tck"))
    assert resolved.dataset.id == "ACN0304"
    assert resolved.offer_policy_json["@id"] == "CD123:ACN0304:456"
