"""Compile a policy once, evaluate it per request, explain every decision.

``evaluate(policy, scope, context)`` walks every rule and every constraint (nothing is
skipped, nothing silently dropped) and returns a :class:`Decision` with the explanation
tree. Anything we do not understand (left operand, operator, action, right operand) makes
the decision a deny naming it: fail closed.

Compiled policies are cached by content hash (the SHA-256 of their DSP form), and the last
policy objects seen are remembered by identity so the hot path does not even hash.
"""

from __future__ import annotations

import enum
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from usage_policy._context import DutyState, EvaluationContext, Scope
from usage_policy._model import Action, Constraint, ConstraintNode, LogicalConstraint, Policy, Ref, Rule
from usage_policy._operands import MISSING, lookup
from usage_policy._terms import ODRL, OPERATORS, action_covers, expand_token, is_known_action
from usage_policy._values import OperandTypeError, apply_operator, coerce, render

__all__ = [
    "CompiledPolicy",
    "Decision",
    "Explanation",
    "Obligation",
    "Outcome",
    "PriceTerms",
    "compile_policy",
    "evaluate",
]


class Outcome(enum.StrEnum):
    PERMIT = "permit"
    DENY = "deny"
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True, slots=True)
class Explanation:
    """One node of the explanation tree.

    ``outcome`` is one of: satisfied, unsatisfied, deferred (checked in a later scope),
    recorded (contractual term, recorded not checked), error (unsupported / invalid),
    active, inactive, fulfilled, violated, pending, not_required, permit, deny, not_applicable.
    ``holds`` is what the outcome means for the enclosing rule.
    """

    kind: str
    outcome: str
    holds: bool
    label: str
    uid: str | None = None
    left_operand: str | None = None
    left_value: Any = None
    operator: str | None = None
    right_operand: Any = None
    missing: tuple[str, ...] = ()
    note: str | None = None
    children: tuple[Explanation, ...] = ()

    def walk(self, depth: int = 0) -> Iterator[tuple[int, Explanation]]:
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "outcome": self.outcome, "label": self.label}
        if self.uid is not None:
            out["id"] = self.uid
        if self.left_operand is not None:
            out["leftOperand"] = self.left_operand
            out["leftValue"] = render(self.left_value)
            out["operator"] = self.operator
            out["rightOperand"] = render(self.right_operand)
        if self.missing:
            out["missing"] = list(self.missing)
        if self.note:
            out["note"] = self.note
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        return out

    def line(self) -> str:
        """This node as one human-readable sentence."""
        text = f"{self.label}: {self.outcome}"
        if self.left_operand is not None and self.outcome != "error":
            text = f"{self.label}: {self.left_operand} {self.operator} {render(self.right_operand)!r}"
            if self.outcome in ("satisfied", "unsatisfied"):
                empty = isinstance(self.left_value, frozenset) and not self.left_value
                found = "nothing" if self.missing or empty else repr(render(self.left_value))
                text += f" (found {found})"
            text += f" -> {self.outcome}"
        if self.missing:
            text += f"; missing input: {', '.join(self.missing)}"
        if self.note:
            text += f" ({self.note})"
        return text


@dataclass(frozen=True, slots=True)
class PriceTerms:
    """Machine-readable payment terms of a ``compensate`` duty, for the data bank."""

    duty: str | None
    mode: Literal["flat_fee", "metered", "lump_sum", "revenue_share", "price_plan"]
    payees: tuple[str, ...] = ()
    payer: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    unit_of_count: str | None = None
    percentage: Decimal | None = None
    interval: str | None = None
    #: a price plan document by link and hash (``<link>#sha256=<hex>``), resolved by the data bank
    plan: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "duty": self.duty,
            "mode": self.mode,
            "payees": list(self.payees),
            "payer": self.payer,
            "amount": None if self.amount is None else str(self.amount),
            "currency": self.currency,
            "unitOfCount": self.unit_of_count,
            "percentage": None if self.percentage is None else str(self.percentage),
            "interval": self.interval,
            "plan": self.plan,
        }


