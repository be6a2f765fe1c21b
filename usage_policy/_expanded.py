"""Expanded JSON-LD (full IRIs, every value in an array) to the compact shape the parser reads.

This is a structural walk with our term table, not a JSON-LD processor: it handles what a
JSON-LD expansion of an ODRL policy produces (tests prove equivalence with pyld).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from connector.errors import PolicyError
from usage_policy._terms import ODRL, RDF_VALUE, compact_iri, expand_token

__all__ = ["is_expanded", "to_compact"]

_DSPACE = "https://w3id.org/dspace/2025/1/"
#: Properties whose (single) value is an IRI that names a term.
_TERM_PROPS = frozenset({"action", "leftOperand", "operator", "conflict"})
#: Properties whose value is an IRI or node (not a term).
_ID_PROPS = frozenset({"target", "assigner", "assignee", "source", "uid", "dataType", "unit", "profile"})
#: Properties that hold arrays of nodes.
_LIST_PROPS = frozenset(
    {"permission", "prohibition", "obligation", "duty", "remedy", "consequence", "constraint", "refinement"}
)
_LOGICAL = frozenset({"and", "or", "xone", "andSequence"})
_LIST_OPERATORS = frozenset({"isAnyOf", "isAllOf", "isNoneOf"})


def is_expanded(data: Any) -> bool:
    """True for expanded JSON-LD: a top-level array, or keys that are full ODRL IRIs."""
    if isinstance(data, list):
        return True
    if isinstance(data, Mapping):
        return any(isinstance(k, str) and k.startswith(ODRL) for k in data)
    return False


def _value(node: Any) -> Any:
    if isinstance(node, Mapping):
        if "@value" in node:
            if "@type" in node:
                return {"@value": node["@value"], "@type": compact_xsd(node["@type"])}
            return node["@value"]
        if "@id" in node and len(node) == 1:
            return node["@id"]
        if "@list" in node:
            return [_value(v) for v in node["@list"]]
        return _node(node)
    return node


def compact_xsd(iri: str) -> str:
    return (
        "xsd:" + iri[len("http://www.w3.org/2001/XMLSchema#") :]
        if iri.startswith("http://www.w3.org/2001/XMLSchema#")
        else iri
    )


def _node(node: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, values in node.items():
        if key == "@id":
            out["@id"] = values
            continue
        if key == "@type":
            types = values if isinstance(values, list) else [values]
            short = [compact_iri(t) for t in types]
            out["@type"] = short[0] if len(short) == 1 else short
            continue
        if key.startswith(ODRL):
            name = key[len(ODRL) :]
        elif key == _DSPACE + "timestamp":
            name = "timestamp"
        elif key == RDF_VALUE:
            name = "rdf:value"
        else:
            name = key
        items = values if isinstance(values, list) else [values]
        if name in _LOGICAL:
            flat: list[Any] = []
            for item in items:
                if isinstance(item, Mapping) and "@list" in item:
                    flat.extend(item["@list"])
                else:
                    flat.append(item)
            out[name] = [_value(v) for v in flat]
        elif name in _LIST_PROPS:
            out[name] = [_value(v) for v in items]
        elif name in _TERM_PROPS or name == "rdf:value":
            if len(items) != 1:
                raise PolicyError(
                    f"{name}: expected exactly one value, got {len(items)}", context={"path": name}
                )
            val = _value(items[0])
            # a relative IRI here ("dateTime" under the DSP context) names an ODRL term
            token = compact_iri(expand_token(val)) if isinstance(val, str) else val
            out[name] = {"@id": token} if name == "rdf:value" else token
        elif name in _ID_PROPS or name == "rightOperand":
            vals = [_value(v) for v in items]
            out[name] = vals[0] if len(vals) == 1 else vals
        else:
            vals = [_value(v) for v in items]
            out[name] = vals[0] if len(vals) == 1 else vals
    # JSON-LD drops the array around a single value; list operators always take a list
    if (
        out.get("operator") in _LIST_OPERATORS
        and "rightOperand" in out
        and not isinstance(out["rightOperand"], list)
    ):
        out["rightOperand"] = [out["rightOperand"]]
    return out


def to_compact(data: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    """The compact-shaped dict of an expanded policy document (one policy node)."""
    nodes = list(data) if isinstance(data, list) else [data]
    policies = [n for n in nodes if isinstance(n, Mapping)]
    if len(policies) != 1:
        raise PolicyError(f"$: expanded JSON-LD must hold exactly one policy node, got {len(policies)}")
    return _node(policies[0])
