"""Typed ODRL 2.2 model, the parser (compact or expanded JSON-LD) and the DSP compact writer.

The model keeps how each token was spelled (``Term.spelling``) and every property it does
not interpret (``extra``), so ``parse_policy(doc).to_dsp() == doc`` for DSP compact input.
Equality of terms is by IRI, so ``odrl:use``, ``use`` and the full IRI are the same action.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from connector.errors import PolicyError
from usage_policy._terms import (
    LOGICAL_OPERATORS,
    ODRL,
    POLICY_TYPES,
    RDF_VALUE,
    compact_iri,
    display_name,
    expand_token,
)

__all__ = [
    "Action",
    "Constraint",
    "ConstraintNode",
    "LogicalConstraint",
    "Policy",
    "Ref",
    "Rule",
    "RuleKind",
    "Term",
    "parse_policy",
]

RuleKind = Literal["permission", "prohibition", "obligation", "duty", "remedy", "consequence"]


@dataclass(frozen=True, slots=True)
class Term:
    """An IRI plus the spelling it came with (only the IRI counts for equality)."""

    iri: str
    spelling: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        """The compact token (``use``, ``cx-policy:Membership``) used in messages."""
        return display_name(self.iri)

    def to_json(self) -> str:
        return self.spelling or compact_iri(self.iri)


@dataclass(frozen=True, slots=True)
class Constraint:
    """An atomic constraint: ``leftOperand operator rightOperand``."""

    left: Term
    operator: Term
    right: Any = None
    right_ref: Any = None
    data_type: str | None = None
    unit: str | None = None
    status: Any = None
    uid: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.uid is not None:
            out["@id"] = self.uid
        out["leftOperand"] = self.left.to_json()
        out["operator"] = self.operator.to_json()
        if self.right_ref is not None:
            out["odrl:rightOperandReference"] = self.right_ref
        if self.right is not None or self.right_ref is None:
            out["rightOperand"] = self.right
        if self.data_type is not None:
            out["odrl:dataType"] = self.data_type
        if self.unit is not None:
            out["odrl:unit"] = self.unit
        if self.status is not None:
            out["odrl:status"] = self.status
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class LogicalConstraint:
    """``and`` / ``or`` / ``xone`` / ``andSequence`` over other constraints."""

    op: str
    operands: tuple[ConstraintNode, ...]
    uid: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.uid is not None:
            out["@id"] = self.uid
        out[self.op] = [c.to_json() for c in self.operands]
        out.update(self.extra)
        return out


ConstraintNode = Constraint | LogicalConstraint


@dataclass(frozen=True, slots=True)
class Ref:
    """A party or asset: an IRI, or a collection (``PartyCollection``/``AssetCollection``)."""

    uid: str | None
    type: str | None = None
    source: str | None = None
    refinement: tuple[ConstraintNode, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    as_string: bool = field(default=True, compare=False)

    def to_json(self) -> Any:
        if self.as_string and self.uid is not None:
            return self.uid
        out: dict[str, Any] = {}
        if self.uid is not None:
            out["@id"] = self.uid
        if self.type is not None:
            out["@type"] = self.type if ":" in self.type else "odrl:" + self.type
        if self.source is not None:
            out["odrl:source"] = self.source
        if self.refinement:
            out["odrl:refinement"] = [c.to_json() for c in self.refinement]
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Action:
    """An action, optionally refined (``print`` with ``resolution lteq 1200``)."""

    name: Term
    refinement: tuple[ConstraintNode, ...] = ()
    uid: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    form: Literal["string", "object", "list"] = field(default="string", compare=False)

    def to_json(self) -> Any:
        if self.form == "string" and not self.refinement and self.uid is None and not self.extra:
            return self.name.to_json()
        out: dict[str, Any] = {}
        if self.uid is not None:
            out["@id"] = self.uid
        out[RDF_VALUE] = (
            {"@id": "odrl:" + self.name.iri[len(ODRL) :]}
            if self.name.iri.startswith(ODRL)
            else {"@id": self.name.iri}
        )
        if self.refinement:
            out["odrl:refinement"] = [c.to_json() for c in self.refinement]
        out.update(self.extra)
        return [out] if self.form == "list" else out


@dataclass(frozen=True, slots=True)
class Rule:
    """A permission, prohibition, duty (obligation, remedy, consequence) with its parts."""

    kind: RuleKind
    action: Action | None
    target: Ref | None = None
    assigner: Ref | None = None
    assignee: Ref | None = None
    constraints: tuple[ConstraintNode, ...] = ()
    duties: tuple[Rule, ...] = ()
    remedies: tuple[Rule, ...] = ()
    consequences: tuple[Rule, ...] = ()
    uid: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.uid is not None:
            out["@id"] = self.uid
        if self.action is not None:
            out["action"] = self.action.to_json()
        for key, ref in (("target", self.target), ("assigner", self.assigner), ("assignee", self.assignee)):
            if ref is not None:
                out[key] = ref.to_json()
        if self.constraints:
            out["constraint"] = [c.to_json() for c in self.constraints]
        for key, rules in (
            ("duty", self.duties),
            ("odrl:remedy", self.remedies),
            ("odrl:consequence", self.consequences),
        ):
            if rules:
                out[key] = [r.to_json() for r in rules]
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Policy:
    """An ODRL policy (Set, Offer, Agreement, Request, ...) as DSP and ODRL define it."""

    type: str = "Set"
    uid: str | None = None
    permissions: tuple[Rule, ...] = ()
    prohibitions: tuple[Rule, ...] = ()
    obligations: tuple[Rule, ...] = ()
    target: Ref | None = None
    assigner: Ref | None = None
    assignee: Ref | None = None
    profile: Any = None
    conflict: str | None = None
    inherit_from: Any = None
    timestamp: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dsp(self) -> dict[str, Any]:
        """The policy in DSP compact form (no ``@context``; the message carries it)."""
        out: dict[str, Any] = {}
        if self.uid is not None:
            out["@id"] = self.uid
        out["@type"] = self.type
        if self.profile is not None:
            out["profile"] = self.profile
        for key, ref in (("target", self.target), ("assigner", self.assigner), ("assignee", self.assignee)):
            if ref is not None:
                out[key] = ref.to_json()
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        if self.conflict is not None:
            out["odrl:conflict"] = self.conflict
        if self.inherit_from is not None:
            out["odrl:inheritFrom"] = self.inherit_from
        for key, rules in (
            ("permission", self.permissions),
            ("prohibition", self.prohibitions),
            ("obligation", self.obligations),
        ):
            if rules:
                out[key] = [r.to_json() for r in rules]
        out.update(self.extra)
        return out

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical DSP form: the cache key of the compiled policy."""
        return hashlib.sha256(orjson.dumps(self.to_dsp(), option=orjson.OPT_SORT_KEYS)).hexdigest()

    def rules(self) -> tuple[Rule, ...]:
        return self.permissions + self.prohibitions + self.obligations


