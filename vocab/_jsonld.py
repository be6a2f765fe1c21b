"""Slow-path JSON-LD processing (pyld) with the offline loader: for tests, tools and exports only.

pyld shares one resolved-context cache between calls, and a context first seen through an
``@import`` (the DSP context imports the ODRL profile) is cached in a form that breaks a later
direct use of the same URL (TypeError inside pyld). Each call here starts from a clean cache,
which costs little because our contexts are loaded from memory.
"""

from __future__ import annotations

from typing import Any

from pyld import jsonld

from vocab._contexts import document_loader

__all__ = ["compact", "expand"]


def _reset_pyld_cache() -> None:
    cache = getattr(jsonld, "_resolved_context_cache", None)
    if cache is not None and hasattr(cache, "clear"):
        cache.clear()


def expand(doc: Any, *, base: str | None = None) -> list[dict[str, Any]]:
    """Expanded JSON-LD of ``doc`` (ids are opaque: no base IRI unless given)."""
    _reset_pyld_cache()
    result: list[dict[str, Any]] = jsonld.expand(doc, {"documentLoader": document_loader, "base": base})
    return result


def compact(doc: Any, context: Any) -> dict[str, Any]:
    """Compacted JSON-LD of ``doc`` with ``context``; a one-element ``@context`` stays an array."""
    _reset_pyld_cache()
    result: dict[str, Any] = jsonld.compact(doc, context, {"documentLoader": document_loader, "base": None})
    if isinstance(context, list) and isinstance(result.get("@context"), str):
        result["@context"] = [result["@context"]]
    return result
