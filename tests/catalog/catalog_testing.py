"""Test helpers shared by catalog and connector tests: constants and offline validators for the official DSP 2025-1 JSON schemas in ../shared/spec/dsp.

The schemas' ``$id``s are ``https://w3id.org/dspace/2025/1/<path>``; we resolve them from the spec
folder. Three transfer schemas reference ``#definitions/...`` (missing ``/``; spec README defect 1):
rewritten to ``#/definitions/...`` when loading.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft201909Validator
from referencing import Registry, Resource

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec"
DSP = SPEC / "dsp"
PREFIX = "https://w3id.org/dspace/2025/1/"

PARTICIPANT = "did:web:provider.example"
DSP_BASE = "https://provider.example/api/dsp/2025-1"

#: ``@type`` of a body -> its schema path under shared/spec/dsp
SCHEMAS = {
    "Catalog": "catalog/catalog-schema.json",
    "Dataset": "catalog/dataset-schema.json",
    "CatalogError": "catalog/catalog-error-schema.json",
    "CatalogRequestMessage": "catalog/catalog-request-message-schema.json",
    "ContractNegotiationError": "negotiation/contract-negotiation-error-schema.json",
    "TransferError": "transfer/transfer-error-schema.json",
    "TransferProcess": "transfer/transfer-process-schema.json",
    "TransferStartMessage": "transfer/transfer-start-message-schema.json",
    "TransferRequestMessage": "transfer/transfer-request-message-schema.json",
    "version": "common/protocol-version-schema.json",
}


def _load(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8").replace("#definitions/", "#/definitions/")
    doc: dict[str, Any] = json.loads(text)
    return doc


@cache
def registry() -> Registry:
    resources = []
    for path in DSP.glob("*/*-schema.json"):
        doc = _load(path)
        resources.append((doc["$id"], Resource.from_contents(doc)))
    assert len(resources) >= 20, f"DSP schemas missing under {DSP}"
    return Registry().with_resources(resources)


def validator(kind: str) -> Draft201909Validator:
    schema = _load(DSP / SCHEMAS[kind])
    return Draft201909Validator(schema, registry=registry())


def schema_errors(body: Any, kind: str | None = None) -> list[str]:
    """Every schema violation of ``body`` (validated against the schema for its ``@type``)."""
    kind = kind or body["@type"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(kind).iter_errors(body)]
