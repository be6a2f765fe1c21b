"""Offer matching by meaning: is a requested (or counter-offered) policy the offered one, or
within it? So a consumer can accept an offer by id and counter-offers are compared by
meaning, not by bytes (ids, spelling, key and constraint order, ``and`` nesting and the
order of list right operands do not matter).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from usage_policy._model import Constraint, ConstraintNode, LogicalConstraint, Policy, Ref, Rule
from usage_policy._operands import lookup
from usage_policy._terms import ODRL, action_covers
from usage_policy._values import OperandTypeError, coerce, render

__all__ = ["MatchResult", "canonical", "is_within"]

_SET_OPS = frozenset({"isAnyOf", "isNoneOf", "isAllOf", "hasPart", "isPartOf"})


@dataclass(frozen=True, slots=True)
class MatchResult:
    """``equal``: same meaning. ``within``: the request asks for no more than the offer grants
    and keeps every duty, prohibition and obligation. ``reasons`` says what differs."""

    equal: bool
    within: bool
    reasons: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.within

    def to_dict(self) -> dict[str, Any]:
        return {"equal": self.equal, "within": self.within, "reasons": list(self.reasons)}


def _right(c: Constraint, op: str) -> Any:
    definition = lookup(c.left.iri)
    kind = definition.kind if definition else "string"
    try:
        value = coerce(c.right, kind)
    except OperandTypeError:
        value = orjson.dumps(c.right, option=orjson.OPT_SORT_KEYS).decode()
    if op in _SET_OPS:
        return frozenset(value) if isinstance(value, tuple) else frozenset((value,))
    return value


def _op(c: Constraint) -> str:
    return c.operator.iri.removeprefix(ODRL)


def _flatten(nodes: Iterable[ConstraintNode]) -> list[ConstraintNode]:
    out: list[ConstraintNode] = []
    for n in nodes:
        if isinstance(n, LogicalConstraint) and n.op == "and":
            out.extend(_flatten(n.operands))
        else:
            out.append(n)
    return out


def _canon_constraint(n: ConstraintNode) -> Any:
    if isinstance(n, LogicalConstraint):
        children = [_canon_constraint(c) for c in (_flatten(n.operands) if n.op == "and" else n.operands)]
        if n.op == "andSequence":
            return ("andSequence", tuple(children))
        if n.op == "xone":  # exactly one: how often a branch appears matters, its order not
            return ("xone", tuple(sorted(children, key=repr)))
        return (n.op, frozenset(children))
    op = _op(n)
    return ("atom", n.left.iri, op, _right(n, op), n.unit)


def _canon_ref(ref: Ref | None) -> Any:
    if ref is None:
        return None
    return (ref.uid, ref.source, frozenset(_canon_constraint(c) for c in ref.refinement))


def _canon_rule(rule: Rule, policy: Policy) -> Any:
    action = rule.action
    return (
        rule.kind,
        action.name.iri if action else None,
        frozenset(_canon_constraint(c) for c in action.refinement) if action else frozenset(),
        _canon_ref(rule.target or policy.target),
        frozenset(_canon_constraint(c) for c in _flatten(rule.constraints)),
        frozenset(_canon_rule(d, policy) for d in rule.duties),
        frozenset(_canon_rule(d, policy) for d in rule.remedies),
    )


def canonical(policy: Policy) -> Any:
    """A hashable value equal for two policies exactly when they mean the same."""
    return (
        frozenset(_canon_rule(r, policy) for r in policy.permissions),
        frozenset(_canon_rule(r, policy) for r in policy.prohibitions),
        frozenset(_canon_rule(r, policy) for r in policy.obligations),
        (policy.conflict or "invalid").removeprefix("odrl:"),
    )


def _implies(req: Any, off: Any) -> bool:
    """Does requested constraint ``req`` (canonical) guarantee offered constraint ``off``?"""
    if req == off:
        return True
    # logical constraints: a requested "or" implies c if each branch does; an offered "or" is
    # implied by what implies one branch; "and" the other way round. xone only by equality.
    if req[0] == "or":
        return all(_implies(r, off) for r in req[1])
    if off[0] in ("and", "andSequence"):
        return all(_implies(req, o) for o in off[1])
    if req[0] in ("and", "andSequence") and any(_implies(r, off) for r in req[1]):
        return True
    if off[0] == "or":
        return any(_implies(req, o) for o in off[1])
    if req[0] != "atom" or off[0] != "atom":
        return False
    _, lr, opr, vr, ur = req
    _, lo, opo, vo, uo = off
    if lr != lo or ur != uo:
        return False
    try:
        if opo in ("lt", "lteq"):
            if opr == "eq":
                return bool(vr < vo) if opo == "lt" else bool(vr <= vo)
            if opr in ("lt", "lteq"):
                return bool(vr < vo) if (opo == "lt" and opr == "lteq") else bool(vr <= vo)
        if opo in ("gt", "gteq"):
            if opr == "eq":
                return bool(vr > vo) if opo == "gt" else bool(vr >= vo)
            if opr in ("gt", "gteq"):
                return bool(vr > vo) if (opo == "gt" and opr == "gteq") else bool(vr >= vo)
        if opo == "isAnyOf":
            if opr == "isAnyOf":
                return bool(vr <= vo)
            if opr == "eq":
                return vr in vo
        if opo == "isNoneOf" and opr == "isNoneOf":
            return bool(vr >= vo)
        if opo in ("isAllOf", "hasPart") and opr == opo:
            return bool(vr >= vo)
    except TypeError:
        return False
    return False


def _describe(c: Any) -> str:
    if c[0] == "atom":
        _, left, op, value, _unit = c
        shown = render(sorted(value, key=repr)) if isinstance(value, frozenset) else render(value)
        return f"{left.removeprefix(ODRL)} {op} {shown!r}"
    return f"{c[0]}(...)"


def _rule_within(req: Any, off: Any) -> list[str]:
    """Why requested permission ``req`` is not within offered permission ``off`` ([] if it is)."""
    problems: list[str] = []
    _, ra, rref, rtarget, rcons, rduties, _ = req
    _, oa, oref, otarget, ocons, oduties, _ = off
    if oa is not None and (ra is None or not action_covers(oa, ra)):
        problems.append(
            f"action {str(ra).removeprefix(ODRL)!r} is not covered by offered {str(oa).removeprefix(ODRL)!r}"
        )
    if otarget is not None and rtarget != otarget:
        problems.append(f"target {rtarget and rtarget[0]!r} differs from offered {otarget[0]!r}")
    everything_requested = ("and", rcons | rref)  # the request's constraints hold together
    for c in ocons | oref:
        if not _implies(everything_requested, c):
            problems.append(f"offered constraint {_describe(c)} is missing or widened")
    for d in oduties:
        if d not in rduties:
            problems.append(f"offered duty {str(d[1]).removeprefix(ODRL)!r} is missing or changed")
    return problems


def is_within(requested: Policy, offered: Policy) -> MatchResult:
    """Compare a requested policy with an offered one by meaning (see module docstring)."""
    creq, coff = canonical(requested), canonical(offered)
    if creq == coff and _canon_ref(requested.target) == _canon_ref(offered.target):
        return MatchResult(True, True, [])
    reasons: list[str] = []
    if (
        offered.target is not None
        and requested.target is not None
        and requested.target.uid != offered.target.uid
    ):
        reasons.append(f"target {requested.target.uid!r} differs from offered {offered.target.uid!r}")
    req_perms, off_perms = creq[0], coff[0]
    if not req_perms and off_perms:
        reasons.append("the request has no permission")
    for i, rp in enumerate(sorted(req_perms, key=repr)):
        best: list[str] | None = None
        for op in off_perms:
            problems = _rule_within(rp, op)
            if not problems:
                best = []
                break
            if best is None or len(problems) < len(best):
                best = problems
        if best is None:
            reasons.append(f"requested permission {i} has no offered counterpart")
        elif best:
            reasons.extend(f"requested permission {i}: {p}" for p in best)
    for kind, req_set, off_set in (("prohibition", creq[1], coff[1]), ("obligation", creq[2], coff[2])):
        for rule in off_set:
            if rule not in req_set:
                reasons.append(
                    f"offered {kind} about {str(rule[1]).removeprefix(ODRL)!r} is missing or changed"
                )
    if creq[3] != coff[3]:
        reasons.append(f"conflict strategy {creq[3]!r} differs from offered {coff[3]!r}")
    return MatchResult(False, not reasons, reasons)
