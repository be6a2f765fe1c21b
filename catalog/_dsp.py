"""Compact DSP 2025-1 JSON built straight from the models (no JSON-LD processing at run time).

Terms the DSP context defines are used as is (``hasPolicy``, ``distribution``, ``format``...);
DCAT and Dublin Core metadata use the context's ``dcat:`` / ``dct:`` prefixes; terms of
vocabularies without a prefix there (DQV, SKOS, FOAF, ADMS, dadam) are written as full IRIs.
``tests/catalog/test_jsonld.py`` proves with pyld that this compact JSON expands to the intended
triples. The serialised fragments are cached by :class:`catalog.CatalogService`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from catalog._models import CATEGORY_SCHEME, DADAM_NS, Agent, Dataset, category_iri
from vocab import ADMS, DQV, DSP_CONTEXT, FOAF, SKOS

__all__ = [
    "CONTEXT",
    "IANA_MEDIA_TYPES",
    "data_service",
    "dataset_head",
    "distributions",
    "offer",
    "policy_tag",
]

#: The ``@context`` of every DSP body we emit.
CONTEXT: list[str] = [DSP_CONTEXT]
IANA_MEDIA_TYPES = "https://www.iana.org/assignments/media-types/"

_RULE_KEYS = ("permission", "prohibition", "obligation")
# IRIs used per dataset, resolved once (Namespace attribute access builds a new string each time)
_FOAF_AGENT, _FOAF_NAME = FOAF.Agent, FOAF.name
_SKOS_CONCEPT, _SKOS_PREF_LABEL, _SKOS_IN_SCHEME = SKOS.Concept, SKOS.prefLabel, SKOS.inScheme
_ADMS_SAMPLE = ADMS.sample
_DQV_MEASUREMENT, _DQV_OF, _DQV_VALUE, _DQV_HAS = (
    DQV.QualityMeasurement,
    DQV.isMeasurementOf,
    DQV.value,
    DQV.hasQualityMeasurement,
)
_PURPOSE, _USAGE_NOTE = DADAM_NS + "purpose", DADAM_NS + "usageNote"
_SCHEME_REF = {"@id": CATEGORY_SCHEME}


def _dt(value: datetime) -> dict[str, str]:
    return {"@value": value.isoformat(), "@type": "xsd:dateTime"}


def _d(value: date) -> dict[str, str]:
    return {"@value": value.isoformat(), "@type": "xsd:date"}


def _agent(a: Agent) -> dict[str, Any]:
    return {"@id": a.id, "@type": _FOAF_AGENT, _FOAF_NAME: a.name}


def dataset_head(ds: Dataset) -> dict[str, Any]:
    """The dataset's public metadata as compact JSON (everything but ``hasPolicy`` and ``distribution``)."""
    d: dict[str, Any] = {
        "@id": ds.id,
        "@type": "Dataset",
        "dct:title": ds.title,
        "dct:description": ds.description,
    }
    if ds.keywords:
        d["dcat:keyword"] = list(ds.keywords)
    d["dcat:theme"] = {
        "@id": category_iri(ds.category),
        "@type": _SKOS_CONCEPT,
        _SKOS_PREF_LABEL: ds.category.value,
        _SKOS_IN_SCHEME: _SCHEME_REF,
    }
    if ds.type:
        d["dct:type"] = {"@id": ds.type}
    d["dct:publisher"] = _agent(ds.publisher)
    if ds.creator:
        d["dct:creator"] = _agent(ds.creator)
    if ds.issued:
        d["dct:issued"] = _dt(ds.issued)
    if ds.modified:
        d["dct:modified"] = _dt(ds.modified)
    if ds.accrual_periodicity:
        d["dct:accrualPeriodicity"] = {"@id": ds.accrual_periodicity}
    if ds.temporal:
        period: dict[str, Any] = {"@type": "dct:PeriodOfTime"}
        if ds.temporal.start:
            period["dcat:startDate"] = _d(ds.temporal.start)
        if ds.temporal.end:
            period["dcat:endDate"] = _d(ds.temporal.end)
        d["dct:temporal"] = period
    if ds.spatial:
        d["dct:spatial"] = [{"@id": s} for s in ds.spatial]
    if ds.conforms_to:
        d["dct:conformsTo"] = [{"@id": c} for c in ds.conforms_to]
    if ds.license:
        d["dct:license"] = {"@id": ds.license}
    if ds.version:
        d["dcat:version"] = ds.version
    if ds.purpose:
        d[_PURPOSE] = ds.purpose
    if ds.usage_notes:
        d[_USAGE_NOTE] = ds.usage_notes
    if ds.related:
        d["dct:relation"] = [{"@id": r} for r in ds.related]
    if ds.samples:
        samples = []
        for s in ds.samples:
            sample: dict[str, Any] = {"dct:title": s.title}
            if s.description:
                sample["dct:description"] = s.description
            if s.url:
                sample["dcat:downloadURL"] = {"@id": s.url}
            samples.append(sample)
        d[_ADMS_SAMPLE] = samples
    if ds.quality:
        measures = []
        for q in ds.quality:
            m: dict[str, Any] = {
                "@type": _DQV_MEASUREMENT,
                _DQV_OF: {"@id": q.metric},
                _DQV_VALUE: q.value,
            }
            if q.computed_on:
                m["dct:date"] = _d(q.computed_on)
            measures.append(m)
        d[_DQV_HAS] = measures
    return d


def data_service(service_id: str, endpoint_url: str) -> dict[str, Any]:
    """The DSP DataService of this connector (negotiation and transfer endpoints live under it)."""
    return {"@id": service_id, "@type": "DataService", "endpointURL": endpoint_url}


def distributions(ds: Dataset, service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One Distribution per transfer type; ``accessService`` is the full DataService object.

    (A bare string would be schema-valid too, but the DSP context makes it a literal, not a
    reference to the service; the object form is both schema-valid and the intended RDF.)
    """
    out = []
    for fmt in ds.transfer_types:
        dist: dict[str, Any] = {
            "@type": "Distribution",
            "format": fmt,
            "accessService": dict(service),
            "dcat:mediaType": {"@id": IANA_MEDIA_TYPES + ds.media_type},
        }
        if ds.byte_size is not None:
            dist["dcat:byteSize"] = {"@value": str(ds.byte_size), "@type": "xsd:nonNegativeInteger"}
        out.append(dist)
    return out


def policy_tag(policy: Mapping[str, Any]) -> str:
    """A short hash of a contract policy: the last segment of its offer ids (changes with the policy)."""
    canonical = json.dumps(policy, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def offer(offer_id: str, policy: Mapping[str, Any], assigner: str) -> dict[str, Any]:
    """A catalog Offer: the contract policy's rules with ``@id`` and ``assigner``, never a ``target``."""
    o: dict[str, Any] = {"@id": offer_id, "@type": "Offer", "assigner": assigner}
    if "profile" in policy:
        o["profile"] = policy["profile"]
    for key in _RULE_KEYS:
        if policy.get(key):
            o[key] = policy[key]
    return o
