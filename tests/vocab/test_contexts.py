"""Our shipped contexts mean what the official ones mean, and nothing is ever fetched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyld import jsonld

import vocab

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec"
OFFICIAL = {
    vocab.DSP_CONTEXT: SPEC / "dsp" / "context" / "dspace.jsonld",
    vocab.DSP_ODRL_PROFILE_CONTEXT: SPEC / "dsp" / "context" / "odrl.jsonld",
}


def _official_loader(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    if url not in OFFICIAL:
        raise AssertionError(f"unexpected context fetch: {url}")
    return {
        "contentType": "application/ld+json",
        "contextUrl": None,
        "documentUrl": url,
        "document": json.loads(OFFICIAL[url].read_text()),
    }


def _examples() -> list[Path]:
    found = sorted(
        p
        for area in ("catalog", "negotiation", "transfer")
        for p in (SPEC / "dsp" / area / "example").glob("*.json")
    )
    assert len(found) >= 20, "the DSP examples are missing from ../shared/spec"
    return found


@pytest.mark.parametrize("example", _examples(), ids=lambda p: p.name)
def test_every_dsp_example_expands_identically_with_our_contexts(example: Path) -> None:
    doc = json.loads(example.read_text())
    ours = jsonld.expand(doc, {"documentLoader": vocab.document_loader, "base": None})
    official = jsonld.expand(doc, {"documentLoader": _official_loader, "base": None})
    assert ours == official
    assert ours, "expansion produced nothing: the context did not apply"


@pytest.mark.parametrize("url", sorted(OFFICIAL))
def test_dsp_contexts_define_the_same_terms(url: str) -> None:
    ours = vocab.load_context(url)["@context"]
    official = json.loads(OFFICIAL[url].read_text())["@context"]
    assert ours == official


def test_every_shipped_context_is_valid_json_ld() -> None:
    for url in vocab.CONTEXT_FILES:
        ctx = vocab.load_context(url)
        assert "@context" in ctx, url
        # Processable offline, imports included: a node using it expands with no fetch.
        out = vocab.expand({"@context": url, "@id": "urn:x", "urn:p": 1})
        assert out[0]["urn:p"] == [{"@value": 1}], url


def test_unknown_context_is_refused_not_fetched() -> None:
    with pytest.raises(vocab.ContextNotAvailable, match="never fetched"):
        vocab.load_context("https://example.com/evil-context.jsonld")
    with pytest.raises(jsonld.JsonLdError):
        jsonld.expand(
            {"@context": "https://example.com/evil-context.jsonld", "x": 1},
            {"documentLoader": vocab.document_loader},
        )


def test_load_context_returns_a_private_copy() -> None:
    a = vocab.load_context(vocab.DSP_CONTEXT)
    a["@context"]["dct"] = "changed"
    assert vocab.load_context(vocab.DSP_CONTEXT)["@context"]["dct"] == "http://purl.org/dc/terms/"


def test_namespace_terms() -> None:
    assert vocab.DCAT.Dataset == "http://www.w3.org/ns/dcat#Dataset"
    assert vocab.DSPACE["providerPid"] == "https://w3id.org/dspace/2025/1/providerPid"
    assert vocab.ODRL.local("http://www.w3.org/ns/odrl/2/use") == "use"
    assert vocab.ODRL.local("http://purl.org/dc/terms/title") is None
    compacted = jsonld.compact(
        {"http://purl.org/dc/terms/title": "x"}, {"dct": vocab.DCT}, {"documentLoader": vocab.document_loader}
    )
    assert compacted["dct:title"] == "x"


def test_compact_keeps_context_an_array() -> None:
    expanded = vocab.expand({"@context": [vocab.DSP_CONTEXT], "@type": "CatalogRequestMessage", "filter": []})
    out = vocab.compact(expanded, [vocab.DSP_CONTEXT])
    assert out["@context"] == [vocab.DSP_CONTEXT]
    assert out["@type"] == "CatalogRequestMessage"
