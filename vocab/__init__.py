"""Namespaces and JSON-LD contexts, resolved offline.

dadam never fetches a JSON-LD context at run time: every context we use ships in
``vocab/contexts/`` and is served by :func:`document_loader` (for pyld) and
:func:`load_context` (for anything else). Wire messages are produced as compact JSON
straight from typed models; pyld is only used in tests and slow paths.
"""

from __future__ import annotations

from vocab._contexts import (
    CONTEXT_FILES,
    DSP_CONTEXT,
    DSP_CONTEXT_URLS,
    DSP_ODRL_PROFILE_CONTEXT,
    ContextNotAvailable,
    document_loader,
    load_context,
)
from vocab._jsonld import compact, expand
from vocab._namespaces import (
    ADMS,
    CX_COMMON,
    CX_POLICY,
    CX_POLICY_LEGACY,
    CX_TAXO,
    DCAT,
    DCP,
    DCT,
    DQV,
    DSPACE,
    DSPACE_2024_1,
    FOAF,
    ODRL,
    PACT,
    PROV,
    RDF,
    RDFS,
    SKOS,
    VCARD,
    XSD,
    Namespace,
)

__all__ = [
    "ADMS",
    "CONTEXT_FILES",
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
    "DSP_CONTEXT",
    "DSP_CONTEXT_URLS",
    "DSP_ODRL_PROFILE_CONTEXT",
    "FOAF",
    "ODRL",
    "PACT",
    "PROV",
    "RDF",
    "RDFS",
    "SKOS",
    "VCARD",
    "XSD",
    "ContextNotAvailable",
    "Namespace",
    "compact",
    "document_loader",
    "expand",
    "load_context",
]
