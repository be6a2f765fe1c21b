"""Namespace IRIs. ``DCAT.Dataset`` or ``DCAT["Dataset"]`` gives the full IRI."""

from __future__ import annotations

__all__ = [
    "ADMS",
    "CX_COMMON",
    "CX_POLICY",
    "CX_POLICY_LEGACY",
    "CX_TAXO",
    "DCAT",
    "DCP",
    "DCT",
    "DQV",
    "DSPACE",
    "DSPACE_2024_1",
    "FOAF",
    "ODRL",
    "PACT",
    "PROV",
    "RDF",
    "RDFS",
    "SKOS",
    "VCARD",
    "XSD",
    "Namespace",
]


class Namespace(str):
    """An IRI prefix; attribute or item access appends a local name.

    >>> DCAT.Dataset
    'http://www.w3.org/ns/dcat#Dataset'
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return str(self) + name

    def __getitem__(self, name: str) -> str:  # type: ignore[override]
        return str(self) + name

    def term(self, name: str) -> str:
        """The full IRI of ``name`` in this namespace."""
        return str(self) + name

    def local(self, iri: str) -> str | None:
        """The local name of ``iri`` if it is in this namespace, else ``None``."""
        return iri[len(self) :] if iri.startswith(self) else None


#: Eclipse Dataspace Protocol 2025-1.
DSPACE = Namespace("https://w3id.org/dspace/2025/1/")
#: The previous, wire-incompatible release (recognised to give a clear error).
DSPACE_2024_1 = Namespace("https://w3id.org/dspace/2024/1/")
DCAT = Namespace("http://www.w3.org/ns/dcat#")
DCT = Namespace("http://purl.org/dc/terms/")
ODRL = Namespace("http://www.w3.org/ns/odrl/2/")
DQV = Namespace("http://www.w3.org/ns/dqv#")
PROV = Namespace("http://www.w3.org/ns/prov#")
ADMS = Namespace("http://www.w3.org/ns/adms#")
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
FOAF = Namespace("http://xmlns.com/foaf/0.1/")
XSD = Namespace("http://www.w3.org/2001/XMLSchema#")
RDF = Namespace("http://www.w3.org/1999/02/22-rdf-syntax-ns#")
RDFS = Namespace("http://www.w3.org/2000/01/rdf-schema#")
SKOS = Namespace("http://www.w3.org/2004/02/skos/core#")
#: Catena-X ODRL profile CX-0152, 2025-09 release.
CX_POLICY = Namespace("https://w3id.org/catenax/2025/9/policy/")
#: The older Catena-X policy namespace, still common in Tractus-X deployments.
CX_POLICY_LEGACY = Namespace("https://w3id.org/catenax/policy/")
CX_TAXO = Namespace("https://w3id.org/catenax/taxonomy#")
CX_COMMON = Namespace("https://w3id.org/catenax/ontology/common#")
#: WBCSD PACT (Partnership for Carbon Transparency) data model terms.
PACT = Namespace("https://wbcsd.github.io/pact/ns/")
#: Eclipse Decentralized Claims Protocol 1.0.
DCP = Namespace("https://w3id.org/dspace-dcp/v1.0/")
