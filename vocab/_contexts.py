"""JSON-LD contexts shipped with dadam and an offline document loader.

Every remote context URL we accept maps to a file in ``vocab/contexts/``. A URL that is not
in :data:`CONTEXT_FILES` raises :class:`ContextNotAvailable`: nothing is ever fetched.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "CONTEXT_FILES",
    "DSP_CONTEXT",
    "DSP_CONTEXT_URLS",
    "DSP_ODRL_PROFILE_CONTEXT",
    "ContextNotAvailable",
    "document_loader",
    "load_context",
]

#: The DSP 2025-1 context; every DSP message's ``@context`` is ``[DSP_CONTEXT]``.
DSP_CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
#: The ODRL profile context that the DSP context ``@import``s.
DSP_ODRL_PROFILE_CONTEXT = "https://w3id.org/dspace/2025/1/odrl-profile.jsonld"
#: The ``@context`` array of every DSP 2025-1 message we emit.
DSP_CONTEXT_URLS: tuple[str, ...] = (DSP_CONTEXT,)

#: Remote context URL -> file name in ``vocab/contexts``.
CONTEXT_FILES: dict[str, str] = {
    DSP_CONTEXT: "dspace-2025-1.jsonld",
    DSP_ODRL_PROFILE_CONTEXT: "dspace-odrl-profile-2025-1.jsonld",
    "http://www.w3.org/ns/odrl.jsonld": "odrl-2.2.jsonld",
    "https://www.w3.org/ns/odrl.jsonld": "odrl-2.2.jsonld",
    "https://w3id.org/catenax/2025/9/policy/context.jsonld": "cx-policy-2025-9.jsonld",
    "https://w3id.org/catenax/2025/9/policy/odrl.jsonld": "cx-policy-odrl-2025-9.jsonld",
    "https://w3id.org/dspace-dcp/v1.0/dcp.jsonld": "dcp-1.0.jsonld",
    "https://www.w3.org/2018/credentials/v1": "credentials-v1.jsonld",
    "https://www.w3.org/ns/credentials/v2": "credentials-v2.jsonld",
}


class ContextNotAvailable(LookupError):
    """A JSON-LD context URL is not one dadam ships; dadam never fetches contexts."""


@cache
def _load_file(name: str) -> str:
    return resources.files("vocab").joinpath("contexts", name).read_text(encoding="utf-8")


def load_context(url: str) -> dict[str, Any]:
    """The parsed context document for ``url`` (a fresh copy: callers may mutate it)."""
    name = CONTEXT_FILES.get(url) or CONTEXT_FILES.get(url.rstrip("/"))
    if name is None:
        raise ContextNotAvailable(
            f"JSON-LD context {url!r} is not shipped with dadam and is never fetched; "
            f"known contexts: {', '.join(sorted(CONTEXT_FILES))}"
        )
    return copy.deepcopy(_parsed(name))


@cache
def _parsed(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_load_file(name))
    return doc


def document_loader(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pyld document loader that resolves only the shipped contexts.

    Use with ``jsonld.expand(doc, {"documentLoader": document_loader})``.
    """
    return {
        "contentType": "application/ld+json",
        "contextUrl": None,
        "documentUrl": url,
        "document": load_context(url),
    }