@dataclass(frozen=True, slots=True)
class Obligation:
    """A duty the requester (or provider) must fulfil: inform, obtainConsent, delete, ..."""

    action: str
    kind: str  # duty, obligation, remedy
    uid: str | None = None
    state: str = "pending"
    deadline: datetime | None = None
    within: timedelta | None = None
    terms: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": self.kind,
            "id": self.uid,
            "state": self.state,
            "deadline": None if self.deadline is None else render(self.deadline),
            "within": None if self.within is None else render(self.within),
            "terms": list(self.terms),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :func:`evaluate`: outcome, the explanation tree, duties to fulfil."""

    outcome: Outcome
    scope: Scope
    explanation: Explanation
    price_terms: tuple[PriceTerms, ...] = ()
    obligations: tuple[Obligation, ...] = ()
    policy_digest: str = ""

    @property
    def permitted(self) -> bool:
        return self.outcome is Outcome.PERMIT

    def reasons(self) -> list[str]:
        """Flat human-readable reasons: the verdict, then every rule and constraint checked."""
        lines = [self.explanation.line()]
        for depth, node in self.explanation.walk():
            if depth == 0:
                continue
            lines.append("  " * (depth - 1) + node.line())
        return lines

    def failures(self) -> list[str]:
        """Only what went wrong, one line each (for short error messages): the verdict, then
        every failing check (constraint, action, target, party, duty) that has no failing
        check below it."""
        if self.permitted:
            return []
        lines = [self.explanation.line()]
        for _, node in self.explanation.walk():
            if node is self.explanation or node.holds or node.kind in ("permission", "prohibition", "policy"):
                continue
            if any(not c.holds for c in node.children):
                continue
            lines.append(node.line())
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "permitted": self.permitted,
            "scope": self.scope.value,
            "policyDigest": self.policy_digest,
            "reasons": self.reasons(),
            "failures": self.failures(),
            "explanation": self.explanation.to_dict(),
            "priceTerms": [p.to_dict() for p in self.price_terms],
            "obligations": [o.to_dict() for o in self.obligations],
        }


# ---------------------------------------------------------------------------------------------
# Constraints

Check = Callable[[EvaluationContext, Scope], Explanation]
_SET_OPERATORS = frozenset({"isAnyOf", "isNoneOf", "isAllOf", "isPartOf", "hasPart", "isA"})
Polarity = Literal["positive", "negative", "terms"]


def _const(node: Explanation) -> Check:
    def run(ctx: EvaluationContext, scope: Scope) -> Explanation:
        return node

    return run


def _error(label: str, uid: str | None, message: str) -> Check:
    return _const(Explanation("constraint", "error", False, label, uid=uid, note=message))


def compile_constraint(c: ConstraintNode, label: str, polarity: Polarity) -> Check:
    """A function ``(ctx, scope) -> Explanation`` for one (logical) constraint.

    ``polarity`` says where it sits: in a permission or duty (positive), in a prohibition
    (negative: a term that cannot be checked now must not trigger the prohibition), or in the
    refinement of a compensate duty (terms: recorded as price terms, not checked).
    """
    if isinstance(c, LogicalConstraint):
        parts = [compile_constraint(o, f"{label}.{c.op}[{i}]", polarity) for i, o in enumerate(c.operands)]
        op = c.op

        def run_logical(ctx: EvaluationContext, scope: Scope) -> Explanation:
            children = tuple(p(ctx, scope) for p in parts)
            if op == "or":
                ok = any(ch.holds for ch in children)
            elif op == "xone":
                ok = sum(1 for ch in children if ch.holds) == 1
            else:
                ok = all(ch.holds for ch in children)
            if any(ch.outcome == "error" for ch in children):  # errors surface, fail closed
                return Explanation(op, "error", False, label, uid=c.uid, children=children)
            return Explanation(
                op, "satisfied" if ok else "unsatisfied", ok, label, uid=c.uid, children=children
            )

        return run_logical
    return _compile_atomic(c, label, polarity)


def _compile_atomic(c: Constraint, label: str, polarity: Polarity) -> Check:
    left_name = c.left.name
    definition = lookup(c.left.iri)
    op_iri = c.operator.iri
    op = op_iri[len(ODRL) :] if op_iri.startswith(ODRL) else op_iri
    if definition is None:
        return _error(label, c.uid, f"unsupported left operand {left_name!r}")
    if op not in OPERATORS:
        return _error(label, c.uid, f"unsupported operator {c.operator.name!r}")
    if op not in definition.allowed_operators():
        return _error(label, c.uid, f"unsupported operator {op!r} for left operand {left_name!r}")
    if c.right is None:
        return _error(label, c.uid, "unsupported rightOperandReference (only literal right operands)")
    kind = definition.kind
    if c.data_type:
        from usage_policy._values import _XSD_KIND

        kind = _XSD_KIND.get(
            expand_token(c.data_type).removeprefix("http://www.w3.org/2001/XMLSchema#"), kind
        )
    try:
        right = coerce(c.right, kind)
    except OperandTypeError as exc:
        return _error(label, c.uid, f"invalid right operand for {left_name}: {exc}")
    if op in ("isAnyOf", "isNoneOf", "isAllOf", "isPartOf", "hasPart") and not isinstance(right, tuple):
        right = (right,)
    base = {"uid": c.uid, "left_operand": left_name, "operator": op, "right_operand": right}
    # set operators compare against a frozenset built once, not per check
    right_cmp: Any = frozenset(right) if isinstance(right, tuple) and op in _SET_OPERATORS else right
    if polarity == "terms" or definition.mode in ("recorded", "price"):
        note = (
            "payment term"
            if polarity == "terms"
            else "contractual term: recorded in the agreement, not checkable"
        )
        return _const(
            Explanation(
                "constraint", "recorded", polarity != "negative", label, note=note, left_value=MISSING, **base
            )
        )
    resolve = definition.resolve
    compare = definition.compare or apply_operator
    scopes = definition.scopes
    positive = polarity == "positive"
    later = ", ".join(s.value for s in sorted(scopes, key=list(Scope).index))
    needs_coercion = kind in ("datetime", "integer", "decimal", "duration")
    missing = (definition.input,)

    def run(ctx: EvaluationContext, scope: Scope) -> Explanation:
        if scope not in scopes:
            return Explanation(
                "constraint",
                "deferred",
                positive,
                label,
                note=f"checked in scope {later}",
                left_value=MISSING,
                **base,
            )
        left = resolve(ctx)
        if left is MISSING:
            return Explanation(
                "constraint", "unsatisfied", False, label, left_value=MISSING, missing=missing, **base
            )
        try:
            if needs_coercion and isinstance(left, str):
                left = coerce(left, kind)
            ok = compare(op, left, right_cmp)
        except (OperandTypeError, TypeError, ValueError) as exc:
            return Explanation("constraint", "error", False, label, left_value=left, note=str(exc), **base)
        return Explanation(
            "constraint", "satisfied" if ok else "unsatisfied", ok, label, left_value=left, **base
        )

    return run


# ---------------------------------------------------------------------------------------------
# Rules


def _ref_label(ref: Ref) -> str:
    return ref.uid or ref.source or "<collection>"


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: Rule
    label: str
    action_iri: str | None
    action_error: str | None
    refinement: tuple[Check, ...]
    target: Ref | None
    assignee: Ref | None
    constraints: tuple[Check, ...]
    duties: tuple[_CompiledRule, ...]
    remedies: tuple[_CompiledRule, ...]


#: Payment terms of a compensate duty. ODRL puts them in the action's refinement; the DSP wire
#: form has a plain-string action and cannot carry one, so on a compensate duty they are also
#: read from its constraints, as terms (recorded, priced), not as conditions of the duty.
PRICE_PLAN = "https://w3id.org/dadam/v1/pricePlan"
_PAYMENT_TERMS = frozenset(ODRL + n for n in ("payAmount", "unitOfCount", "percentage", "timeInterval")) | {
    PRICE_PLAN
}


def _is_payment_term(c: Any) -> bool:
    left = getattr(c, "left", None)
    return left is not None and getattr(left, "iri", None) in _PAYMENT_TERMS


def _compile_rule(rule: Rule, label: str, policy: Policy) -> _CompiledRule:
    polarity: Polarity = "negative" if rule.kind == "prohibition" else "positive"
    action_iri: str | None = None
    action_error: str | None = None
    refinement: tuple[Check, ...] = ()
    action: Action | None = rule.action
    is_duty = rule.kind in ("duty", "obligation", "remedy", "consequence")
    if action is not None:
        action_iri = action.name.iri
        if not is_known_action(action_iri):
            action_error = f"unsupported action {action.name.name!r}"
        # a refinement narrows which actions the rule is about: in a prohibition, a refinement
        # that cannot be checked yet must not make the prohibition bite
        ref_polarity: Polarity = "terms" if is_duty else polarity
        refinement = tuple(
            compile_constraint(c, f"{label}.action.refinement[{i}]", ref_polarity)
            for i, c in enumerate(action.refinement)
        )
    inherit = rule.kind in ("permission", "prohibition", "obligation")
    return _CompiledRule(
        rule=rule,
        label=label,
        action_iri=action_iri,
        action_error=action_error,
        refinement=refinement,
        target=rule.target or (policy.target if inherit else None),
        assignee=rule.assignee or (policy.assignee if inherit else None),
        constraints=tuple(
            compile_constraint(
                c,
                f"{label}.constraint[{i}]",
                "terms"
                if is_duty and action_iri == ODRL + "compensate" and _is_payment_term(c)
                else polarity,
            )
            for i, c in enumerate(rule.constraints)
        ),
        duties=tuple(_compile_rule(d, f"{label}.duty[{i}]", policy) for i, d in enumerate(rule.duties)),
        remedies=tuple(_compile_rule(d, f"{label}.remedy[{i}]", policy) for i, d in enumerate(rule.remedies)),
    )


def _action_node(cr: _CompiledRule, requested: str, ctx: EvaluationContext, scope: Scope) -> Explanation:
    label = f"{cr.label}.action"
    if cr.action_iri is None:
        return Explanation(
            "action", "satisfied", True, label, note="rule names no action: applies to every action"
        )
    name = cr.rule.action.name.name if cr.rule.action else ""
    if cr.action_error:
        return Explanation("action", "error", False, label, note=cr.action_error)
    covers = action_covers(cr.action_iri, requested)
    refined = tuple(r(ctx, scope) for r in cr.refinement)
    if any(r.outcome == "error" for r in refined):
        return Explanation("action", "error", False, label, children=refined)
    ok = covers and all(r.holds for r in refined)
    note = f"rule action {name!r} {'covers' if covers else 'does not cover'} requested {_short(requested)!r}"
    return Explanation("action", "satisfied" if ok else "unsatisfied", ok, label, note=note, children=refined)


def _short(iri: str) -> str:
    return iri[len(ODRL) :] if iri.startswith(ODRL) else iri


def _target_node(cr: _CompiledRule, ctx: EvaluationContext) -> Explanation | None:
    ref = cr.target
    if ref is None:
        return None
    label = f"{cr.label}.target"
    want = _ref_label(ref)
    if ref.refinement:
        return Explanation(
            "target", "error", False, label, note="unsupported refinement on an asset collection"
        )
    if ctx.target is None:
        return Explanation(
            "target", "satisfied", True, label, note=f"no target in request; rule target {want}"
        )
    ok = ctx.target == ref.uid or (ref.uid is not None and ref.uid in ctx.asset_collections)
    ok = ok or (ref.source is not None and (ref.source == ctx.target or ref.source in ctx.asset_collections))
    return Explanation(
        "target",
        "satisfied" if ok else "unsatisfied",
        ok,
        label,
        note=f"rule target {want}, requested {ctx.target}",
    )


def _party_node(cr: _CompiledRule, ctx: EvaluationContext) -> Explanation | None:
    ref = cr.assignee
    if ref is None:
        return None
    label = f"{cr.label}.assignee"
    want = _ref_label(ref)
    if ref.refinement:
        return Explanation(
            "party", "error", False, label, note="unsupported refinement on a party collection"
        )
    ids = ctx.identities()
    if not ids:
        return Explanation(
            "party", "unsatisfied", False, label, missing=("did/bpn/party",), note=f"assignee {want}"
        )
    names = {n for n in (ref.uid, ref.source) if n}
    ok = bool(names & ids) or bool(names & ctx.party_collections)
    who = ", ".join(sorted(ids))
    return Explanation(
        "party", "satisfied" if ok else "unsatisfied", ok, label, note=f"assignee {want}, requester {who}"
    )


@dataclass
class _Acc:
    price_terms: list[PriceTerms] = field(default_factory=list)
    obligations: list[Obligation] = field(default_factory=list)


def _price_terms(cr: _CompiledRule) -> PriceTerms | None:
    action = cr.rule.action
    if action is None or action.name.iri != ODRL + "compensate":
        return None
    amount = currency = unit_of_count = interval = plan = None
    percentage = None
    for c in _atoms(action.refinement + cr.rule.constraints):
        name = c.left.iri.removeprefix(ODRL)
        if c.left.iri == PRICE_PLAN:
            plan = str(c.right)
            continue
        try:
            if name == "payAmount":
                amount = coerce(c.right, "decimal")
                currency = c.unit
            elif name == "percentage":
                percentage = coerce(c.right, "decimal")
            elif name == "unitOfCount":
                unit_of_count = str(coerce(c.right, "string"))
            elif name == "timeInterval":
                interval = str(c.right)
        except OperandTypeError:
            continue
    mode: Literal["flat_fee", "metered", "lump_sum", "revenue_share", "price_plan"]
    if plan is not None:
        mode = "price_plan"
    elif percentage is not None:
        mode = "revenue_share"
    elif unit_of_count is not None:
        mode = "metered"
    elif interval is not None:
        mode = "flat_fee"
    else:
        mode = "lump_sum"
    payees = cr.rule.extra.get("odrl:compensatedParty", cr.rule.extra.get("compensatedParty", ()))
    payees = (payees,) if isinstance(payees, str) else tuple(str(p) for p in payees)
    payer = cr.assignee.uid if cr.assignee is not None else None
    return PriceTerms(
        cr.rule.uid, mode, payees, payer, amount, currency, unit_of_count, percentage, interval, plan
    )


def _atoms(nodes: tuple[ConstraintNode, ...]) -> Iterator[Constraint]:
    for n in nodes:
        if isinstance(n, LogicalConstraint):
            yield from _atoms(n.operands)
        else:
            yield n


def _deadline(cr: _CompiledRule, ctx: EvaluationContext) -> tuple[datetime | None, timedelta | None]:
    action = cr.rule.action
    deadline: datetime | None = None
    within: timedelta | None = None
    for c in _atoms(action.refinement if action else ()):
        name = c.left.iri.removeprefix(ODRL)
        try:
            if name == "dateTime" and c.operator.iri.removeprefix(ODRL) in ("lt", "lteq", "eq"):
                deadline = coerce(c.right, "datetime")
            elif name in ("elapsedTime", "delayPeriod") and c.operator.iri.removeprefix(ODRL) in (
                "lt",
                "lteq",
                "eq",
            ):
                within = coerce(c.right, "duration")
        except OperandTypeError:
            continue
    if deadline is None and within is not None and ctx.usage.agreed_at is not None:
        deadline = ctx.usage.agreed_at + within
    return deadline, within


_AGREEMENT_SCOPES = frozenset({Scope.CATALOG, Scope.NEGOTIATION})
_AFTER_USE_ACTIONS = frozenset({ODRL + "delete", ODRL + "inform"})


def _eval_duty(cr: _CompiledRule, ctx: EvaluationContext, scope: Scope, acc: _Acc) -> Explanation:
    """A duty (or policy obligation): required if its constraints hold; its state is known
    from ``duty_states`` (by ``@id``) or, for compensate, from the payment state."""
    action_name = cr.rule.action.name.name if cr.rule.action else "?"
    label = f"{cr.label} ({action_name})"
    children: list[Explanation] = []
    if cr.action_error:
        return Explanation(cr.rule.kind, "error", False, label, uid=cr.rule.uid, note=cr.action_error)
    refined = tuple(r(ctx, scope) for r in cr.refinement)
    children.extend(refined)
    conds = tuple(c(ctx, scope) for c in cr.constraints)
    children.extend(conds)
    if any(ch.outcome == "error" for ch in children):
        return Explanation(cr.rule.kind, "error", False, label, uid=cr.rule.uid, children=tuple(children))
    if not all(ch.holds for ch in conds):
        return Explanation(
            cr.rule.kind,
            "not_required",
            True,
            label,
            uid=cr.rule.uid,
            note="its constraints do not hold, so it is not due",
            children=tuple(children),
        )
    state = ctx.duty_states.get(cr.rule.uid) if cr.rule.uid else None
    is_compensate = cr.action_iri == ODRL + "compensate"
    if state is None and is_compensate and ctx.payment.overdue:
        state = DutyState.VIOLATED
    if state is None and is_compensate and ctx.payment.account_open:
        state = DutyState.PENDING
    if state is None and (scope in _AGREEMENT_SCOPES or cr.action_iri in _AFTER_USE_ACTIONS):
        state = DutyState.PENDING
    terms = _price_terms(cr)
    if terms is not None and state is not DutyState.FULFILLED:
        acc.price_terms.append(terms)
    if state is None:
        return Explanation(
            cr.rule.kind,
            "unfulfilled",
            False,
            label,
            uid=cr.rule.uid,
            missing=(f"duty_states[{cr.rule.uid or action_name}]",),
            note="must be fulfilled before use, and is not known to be",
            children=tuple(children),
        )
    if state is DutyState.PENDING:
        deadline, within = _deadline(cr, ctx)
        acc.obligations.append(
            Obligation(
                action=action_name,
                kind=cr.rule.kind,
                uid=cr.rule.uid,
                state=state.value,
                deadline=deadline,
                within=within,
                terms=tuple(c.to_json() for c in _atoms(cr.rule.action.refinement if cr.rule.action else ()))
                + tuple(c.to_json() for c in cr.rule.constraints),
            )
        )
    ok = state is not DutyState.VIOLATED
    note = {"pending": "to be fulfilled", "fulfilled": "fulfilled", "violated": "violated"}[state.value]
    return Explanation(
        cr.rule.kind, state.value, ok, label, uid=cr.rule.uid, note=note, children=tuple(children)
    )


def _eval_rule(
    cr: _CompiledRule, requested: str, ctx: EvaluationContext, scope: Scope, acc: _Acc
) -> Explanation:
    children: list[Explanation] = []
    action_node = _action_node(cr, requested, ctx, scope)
    children.append(action_node)
    for node in (_target_node(cr, ctx), _party_node(cr, ctx)):
        if node is not None:
            children.append(node)
    children.extend(c(ctx, scope) for c in cr.constraints)
    premises_ok = all(ch.holds for ch in children)
    duty_nodes: list[Explanation] = []
    if premises_ok and cr.rule.kind == "permission":
        sub = _Acc()
        duty_nodes = [_eval_duty(d, ctx, scope, sub) for d in cr.duties]
        if all(d.holds for d in duty_nodes):
            acc.price_terms.extend(sub.price_terms)
            acc.obligations.extend(sub.obligations)
    if premises_ok and cr.rule.kind == "prohibition":
        sub = _Acc()
        for r in cr.remedies:
            _eval_duty(r, ctx, scope, sub)
        acc.obligations.extend(sub.obligations)
    children.extend(duty_nodes)
    has_error = any(node.outcome == "error" for node in children)
    active = premises_ok and all(d.holds for d in duty_nodes) and not has_error
    name = cr.rule.action.name.name if cr.rule.action else "any action"
    outcome = "error" if has_error else ("active" if active else "inactive")
    return Explanation(
        cr.rule.kind, outcome, active, f"{cr.label} ({name})", uid=cr.rule.uid, children=tuple(children)
    )


def _walk_all(nodes: list[Explanation]) -> Iterator[tuple[int, Explanation]]:
    for n in nodes:
        yield from n.walk()


# ---------------------------------------------------------------------------------------------
# Policies


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A policy turned into check functions; evaluate it with :meth:`evaluate`."""

    policy: Policy
    digest: str
    permissions: tuple[_CompiledRule, ...]
    prohibitions: tuple[_CompiledRule, ...]
    obligations: tuple[_CompiledRule, ...]
    conflict: str

    def evaluate(self, scope: Scope, ctx: EvaluationContext) -> Decision:
        requested_token = ctx.action or scope.default_action
        requested = _expand_requested(requested_token)
        acc = _Acc()
        label = f"{self.policy.type} {self.policy.uid or ''}".strip()
        if self.policy.inherit_from is not None:
            root = Explanation(
                "policy",
                "deny",
                False,
                label,
                note="unsupported inheritFrom: resolve the parent policy first",
            )
            return Decision(Outcome.DENY, scope, root, policy_digest=self.digest)
        if not is_known_action(requested):
            root = Explanation(
                "policy", "deny", False, label, note=f"unsupported action {requested_token!r} requested"
            )
            return Decision(Outcome.DENY, scope, root, policy_digest=self.digest)
        perms = [_eval_rule(r, requested, ctx, scope, acc) for r in self.permissions]
        prohibs = [_eval_rule(r, requested, ctx, scope, acc) for r in self.prohibitions]
        oblig_acc = _Acc()
        obligs = [_eval_duty(r, ctx, scope, oblig_acc) for r in self.obligations]
        children = tuple(perms + prohibs + obligs)
        errors = (
            [n for _, n in _walk_all(list(children)) if n.outcome == "error" and n.note]
            if any(c.outcome == "error" for c in children)
            else []
        )
        granted = any(p.holds for p in perms)
        forbidden = any(p.holds for p in prohibs)
        obligation_violated = any(not o.holds for o in obligs)
        note: str
        if errors:
            outcome = Outcome.DENY
            note = "fail closed: " + "; ".join(sorted({e.note or "" for e in errors}))
        elif forbidden and granted:
            if self.conflict == "perm":
                outcome, note = (
                    Outcome.PERMIT,
                    "permission and prohibition both apply; conflict strategy perm",
                )
            elif self.conflict == "prohibit":
                outcome, note = (
                    Outcome.DENY,
                    "permission and prohibition both apply; conflict strategy prohibit",
                )
            else:
                outcome, note = (
                    Outcome.DENY,
                    "permission and prohibition both apply; conflict strategy invalid",
                )
        elif forbidden:
            outcome, note = Outcome.DENY, "a prohibition applies"
        elif granted and obligation_violated:
            outcome, note = Outcome.DENY, "a policy obligation is violated"
        elif granted:
            outcome, note = Outcome.PERMIT, "a permission grants the request"
        elif any(_action_applies(r, requested) for r in self.permissions):
            outcome, note = Outcome.DENY, "no permission grants the request"
        else:
            outcome, note = Outcome.NOT_APPLICABLE, f"no rule of this policy is about {requested_token!r}"
        if outcome is Outcome.PERMIT:
            acc.obligations.extend(oblig_acc.obligations)
            acc.price_terms.extend(oblig_acc.price_terms)
        root = Explanation(
            "policy",
            outcome.value,
            outcome is Outcome.PERMIT,
            label,
            uid=self.policy.uid,
            note=note,
            children=children,
        )
        if outcome is not Outcome.PERMIT:
            return Decision(outcome, scope, root, policy_digest=self.digest)
        return Decision(outcome, scope, root, tuple(acc.price_terms), tuple(acc.obligations), self.digest)


