"""The compact JSON we emit means what we intend: pyld expands it (offline) to the intended RDF.

No pyld at run time: these tests are the proof that the hand-built compact JSON and the DSP
context agree. A key the context does not define would be dropped silently by expansion; the
"every value survives" test catches that.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import pytest
from catalog_testing import DSP_BASE, PARTICIPANT, schema_errors

import vocab
from catalog import AccessDecision, CatalogService, CatalogStore, Category, category_iri
from connector.identity import Caller
from vocab import ADMS, DCAT, DCT, DQV, DSPACE, FOAF, ODRL, SKOS, XSD

CALLER = Caller(did="did:web:consumer.example")
PREFIXES = {"dct:": str(DCT), "dcat:": str(DCAT), "xsd:": str(XSD), "odrl:": str(ODRL)}
TERMS = {
    "Catalog": DCAT.Catalog,
    "Dataset": DCAT.Dataset,
    "DataService": DCAT.DataService,
    "Distribution": DCAT.Distribution,
    "Offer": ODRL.Offer,
    "use": ODRL.use,
    **{op: ODRL[op] for op in ("eq", "neq", "lt", "lteq", "gt", "gteq", "isAnyOf", "isAllOf", "isNoneOf")},
}


class PermitAll:
    def evaluate(self, policy: Mapping[str, Any], caller: Caller) -> AccessDecision:
        return AccessDecision(True, [])


@pytest.fixture
def catalog_doc(seeded: CatalogStore) -> dict[str, Any]:
    svc = CatalogService(
        seeded, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE, access_evaluator=PermitAll()
    )
    return svc.catalog(CALLER).to_dict()


def _one(node: Mapping[str, Any], iri: str) -> Any:
    values = node.get(iri)
    assert values is not None, f"{iri} missing in {sorted(node)}"
    assert len(values) == 1, values
    return values[0]


def _all(node: Mapping[str, Any], iri: str) -> list[Any]:
    values = node.get(iri)
    assert values is not None, f"{iri} missing in {sorted(node)}"
    return list(values)


def _leaves(doc: Any) -> Iterator[Any]:
    if isinstance(doc, Mapping):
        for k, v in doc.items():
            if k != "@context":
                yield from _leaves(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _leaves(v)
    else:
        yield doc


def _expand_value(v: Any) -> Any:
    if isinstance(v, str):
        for prefix, ns in PREFIXES.items():
            if v.startswith(prefix):
                return ns + v[len(prefix) :]
        return TERMS.get(v, v)
    return v


def test_every_compact_value_survives_expansion(catalog_doc: dict[str, Any]) -> None:
    expanded = vocab.expand(catalog_doc)
    have = set(_leaves(expanded))
    missing = {
        v for v in _leaves(catalog_doc) if _expand_value(v) not in have and str(_expand_value(v)) not in have
    }
    assert missing == set(), f"values dropped by JSON-LD expansion (undefined keys?): {missing}"


def test_catalog_expands_to_the_intended_triples(catalog_doc: dict[str, Any]) -> None:
    assert schema_errors(catalog_doc) == []
    [cat] = vocab.expand(catalog_doc)
    assert cat["@type"] == [DCAT.Catalog]
    assert _one(cat, DSPACE.participantId) == {"@id": PARTICIPANT}
    service = _one(cat, DCAT.service)
    assert service["@type"] == [DCAT.DataService]
    assert _one(service, DCAT.endpointURL) == {"@value": DSP_BASE}
    datasets = {d["@id"]: d for d in _all(cat, DCAT.dataset)}
    ds = datasets["pcf-brake-disc-bd330v"]
    assert ds["@type"] == [DCAT.Dataset]
    assert _one(ds, DCT["title"]) == {"@value": "Product carbon footprint: brake disc BD-330-V"}
    assert {"@value": "pcf"} in _all(ds, DCAT.keyword)
    theme = _one(ds, DCAT.theme)
    assert theme["@id"] == category_iri(Category.CARBON)
    assert theme["@type"] == [SKOS.Concept]
    assert _one(theme, SKOS.inScheme) == {"@id": "https://w3id.org/dadam/category"}
    assert _one(ds, DCT.type) == {"@id": "https://w3id.org/catenax/taxonomy#PcfExchange"}
    publisher = _one(ds, DCT.publisher)
    assert publisher["@id"] == "urn:bpn:BPNL000000000DAD"
    assert _one(publisher, FOAF.name) == {"@value": "Musterwerk Bremsen GmbH"}
    assert _one(ds, DCT.issued) == {"@value": "2026-10-01T08:00:00+00:00", "@type": XSD.dateTime}
    assert _one(ds, DCT.accrualPeriodicity) == {
        "@id": "http://publications.europa.eu/resource/authority/frequency/MONTHLY"
    }
    period = _one(ds, DCT.temporal)
    assert period["@type"] == [DCT.PeriodOfTime]
    assert _one(period, DCAT.startDate) == {"@value": "2026-07-01", "@type": XSD.date}
    assert {"@id": "urn:samm:io.catenax.pcf:7.0.0#Pcf"} in _all(ds, DCT.conformsTo)
    assert _one(ds, DCT.license) == {"@id": "https://creativecommons.org/licenses/by/4.0/"}
    assert _one(ds, DCAT.version) == {"@value": "3.0.0"}
    assert _one(ds, DCT.relation) == {"@id": "production-tracking-line2"}
    assert _one(_one(ds, ADMS.sample), DCT["title"])["@value"].startswith("PCF of one brake disc")
    measures = _all(ds, DQV.hasQualityMeasurement)
    first = measures[0]
    assert first["@type"] == [DQV.QualityMeasurement]
    assert _one(first, DQV.isMeasurementOf) == {"@id": "https://w3id.org/dadam/metric/primaryDataShare"}
    assert _one(first, DQV.value) == {"@value": 64.0}
    assert _one(first, DCT.date) == {"@value": "2026-10-01", "@type": XSD.date}
    offer = _one(ds, ODRL.hasPolicy)
    assert offer["@type"] == [ODRL.Offer]
    assert offer["@id"].startswith("pcf-members:pcf-brake-disc-bd330v:")
    assert _one(offer, ODRL.assigner) == {"@id": PARTICIPANT}
    permission = _one(offer, ODRL.permission)
    assert _one(permission, ODRL.action) == {"@id": ODRL.use}
    logical = _one(permission, ODRL.constraint)
    operands = [_one(c, ODRL.leftOperand)["@id"] for c in _all(logical, ODRL["and"])]
    assert operands == [
        "https://w3id.org/catenax/2025/9/policy/FrameworkAgreement",
        "https://w3id.org/catenax/2025/9/policy/UsagePurpose",
    ]
    dist = _one(ds, DCAT.distribution)
    assert dist["@type"] == [DCAT.Distribution]
    assert _one(dist, DCT["format"]) == {"@id": "HttpData-PULL"}
    access = _one(dist, DCAT.accessService)
    assert access["@id"] == service["@id"] and access["@type"] == [DCAT.DataService]
    assert _one(dist, DCAT.mediaType) == {
        "@id": "https://www.iana.org/assignments/media-types/application/json"
    }
    assert _one(dist, DCAT.byteSize)["@type"] == XSD.nonNegativeInteger
    assert "https://w3id.org/dadam/ns#purpose" in ds


def test_root_dataset_expands_like_the_nested_one(seeded: CatalogStore, catalog_doc: dict[str, Any]) -> None:
    svc = CatalogService(
        seeded, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE, access_evaluator=PermitAll()
    )
    root = orjson.loads(svc.dataset(CALLER, "pcf-brake-disc-bd330v"))
    assert schema_errors(root) == []
    [alone] = vocab.expand(root)
    [cat] = vocab.expand(catalog_doc)
    nested = next(d for d in cat[DCAT.dataset] if d["@id"] == "pcf-brake-disc-bd330v")
    assert alone == nested
