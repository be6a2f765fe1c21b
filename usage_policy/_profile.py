"""Catena-X ODRL profile (CX-0152, 2025-09) validation at policy creation.

The profile's own top-level JSON schema validates nothing (see docs/usage-policy.md), so
each atomic constraint is checked against a table that mirrors the official atomic
constraint schemas (which term, which operator, which right operand, in which kind of rule)
plus DSP 2025-1's ``AtomicConstraint`` (a right operand is a string, object or array). The
test suite cross-checks this table against the official schemas with ``jsonschema``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connector.errors import PolicyError
from usage_policy._expanded import is_expanded, to_compact
from usage_policy._model import Policy, Rule, parse_policy
from usage_policy._terms import CX, CX_LEGACY, ODRL

__all__ = ["CX_PROFILE", "validate_cx_constraint", "validate_policy"]

Check = Callable[[Any], str | None]

_BPNL = re.compile(r"^BPNL[0-9A-Z]{12}$")
_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2}))$")
_REGIONS = tuple(
    f"cx.region.{r}:1"
    for r in ("all", "europe", "northAmerica", "southAmerica", "africa", "asia", "oceania", "antarctica")
)
_PURPOSES = (
    "cx.core.legalRequirementForThirdparty:1",
    "cx.core.industrycore:1",
    "cx.core.qualityNotifications:1",
    "cx.core.digitalTwinRegistry:1",
    "cx.pcf.base:1",
    "cx.quality.base:1",
    "cx.dcm.base:1",
    "cx.puris.base:1",
    "cx.circular.dpp:1",
    "cx.circular.smc:1",
    "cx.circular.marketplace:1",
    "cx.circular.materialaccounting:1",
    "cx.bpdm.gate.upload:1",
    "cx.bpdm.gate.download:1",
    "cx.bpdm.pool:1",
    "cx.bpdm.vas.countryrisk:1",
    "cx.bpdm.vas.dataquality.upload:1",
    "cx.bpdm.vas.dataquality.download:1",
    "cx.bpdm.vas.bdv.upload:1",
    "cx.bpdm.vas.bdv.download:1",
    "cx.bpdm.vas.fpd.upload:1",
    "cx.bpdm.vas.fpd.download:1",
    "cx.bpdm.vas.swd.upload:1",
    "cx.bpdm.vas.swd.download:1",
    "cx.bpdm.vas.nps.upload:1",
    "cx.bpdm.vas.nps.download:1",
    "cx.ccm.base:1",
    "cx.bpdm.poolAll:1",
    "cx.logistics.base:1",
)
_RESTRICTIONS = tuple(
    f"cx.{r}.forbidden:1"
    for r in ("thirdParty", "manipulation", "derivations", "extraordinaryAnalytics", "dataProviderRemoval")
)


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else f"must be a string, got {value!r}"


def _const(*allowed: str) -> Check:
    def check(value: Any) -> str | None:
        if value in allowed:
            return None
        return f"must be {' or '.join(repr(a) for a in allowed)}, got {value!r}"

    return check


def _pattern(rx: re.Pattern[str], what: str) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and rx.match(value):
            return None
        return f"must be {what}, got {value!r}"

    return check


def _integer(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return None
    return f"must be an integer, got {value!r}"


def _array(item: Check, *, unique: bool) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"must be an array, got {value!r}"
        if not value:
            return "must not be empty"
        if unique and len({repr(v) for v in value}) != len(value):
            return "must not repeat values"
        for i, v in enumerate(value):
            problem = item(v)
            if problem:
                return f"item {i} {problem}"
        return None

    return check


def _eq(*ops: str) -> frozenset[str]:
    return frozenset(ops)


ACCESS, USE, PROHIBITION, OBLIGATION = "access permission", "use permission", "prohibition", "obligation"


@dataclass(frozen=True, slots=True)
class CxTerm:
    """One Catena-X left operand: its operators, right operand and where it may appear."""

    name: str
    operators: frozenset[str]
    right: Check
    placements: frozenset[str]
    exclusive_group: str | None = None  # at most one term of a group per rule (schema oneOf)


_ANY_STRING_LIST = _array(_string, unique=True)

CX_PROFILE: dict[str, CxTerm] = {
    t.name: t
    for t in (
        CxTerm("Membership", _eq("eq"), _const("active"), frozenset({ACCESS, USE})),
        CxTerm("FrameworkAgreement", _eq("eq"), _const("DataExchangeGovernance:1.0"), frozenset({ACCESS, USE})),
        CxTerm(
            "BusinessPartnerNumber",
            _eq("isAnyOf", "isNoneOf"),
            _array(_pattern(_BPNL, "a BPNL (BPNL + 12 characters)"), unique=True),
            frozenset({ACCESS}),
        ),
        CxTerm("BusinessPartnerGroup", _eq("isAnyOf", "isNoneOf"), _ANY_STRING_LIST, frozenset({ACCESS})),
        CxTerm(
            "UsagePurpose",
            _eq("isAnyOf"),
            _array(_string, unique=False),  # listed purposes or free text
            frozenset({USE}),
        ),
        CxTerm("ContractReference", _eq("isAllOf"), _ANY_STRING_LIST, frozenset({USE})),
        CxTerm("AffiliatesRegion", _eq("isAnyOf"), _array(_const(*_REGIONS), unique=False), frozenset({USE, PROHIBITION})),
        CxTerm(
            "AffiliatesBpnl",
            _eq("isAnyOf"),
            _array(_pattern(_BPNL, "a BPNL"), unique=True),
            frozenset({USE, PROHIBITION}),
        ),
        CxTerm("ManagedLegalEntityRegion", _eq("isAnyOf"), _array(_const(*_REGIONS), unique=False), frozenset({USE})),
        CxTerm("ManagedLegalEntityBpnl", _eq("isAnyOf"), _array(_pattern(_BPNL, "a BPNL"), unique=True), frozenset({USE})),
        CxTerm("DataFrequency", _eq("eq"), _const("cx.dataFrequency.once:1", "cx.dataFrequency.unlimited:1"), frozenset({USE})),
        CxTerm("VersionChanges", _eq("eq"), _const("cx.versionChanges.minor:1", "cx.versionChanges.major:1"), frozenset({USE})),
        CxTerm("ContractTermination", _eq("eq"), _const("cx.data.deletion:1", "cx.data.keeping:1"), frozenset({USE})),
        CxTerm("ConfidentialInformationMeasures", _eq("eq"), _const("cx.confidentiality.measures:1"), frozenset({USE})),
        CxTerm(
            "ConfidentialInformationSharing",
            _eq("isAnyOf"),
            _array(_const("cx.sharing.affiliates:1", "cx.sharing.managedLegalEntity:1"), unique=False),
            frozenset({USE}),
        ),
        CxTerm("ExclusiveUsage", _eq("eq"), _const("cx.exclusiveUsage.dataConsumer:1"), frozenset({USE})),
        CxTerm(
            "Warranty",
            _eq("eq"),
            _const("cx.warranty.none:1", "cx.warranty.contractReference:1", "cx.warranty.dataQualityIssues:1"),
            frozenset({USE}),
        ),
        CxTerm("WarrantyDurationMonths", _eq("eq"), _integer, frozenset({USE}), "warranty period"),
        CxTerm("WarrantyDefinition", _eq("eq"), _const("cx.warranty.contractEndDate:1"), frozenset({USE}), "warranty period"),
        CxTerm("Liability", _eq("eq"), _const("cx.grossNegligence:1", "cx.slightNegligence:1"), frozenset({USE})),
        CxTerm("JurisdictionLocation", _eq("eq"), _string, frozenset({USE})),
        CxTerm(
            "JurisdictionLocationReference",
            _eq("eq"),
            _const("cx.location.dataConsumer:1", "cx.location.contractReference:1"),
            frozenset({USE}),
        ),
        CxTerm("Precedence", _eq("eq"), _const("cx.precedence.contractReference:1", "cx.precedence.rcAgreement:1"), frozenset({USE})),
        CxTerm("DataUsageEndDurationDays", _eq("eq"), _integer, frozenset({USE}), "data usage end"),
        CxTerm("DataUsageEndDate", _eq("eq"), _pattern(_DATETIME, "an xsd:dateTime with seconds and zone"), frozenset({USE}), "data usage end"),
        CxTerm("DataUsageEndDefinition", _eq("eq"), _const("cx.dataUsageEnd.unlimited:1"), frozenset({USE}), "data usage end"),
        CxTerm("DataProvisioningEndDurationDays", _eq("eq"), _integer, frozenset({OBLIGATION}), "data provisioning end"),
        CxTerm(
            "DataProvisioningEndDate",
            _eq("eq"),
            _pattern(_DATETIME, "an xsd:dateTime with seconds and zone"),
            frozenset({OBLIGATION}),
            "data provisioning end",
        ),
        CxTerm("UsageRestriction", _eq("isAllOf"), _array(_const(*_RESTRICTIONS), unique=False), frozenset({PROHIBITION})),
    )
}  # fmt: skip


def _cx_name(token: str) -> str | None:
    for prefix in (CX, CX_LEGACY, "cx-policy:"):
        if token.startswith(prefix):
            return token[len(prefix) :]
    return token if token in CX_PROFILE else None


def validate_cx_constraint(data: Mapping[str, Any], placement: str | None = None) -> list[str]:
    """Problems of one atomic constraint (JSON) under the Catena-X profile; [] if valid.

    ``placement`` is one of "access permission", "use permission", "prohibition",
    "obligation"; ``None`` accepts any placement the profile allows for the term.
    """
    if not isinstance(data, Mapping):
        return [f"a constraint must be an object, got {data!r}"]
    left = data.get("leftOperand")
    if not isinstance(left, str):
        return [f"leftOperand must be a string, got {left!r}"]
    name = _cx_name(left)
    term = CX_PROFILE.get(name) if name else None
    if term is None:
        return [f"leftOperand {left!r} is not a Catena-X profile term"]
    problems: list[str] = []
    extra = sorted(set(data) - {"leftOperand", "operator", "rightOperand"})
    if extra:
        problems.append(f"{name}: properties not allowed by the profile: {', '.join(extra)}")
    if "rightOperand" not in data or "operator" not in data:
        problems.append(f"{name}: operator and rightOperand are required")
        return problems
    op = data["operator"]
    if op not in term.operators:
        problems.append(f"{name}: operator {op!r} not allowed (allowed: {', '.join(sorted(term.operators))})")
    right = data["rightOperand"]
    if not isinstance(right, str | list | dict):
        conflict = (
            "; CX-0152 wants an integer here and DSP forbids one, so no value satisfies both"
            if term.right is _integer
            else ""
        )
        problems.append(
            f"{name}: rightOperand {right!r} must be a string, object or array (DSP 2025-1 AtomicConstraint)"
            + conflict
        )
    problem = term.right(right)
    if problem:
        problems.append(f"{name}: rightOperand {problem}")
    if placement is not None and placement not in term.placements:
        problems.append(
            f"{name}: not allowed in a {placement} (allowed in: {', '.join(sorted(term.placements))})"
        )
    return problems


def _raw_rules(data: Mapping[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{key}: must be an array (DSP 2025-1), got a single {type(value).__name__}")
        return [value]
    return value


def _raw_constraints(rule: Any, path: str, problems: list[str]) -> list[tuple[str, Any]]:
    """Atomic constraints of a raw rule, flattening ``and``; other logical operators are errors."""
    out: list[tuple[str, Any]] = []
    if not isinstance(rule, Mapping):
        return out
    if "action" not in rule:
        problems.append(f"{path}: action is required")
    value = rule.get("constraint")
    if value is None:
        return out
    if not isinstance(value, list):
        problems.append(
            f"{path}.constraint: must be an array (DSP 2025-1), got a single {type(value).__name__}"
        )
        value = [value]

    def walk(items: list[Any], p: str) -> None:
        for i, c in enumerate(items):
            cp = f"{p}[{i}]"
            if isinstance(c, Mapping) and any(k in c for k in ("or", "xone", "andSequence")):
                op = next(k for k in ("or", "xone", "andSequence") if k in c)
                problems.append(f"{cp}: logical operator {op!r} not allowed (the profile allows only 'and')")
            elif isinstance(c, Mapping) and "and" in c:
                inner = c["and"]
                walk(inner if isinstance(inner, list) else [inner], f"{cp}.and")
            else:
                out.append((cp, c))

    walk(value, f"{path}.constraint")
    return out


def _placement(rule: Rule, kind: str) -> str:
    if kind == "permission":
        name = rule.action.name.iri if rule.action else ""
        return ACCESS if name in (CX + "access", CX_LEGACY + "access") else USE
    return kind


def validate_policy(data: Mapping[str, Any]) -> Policy:
    """Parse ``data`` and enforce the Catena-X profile; raise :class:`PolicyError` listing every
    problem (each names the rule path and the offending constraint)."""
    problems: list[str] = []
    if is_expanded(data):
        data = to_compact(data)
    if isinstance(data, Mapping):
        ptype = data.get("@type")
        if ptype not in ("Set", "Offer", "Agreement", "odrl:Set", "odrl:Offer", "odrl:Agreement"):
            problems.append(f"@type: a Catena-X policy is a Set, Offer or Agreement, got {ptype!r}")
        raw_rules: dict[str, list[Any]] = {
            key: _raw_rules(data, key, problems) for key in ("permission", "prohibition", "obligation")
        }
    else:
        raw_rules = {}
    try:
        policy = parse_policy(data)
    except PolicyError as exc:
        problems.append(exc.message)
        raise PolicyError(
            "policy violates the Catena-X profile: " + "; ".join(problems), context={"problems": problems}
        ) from exc
    allowed_actions = {ODRL + "use", CX + "access", CX_LEGACY + "access"}
    for key, rules in (
        ("permission", policy.permissions),
        ("prohibition", policy.prohibitions),
        ("obligation", policy.obligations),
    ):
        for i, rule in enumerate(rules):
            path = f"{key}[{i}]"
            raw_rule = raw_rules[key][i]
            if rule.action is not None and rule.action.name.iri not in allowed_actions:
                problems.append(f"{path}.action: {rule.action.name.name!r} is not 'use' or 'access'")
            if key != "permission" and rule.action is not None and rule.action.name.iri != ODRL + "use":
                problems.append(f"{path}.action: a {key} must be about 'use'")
            placement = _placement(rule, key)
            groups: dict[str, str] = {}
            names: list[str] = []
            for cpath, raw in _raw_constraints(raw_rule, path, problems):
                for problem in validate_cx_constraint(raw, placement):
                    problems.append(f"{cpath}: {problem}")
                name = _cx_name(raw.get("leftOperand", "")) if isinstance(raw, Mapping) else None
                if name:
                    names.append(name)
                    term = CX_PROFILE.get(name)
                    if term and term.exclusive_group:
                        if term.exclusive_group in groups:
                            problems.append(
                                f"{cpath}: {name} and {groups[term.exclusive_group]} both set the "
                                f"{term.exclusive_group}; use only one"
                            )
                        groups[term.exclusive_group] = name
            if placement == USE:
                for required in ("FrameworkAgreement", "UsagePurpose"):
                    if required not in names:
                        problems.append(f"{path}: a use permission needs a {required} constraint")
    if problems:
        raise PolicyError(
            "policy violates the Catena-X profile: " + "; ".join(problems), context={"problems": problems}
        )
    return policy
