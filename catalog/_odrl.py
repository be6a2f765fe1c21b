"""Structural check of stored ODRL policies (the DSP 2025-1 ODRL profile, compact form).

This mirrors ``negotiation/contract-schema.json`` (rules, duties, atomic and logical constraints,
the operator enum) and adds what the schema cannot say: a policy needs at least one rule, and
``target`` is never stored (the catalog adds the dataset as target where DSP wants one). It does not
decide whether a constraint is satisfiable: that is the policy engine's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["OPERATORS", "odrl_problems", "policy_has_constraints"]

#: The operators the DSP ODRL profile allows.
OPERATORS = frozenset(
    {
        "eq",
        "gt",
        "gteq",
        "lt",
        "lteq",
        "neq",
        "hasPart",
        "isA",
        "isAllOf",
        "isAnyOf",
        "isNoneOf",
        "isPartOf",
        "term-lteq",
    }
)
_LOGICAL = ("and", "or", "xone", "andSequence")
_RULES = ("permission", "prohibition", "obligation")
_ALLOWED_TOP = {
    "@type",
    "@id",
    "uid",
    "profile",
    "permission",
    "prohibition",
    "obligation",
    "assigner",
    "conflict",
}


def odrl_problems(policy: Mapping[str, Any]) -> list[str]:
    """Every structural problem of ``policy``, each naming its JSON path; empty when it is fine."""
    problems: list[str] = []
    if not isinstance(policy, Mapping):
        return ["policy must be a JSON object"]
    if "@context" in policy:
        problems.append("policy: store the policy without @context (the DSP context is implied)")
    if "target" in policy:
        problems.append("policy.target: not allowed; the catalog sets the dataset as target")
    unknown = sorted(set(policy) - _ALLOWED_TOP - {"@context", "target"})
    if unknown:
        problems.append(f"policy: unknown keys {', '.join(unknown)}")
    ptype = policy.get("@type")
    if ptype is not None and ptype not in ("Set", "Offer", "odrl:Set", "odrl:Offer"):
        problems.append(f"policy.@type: must be Set or Offer, got {ptype!r}")
    if not any(policy.get(r) for r in ("permission", "prohibition")):
        problems.append("policy: needs at least one permission or prohibition")
    for rule_kind in _RULES:
        if rule_kind not in policy:
            continue
        rules = policy[rule_kind]
        if not isinstance(rules, list) or not rules:
            problems.append(f"policy.{rule_kind}: must be a non-empty array")
            continue
        for i, rule in enumerate(rules):
            _rule(rule, f"policy.{rule_kind}[{i}]", problems, allow_duty=rule_kind == "permission")
    return problems


def _rule(rule: Any, path: str, problems: list[str], *, allow_duty: bool) -> None:
    if not isinstance(rule, Mapping):
        problems.append(f"{path}: must be an object")
        return
    action = rule.get("action")
    if isinstance(action, Mapping):
        action = action.get("@id") or action.get("rdf:value")
    if not isinstance(action, str) or not action:
        problems.append(f"{path}.action: required, a string such as 'use' or 'access'")
    if "target" in rule:
        problems.append(f"{path}.target: rules must not have a target")
    if "constraint" in rule:
        _constraints(rule["constraint"], f"{path}.constraint", problems)
    for key in ("duty",) if allow_duty else ():
        if key in rule:
            duties = rule[key]
            if not isinstance(duties, list):
                problems.append(f"{path}.{key}: must be an array")
                continue
            for j, duty in enumerate(duties):
                _rule(duty, f"{path}.{key}[{j}]", problems, allow_duty=False)


def _constraints(value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, list):
        problems.append(f"{path}: must be an array")
        return
    for i, c in enumerate(value):
        _constraint(c, f"{path}[{i}]", problems)


def _constraint(c: Any, path: str, problems: list[str]) -> None:
    if not isinstance(c, Mapping):
        problems.append(f"{path}: must be an object")
        return
    logical = [k for k in _LOGICAL if k in c]
    if logical:
        if len(logical) > 1:
            problems.append(f"{path}: exactly one of and/or/xone/andSequence, got {', '.join(logical)}")
        for k in logical:
            _constraints(c[k], f"{path}.{k}", problems)
        return
    for key in ("leftOperand", "operator", "rightOperand"):
        if key not in c:
            problems.append(f"{path}.{key}: required")
    left = c.get("leftOperand")
    if "leftOperand" in c and not (isinstance(left, str) and left):
        problems.append(f"{path}.leftOperand: must be a non-empty string")
    op = c.get("operator")
    if "operator" in c and op not in OPERATORS:
        problems.append(f"{path}.operator: {op!r} is not one of {', '.join(sorted(OPERATORS))}")
    right = c.get("rightOperand")
    if "rightOperand" in c and not isinstance(right, str | Mapping | list):
        problems.append(f"{path}.rightOperand: must be a string, object or array")


def policy_has_constraints(policy: Mapping[str, Any]) -> bool:
    """Whether any rule of ``policy`` is conditional (constraints, duties, prohibitions or obligations)."""
    if policy.get("prohibition") or policy.get("obligation"):
        return True
    return any(
        isinstance(rule, Mapping) and (rule.get("constraint") or rule.get("duty"))
        for rule in policy.get("permission") or ()
    )
