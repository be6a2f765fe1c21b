"""DCAT-AP export of the catalog as an rdflib graph (built from the models, not by parsing JSON-LD).

For data portals: public metadata only (no data addresses, no policies). Dataset ids that are not
absolute IRIs become ``<dsp base>/catalog/datasets/<id>`` (where the DSP dataset endpoint serves
them); the id itself is kept as ``dct:identifier``. ``catalog/shapes/dcat-ap-dadam.ttl`` states what
each dataset must carry; :func:`validate_graph` checks a graph against it with pyshacl.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any
from urllib.parse import quote

from rdflib import BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, SKOS, XSD

from catalog._dsp import IANA_MEDIA_TYPES
from catalog._models import CATEGORY_SCHEME, DADAM_NS, Agent, Category, Dataset, category_iri

__all__ = ["SHAPES_FILE", "catalog_graph", "dataset_iri", "shapes_graph", "validate_graph"]

ADMS = Namespace("http://www.w3.org/ns/adms#")
DQV = Namespace("http://www.w3.org/ns/dqv#")
DADAM = Namespace(DADAM_NS)
SHAPES_FILE = "dcat-ap-dadam.ttl"
#: DCAT 3 term missing from rdflib's closed DCAT namespace.
DCAT_VERSION = URIRef(str(DCAT) + "version")


def _is_iri(value: str) -> bool:
    scheme, sep, _ = value.partition(":")
    return bool(sep) and scheme.isascii() and scheme[:1].isalpha() and "/" not in scheme


def dataset_iri(dataset_id: str, dsp_base_url: str) -> URIRef:
    """The IRI a dataset has in RDF exports."""
    if _is_iri(dataset_id):
        return URIRef(dataset_id)
    return URIRef(f"{dsp_base_url}/catalog/datasets/{quote(dataset_id, safe='')}")


def _agent(g: Graph, a: Agent) -> URIRef:
    node = URIRef(a.id)
    g.add((node, RDF.type, FOAF.Agent))
    g.add((node, FOAF.name, Literal(a.name)))
    return node


def catalog_graph(
    datasets: Sequence[Dataset],
    *,
    catalog_id: str,
    title: str,
    participant_id: str,
    service: Mapping[str, Any],
) -> Graph:
    """A DCAT-AP graph of ``datasets`` in one ``dcat:Catalog`` served by the DSP ``service``."""
    g = Graph()
    g.bind("dcat", DCAT)
    g.bind("dct", DCTERMS)
    g.bind("foaf", FOAF)
    g.bind("skos", SKOS)
    g.bind("adms", ADMS)
    g.bind("dqv", DQV)
    g.bind("dadam", DADAM)
    endpoint = str(service["endpointURL"])
    cat = URIRef(catalog_id)
    g.add((cat, RDF.type, DCAT.Catalog))
    g.add((cat, DCTERMS.title, Literal(title)))
    g.add(
        (
            cat,
            DCTERMS.description,
            Literal(f"Datasets offered over the Dataspace Protocol 2025-1 at {endpoint}"),
        )
    )
    publisher = URIRef(participant_id)
    g.add((publisher, RDF.type, FOAF.Agent))
    g.add((publisher, FOAF.name, Literal(participant_id)))
    g.add((cat, DCTERMS.publisher, publisher))
    svc = URIRef(str(service["@id"]))
    g.add((svc, RDF.type, DCAT.DataService))
    g.add((svc, DCTERMS.title, Literal("Dataspace Protocol 2025-1 endpoint")))
    g.add((svc, DCAT.endpointURL, URIRef(endpoint)))
    g.add((svc, DCTERMS.conformsTo, URIRef("https://w3id.org/dspace/2025/1/")))
    g.add((cat, DCAT.service, svc))
    scheme = URIRef(CATEGORY_SCHEME)
    g.add((cat, DCAT.themeTaxonomy, scheme))
    g.add((scheme, RDF.type, SKOS.ConceptScheme))
    g.add((scheme, DCTERMS.title, Literal("dadam dataset categories")))
    for c in Category:
        concept = URIRef(category_iri(c))
        g.add((concept, RDF.type, SKOS.Concept))
        g.add((concept, SKOS.prefLabel, Literal(c.value, lang="en")))
        g.add((concept, SKOS.inScheme, scheme))
    for ds in datasets:
        node = dataset_iri(ds.id, endpoint)
        g.add((cat, DCAT.dataset, node))
        g.add((svc, DCAT.servesDataset, node))
        _dataset(g, node, ds, svc, endpoint)
    return g


def _dataset(g: Graph, node: URIRef, ds: Dataset, svc: URIRef, endpoint: str) -> None:
    g.add((node, RDF.type, DCAT.Dataset))
    g.add((node, DCTERMS.identifier, Literal(ds.id)))
    g.add((node, DCTERMS.title, Literal(ds.title)))
    g.add((node, DCTERMS.description, Literal(ds.description)))
    for k in ds.keywords:
        g.add((node, DCAT.keyword, Literal(k)))
    g.add((node, DCAT.theme, URIRef(category_iri(ds.category))))
    if ds.type:
        g.add((node, DCTERMS.type, URIRef(ds.type)))
    g.add((node, DCTERMS.publisher, _agent(g, ds.publisher)))
    if ds.creator:
        g.add((node, DCTERMS.creator, _agent(g, ds.creator)))
    if ds.issued:
        g.add((node, DCTERMS.issued, Literal(ds.issued.isoformat(), datatype=XSD.dateTime)))
    if ds.modified:
        g.add((node, DCTERMS.modified, Literal(ds.modified.isoformat(), datatype=XSD.dateTime)))
    if ds.accrual_periodicity:
        g.add((node, DCTERMS.accrualPeriodicity, URIRef(ds.accrual_periodicity)))
    if ds.temporal:
        period = BNode()
        g.add((node, DCTERMS.temporal, period))
        g.add((period, RDF.type, DCTERMS.PeriodOfTime))
        if ds.temporal.start:
            g.add((period, DCAT.startDate, Literal(ds.temporal.start.isoformat(), datatype=XSD.date)))
        if ds.temporal.end:
            g.add((period, DCAT.endDate, Literal(ds.temporal.end.isoformat(), datatype=XSD.date)))
    for place in ds.spatial:
        g.add((node, DCTERMS.spatial, URIRef(place)))
    for c in ds.conforms_to:
        g.add((node, DCTERMS.conformsTo, URIRef(c)))
    if ds.version:
        g.add((node, DCAT_VERSION, Literal(ds.version)))
    if ds.purpose:
        g.add((node, DADAM.purpose, Literal(ds.purpose)))
    if ds.usage_notes:
        g.add((node, DADAM.usageNote, Literal(ds.usage_notes)))
    for r in ds.related:
        g.add((node, DCTERMS.relation, dataset_iri(r, endpoint)))
    for s in ds.samples:
        sample = BNode()
        g.add((node, ADMS.sample, sample))
        g.add((sample, RDF.type, DCAT.Distribution))
        g.add((sample, DCTERMS.title, Literal(s.title)))
        if s.description:
            g.add((sample, DCTERMS.description, Literal(s.description)))
        if s.url:
            g.add((sample, DCAT.downloadURL, URIRef(s.url)))
            g.add((sample, DCAT.accessURL, URIRef(s.url)))
    for q in ds.quality:
        m = BNode()
        g.add((node, DQV.hasQualityMeasurement, m))
        g.add((m, RDF.type, DQV.QualityMeasurement))
        g.add((m, DQV.isMeasurementOf, URIRef(q.metric)))
        g.add((m, DQV.value, Literal(q.value)))
        if q.computed_on:
            g.add((m, DCTERMS.date, Literal(q.computed_on.isoformat(), datatype=XSD.date)))
    for fmt in ds.transfer_types:
        dist = BNode()
        g.add((node, DCAT.distribution, dist))
        g.add((dist, RDF.type, DCAT.Distribution))
        g.add((dist, DCTERMS.format, Literal(fmt)))
        g.add((dist, DCAT.accessURL, URIRef(endpoint)))
        g.add((dist, DCAT.accessService, svc))
        g.add((dist, DCAT.mediaType, URIRef(IANA_MEDIA_TYPES + ds.media_type)))
        if ds.byte_size is not None:
            g.add((dist, DCAT.byteSize, Literal(ds.byte_size, datatype=XSD.nonNegativeInteger)))
        if ds.license:
            g.add((dist, DCTERMS.license, URIRef(ds.license)))


def shapes_graph() -> Graph:
    """The SHACL shapes of dadam's DCAT-AP profile (``catalog/shapes/dcat-ap-dadam.ttl``)."""
    text = resources.files("catalog").joinpath("shapes", SHAPES_FILE).read_text(encoding="utf-8")
    return Graph().parse(data=text, format="turtle")


def validate_graph(graph: Graph) -> tuple[bool, str]:
    """SHACL-validate ``graph`` against our shapes: (conforms, readable report)."""
    from pyshacl import validate

    conforms, _report_graph, report_text = validate(
        graph, shacl_graph=shapes_graph(), inference="none", advanced=False, allow_warnings=False
    )
    return bool(conforms), str(report_text)