# ---------------------------------------------------------------------------------------------
# Parser


_POLICY_KEYS = frozenset(
    {
        "target",
        "assigner",
        "assignee",
        "permission",
        "prohibition",
        "obligation",
        "profile",
        "conflict",
        "inheritFrom",
        "uid",
    }
)
_RULE_KEYS = frozenset(
    {"action", "target", "assigner", "assignee", "constraint", "duty", "remedy", "consequence", "uid"}
)
_CONSTRAINT_KEYS = frozenset(
    {"leftOperand", "operator", "rightOperand", "rightOperandReference", "dataType", "unit", "status", "uid"}
    | set(LOGICAL_OPERATORS)
)
_REF_KEYS = frozenset({"source", "refinement", "uid"})
_ACTION_KEYS = frozenset({"refinement", "value", "uid"})


def _keys(value: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """A copy of ``value`` where known ODRL keys written as ``odrl:key`` become ``key``."""
    return {(k[5:] if k.startswith("odrl:") and k[5:] in known else k): v for k, v in value.items()}


def _fail(path: str, problem: str) -> PolicyError:
    return PolicyError(f"{path}: {problem}", context={"path": path})


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


class _Parser:
    def __init__(self, prefixes: dict[str, str], *, require_action: bool) -> None:
        self.prefixes = prefixes
        self.require_action = require_action

    def term(self, value: Any, path: str, what: str) -> Term:
        if isinstance(value, Mapping) and "@id" in value:
            value = value["@id"]
        if not isinstance(value, str) or not value:
            raise _fail(path, f"{what} must be a non-empty string, got {value!r}")
        return Term(expand_token(value, prefixes=self.prefixes), value)

    def ref(self, value: Any, path: str) -> Ref:
        if isinstance(value, str):
            return Ref(uid=value)
        if isinstance(value, list) and len(value) == 1:
            return self.ref(value[0], path)
        if not isinstance(value, Mapping):
            raise _fail(path, f"expected an IRI or an object, got {type(value).__name__}")
        data = _keys(value, _REF_KEYS)
        uid = data.pop("@id", None)
        if uid is None:
            uid = data.pop("uid", None)
        rtype = data.pop("@type", None)
        if isinstance(rtype, str):
            rtype = rtype.removeprefix("odrl:")
        source = data.pop("source", None)
        if isinstance(source, Mapping):
            source = source.get("@id")
        refinement = tuple(
            self.constraint(c, f"{path}.refinement[{i}]")
            for i, c in enumerate(_as_list(data.pop("refinement", None)))
        )
        return Ref(
            uid=uid if isinstance(uid, str) else None,
            type=rtype if isinstance(rtype, str) else None,
            source=source if isinstance(source, str) else None,
            refinement=refinement,
            extra=data,
            as_string=False,
        )

    def constraint(self, value: Any, path: str) -> ConstraintNode:
        if not isinstance(value, Mapping):
            raise _fail(path, f"a constraint must be an object, got {type(value).__name__}")
        data = _keys(value, _CONSTRAINT_KEYS)
        uid = data.pop("@id", None)
        if uid is None:
            uid = data.pop("uid", None)
        logical = [op for op in LOGICAL_OPERATORS if op in data]
        if logical:
            if len(logical) > 1:
                raise _fail(path, f"a logical constraint needs exactly one operator, got {logical}")
            op = logical[0]
            items = data.pop(op)
            if isinstance(items, Mapping) and "@list" in items:
                items = items["@list"]
            items = _as_list(items)
            if not items:
                raise _fail(path, f"logical constraint '{op}' has no operands")
            if "leftOperand" in data or "operator" in data:
                raise _fail(path, f"'{op}' cannot be combined with leftOperand/operator")
            operands = tuple(self.constraint(c, f"{path}.{op}[{i}]") for i, c in enumerate(items))
            return LogicalConstraint(op=op, operands=operands, uid=uid, extra=data)
        for key in ("leftOperand", "operator"):
            if key not in data:
                raise _fail(path, f"constraint has no '{key}'")
        if "rightOperand" not in data and "rightOperandReference" not in data:
            raise _fail(path, "constraint has neither 'rightOperand' nor 'rightOperandReference'")
        left = self.term(data.pop("leftOperand"), f"{path}.leftOperand", "leftOperand")
        operator = self.term(data.pop("operator"), f"{path}.operator", "operator")
        right = data.pop("rightOperand", None)
        if right is None and "rightOperandReference" not in data:
            raise _fail(path, "rightOperand is null")
        return Constraint(
            left=left,
            operator=operator,
            right=right,
            right_ref=data.pop("rightOperandReference", None),
            data_type=data.pop("dataType", None),
            unit=data.pop("unit", None),
            status=data.pop("status", None),
            uid=uid if isinstance(uid, str) else None,
            extra=data,
        )

    def action(self, value: Any, path: str) -> Action:
        form: Literal["string", "object", "list"] = "string"
        if isinstance(value, list):
            if len(value) != 1:
                raise _fail(path, f"a rule has exactly one action, got {len(value)}")
            value = value[0]
            form = "list"
        if isinstance(value, str):
            return Action(name=self.term(value, path, "action"))
        if not isinstance(value, Mapping):
            raise _fail(path, f"an action must be a string or an object, got {type(value).__name__}")
        data = _keys(value, _ACTION_KEYS)
        form = "list" if form == "list" else "object"
        uid = data.pop("@id", None)
        name = None
        for key in ("rdf:value", RDF_VALUE, "value", "action"):
            if key in data:
                name = data.pop(key)
                break
        if name is None:
            if uid is not None and "refinement" not in data:
                return Action(name=self.term(uid, path, "action"))
            raise _fail(path, "an action object needs 'rdf:value' naming the action")
        refinement = tuple(
            self.constraint(c, f"{path}.refinement[{i}]")
            for i, c in enumerate(_as_list(data.pop("refinement", None)))
        )
        return Action(
            name=self.term(name, f"{path}.rdf:value", "action"),
            refinement=refinement,
            uid=uid if isinstance(uid, str) else None,
            extra=data,
            form=form,
        )

    def rule(self, value: Any, path: str, kind: RuleKind) -> Rule:
        if not isinstance(value, Mapping):
            raise _fail(path, f"a {kind} must be an object, got {type(value).__name__}")
        data = _keys(value, _RULE_KEYS)
        uid = data.pop("@id", None)
        if uid is None:
            uid = data.pop("uid", None)
        action = self.action(data.pop("action"), f"{path}.action") if "action" in data else None
        refs: dict[str, Ref | None] = {}
        for key in ("target", "assigner", "assignee"):
            refs[key] = self.ref(data.pop(key), f"{path}.{key}") if key in data else None
        constraints = tuple(
            self.constraint(c, f"{path}.constraint[{i}]")
            for i, c in enumerate(_as_list(data.pop("constraint", None)))
        )

        def sub(key: str, sub_kind: RuleKind) -> tuple[Rule, ...]:
            return tuple(
                self.rule(r, f"{path}.{key}[{i}]", sub_kind)
                for i, r in enumerate(_as_list(data.pop(key, None)))
            )

        duties = sub("duty", "duty")
        remedies = sub("remedy", "remedy")
        consequences = sub("consequence", "consequence")
        if kind == "prohibition" and duties:
            raise _fail(path, "a prohibition cannot have duties (use 'remedy')")
        if kind == "permission" and remedies:
            raise _fail(path, "a permission cannot have remedies (use 'duty')")
        return Rule(
            kind=kind,
            action=action,
            target=refs["target"],
            assigner=refs["assigner"],
            assignee=refs["assignee"],
            constraints=constraints,
            duties=duties,
            remedies=remedies,
            consequences=consequences,
            uid=uid if isinstance(uid, str) else None,
            extra=data,
        )

    def policy(self, value: Mapping[str, Any]) -> Policy:
        data = _keys(value, _POLICY_KEYS)
        data.pop("@context", None)
        uid = data.pop("@id", None)
        if uid is None:
            uid = data.pop("uid", None)
        ptype = data.pop("@type", "Set")
        if isinstance(ptype, list) and len(ptype) == 1:
            ptype = ptype[0]
        if not isinstance(ptype, str):
            raise _fail("@type", f"policy type must be a string, got {ptype!r}")
        short = ptype[len(ODRL) :] if ptype.startswith(ODRL) else ptype.removeprefix("odrl:")
        if short not in POLICY_TYPES:
            raise _fail(
                "@type", f"unsupported policy type {ptype!r} (expected one of {sorted(POLICY_TYPES)})"
            )
        refs: dict[str, Ref | None] = {}
        for key in ("target", "assigner", "assignee"):
            refs[key] = self.ref(data.pop(key), key) if key in data else None

        def rules(key: str, kind: RuleKind) -> tuple[Rule, ...]:
            return tuple(
                self.rule(r, f"{key}[{i}]", kind) for i, r in enumerate(_as_list(data.pop(key, None)))
            )

        permissions = rules("permission", "permission")
        prohibitions = rules("prohibition", "prohibition")
        obligations = rules("obligation", "obligation")
        if self.require_action:
            for key, group in (
                ("permission", permissions),
                ("prohibition", prohibitions),
                ("obligation", obligations),
            ):
                for i, r in enumerate(group):
                    if r.action is None:
                        raise _fail(f"{key}[{i}]", f"a {key} needs an action")
                    for j, d in enumerate(r.duties):
                        if d.action is None:
                            raise _fail(f"{key}[{i}].duty[{j}]", "a duty needs an action")
        conflict = data.pop("conflict", None)
        if isinstance(conflict, Mapping):
            conflict = conflict.get("@id")
        if conflict is not None:
            if not isinstance(conflict, str):
                raise _fail("conflict", f"expected perm, prohibit or invalid, got {conflict!r}")
            if conflict.removeprefix("odrl:").removeprefix(ODRL) not in ("perm", "prohibit", "invalid"):
                raise _fail(
                    "conflict", f"unsupported conflict strategy {conflict!r} (perm, prohibit, invalid)"
                )
        timestamp = data.pop("timestamp", None)
        return Policy(
            type=short if ptype.startswith(ODRL) else ptype,
            uid=uid if isinstance(uid, str) else None,
            permissions=permissions,
            prohibitions=prohibitions,
            obligations=obligations,
            target=refs["target"],
            assigner=refs["assigner"],
            assignee=refs["assignee"],
            profile=data.pop("profile", None),
            conflict=conflict,
            inherit_from=data.pop("inheritFrom", None),
            timestamp=timestamp if isinstance(timestamp, str) else None,
            extra=data,
        )


def _context_prefixes(ctx: Any) -> dict[str, str]:
    """Prefix definitions from an inline ``@context`` (``{"cx-policy": "https://..."}``)."""
    out: dict[str, str] = {}
    for item in _as_list(ctx):
        if isinstance(item, Mapping):
            for key, val in item.items():
                if isinstance(val, str) and val.endswith(("/", "#")) and not key.startswith("@"):
                    out[key] = val
    return out


def parse_policy(data: Mapping[str, Any] | Sequence[Any], *, require_action: bool = True) -> Policy:
    """Parse an ODRL policy from compact JSON-LD (DSP, W3C ODRL or Catena-X contexts) or
    expanded JSON-LD (full IRIs). Raises :class:`PolicyError` naming the offending path.

    ODRL requires every rule to name its action. ``require_action=False`` accepts rules
    without one (the SolidLab test suite has such policies); the evaluator then treats such
    a rule as being about every action, and says so in the explanation.

    Parsed policies are remembered by content (the last 1,024): a connector parses the same
    offer for every negotiation. A policy is parsed from a private copy of ``data``, so later
    changes to ``data`` cannot reach it; the result is shared between callers and immutable
    (frozen dataclasses, tuples): keep it so.
    """
    try:
        key: bytes | None = orjson.dumps(data) + (b"1" if require_action else b"0")
    except TypeError:  # not plain JSON (e.g. non-string keys): parse it as it is, uncached
        key = None
    if key is None:
        return _parse_policy(data, require_action)
    hit = _PARSED.get(key)
    if hit is not None:
        return hit
    policy = _parse_policy(orjson.loads(key[:-1]), require_action)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[key] = policy
    return policy


#: parse_policy's memory: canonical JSON of the input (+ require_action) -> parsed policy
_PARSED: dict[bytes, Policy] = {}
_PARSED_MAX = 1024


def _parse_policy(data: Mapping[str, Any] | Sequence[Any], require_action: bool) -> Policy:
    from usage_policy._expanded import is_expanded, to_compact

    if is_expanded(data):
        data = to_compact(data)
    if not isinstance(data, Mapping):
        raise _fail("$", f"a policy must be a JSON object, got {type(data).__name__}")
    parser = _Parser(_context_prefixes(data.get("@context")), require_action=require_action)
    return parser.policy(data)