@functools.lru_cache(maxsize=1024)
def _expand_requested(token: str) -> str:
    return expand_token(token)


def _action_applies(cr: _CompiledRule, requested: str) -> bool:
    return cr.action_iri is None or action_covers(cr.action_iri, requested)


_BY_DIGEST: OrderedDict[str, CompiledPolicy] = OrderedDict()
_BY_ID: OrderedDict[int, CompiledPolicy] = OrderedDict()
_CACHE_SIZE = 4096


def compile_policy(policy: Policy) -> CompiledPolicy:
    """The compiled form of ``policy`` (cached by identity, then by content hash)."""
    hit = _BY_ID.get(id(policy))
    if hit is not None and hit.policy is policy:
        return hit
    digest = policy.digest
    compiled = _BY_DIGEST.get(digest)
    if compiled is None:
        compiled = CompiledPolicy(
            policy=policy,
            digest=digest,
            permissions=tuple(
                _compile_rule(r, f"permission[{i}]", policy) for i, r in enumerate(policy.permissions)
            ),
            prohibitions=tuple(
                _compile_rule(r, f"prohibition[{i}]", policy) for i, r in enumerate(policy.prohibitions)
            ),
            obligations=tuple(
                _compile_rule(r, f"obligation[{i}]", policy) for i, r in enumerate(policy.obligations)
            ),
            conflict=(policy.conflict or "invalid").removeprefix("odrl:").removeprefix(ODRL),
        )
        _BY_DIGEST[digest] = compiled
        if len(_BY_DIGEST) > _CACHE_SIZE:
            _BY_DIGEST.popitem(last=False)
    # remember this object too; the compiled rules reference the first equal policy, which is fine
    bound = compiled if compiled.policy is policy else _rebind(compiled, policy)
    _BY_ID[id(policy)] = bound
    if len(_BY_ID) > _CACHE_SIZE:
        _BY_ID.popitem(last=False)
    return bound


def _rebind(compiled: CompiledPolicy, policy: Policy) -> CompiledPolicy:
    return CompiledPolicy(
        policy,
        compiled.digest,
        compiled.permissions,
        compiled.prohibitions,
        compiled.obligations,
        compiled.conflict,
    )


def evaluate(policy: Policy, scope: Scope, context: EvaluationContext) -> Decision:
    """Decide whether ``context`` (who, what, when, why) is allowed under ``policy`` in ``scope``."""
    return compile_policy(policy).evaluate(Scope(scope), context)
