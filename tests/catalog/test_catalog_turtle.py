"""DCAT-AP Turtle export: parses, carries the metadata, conforms to our SHACL shapes; gaps are explained."""

from __future__ import annotations

from catalog_testing import DSP_BASE
from rdflib import Graph, Literal, URIRef
from rdflib.namespace import DCAT, DCTERMS, RDF

from catalog import CatalogService
from catalog._turtle import dataset_iri, validate_graph


def test_export_parses_and_conforms(service: CatalogService) -> None:
    text = service.to_turtle()
    g = Graph().parse(data=text, format="turtle")
    datasets = set(g.subjects(RDF.type, DCAT.Dataset))
    assert len(datasets) == 3  # the whole catalog, whatever the access policies say
    pcf = dataset_iri("pcf-brake-disc-bd330v", DSP_BASE)
    assert pcf in datasets
    assert (pcf, DCTERMS.identifier, Literal("pcf-brake-disc-bd330v")) in g
    assert (pcf, DCTERMS.conformsTo, URIRef("urn:samm:io.catenax.pcf:7.0.0#Pcf")) in g
    assert (pcf, DCAT.theme, URIRef("https://w3id.org/dadam/category/carbon")) in g
    assert "sample_data" not in text  # the private data address never leaves the provider
    conforms, report = validate_graph(g)
    assert conforms, report


def test_missing_title_fails_with_a_readable_message(service: CatalogService) -> None:
    g = Graph().parse(data=service.to_turtle(), format="turtle")
    pcf = dataset_iri("pcf-brake-disc-bd330v", DSP_BASE)
    g.remove((pcf, DCTERMS.title, None))
    conforms, report = validate_graph(g)
    assert not conforms
    assert "A dataset needs a non-empty title (dct:title)." in report
    assert str(pcf) in report


def test_missing_distribution_format_and_publisher_name_fail(service: CatalogService) -> None:
    g = Graph().parse(data=service.to_turtle(), format="turtle")
    for dist in list(g.objects(None, DCAT.distribution)):
        g.remove((dist, DCTERMS["format"], None))
    g.remove((URIRef("urn:bpn:BPNL000000000DAD"), URIRef("http://xmlns.com/foaf/0.1/name"), None))
    conforms, report = validate_graph(g)
    assert not conforms
    assert "A dataset needs at least one valid distribution" in report
    assert "publisher IRI with a foaf:name" in report


def test_export_of_selected_datasets(service: CatalogService) -> None:
    g = Graph().parse(data=service.to_turtle(["bom-brake-assembly-as-built", "unknown"]), format="turtle")
    assert len(set(g.subjects(RDF.type, DCAT.Dataset))) == 1
