"""Usage policy engine: ODRL 2.2 with the Catena-X profile, fail-closed and explainable.

Parse a policy (:func:`parse_policy`, or :func:`validate_policy` to also enforce the
Catena-X profile), evaluate it for a scope and a verified context (:func:`evaluate`), match a
requested policy against an offer (:func:`is_within`), or start from a ready-made policy in
:mod:`usage_policy.templates`.
"""

from __future__ import annotations

from usage_policy import templates as templates  # public module (not in __all__: modules are not names)
from usage_policy._context import (
    CATENA_X,
    DutyState,
    EvaluationContext,
    PaymentState,
    Scope,
    UsageState,
    context_from_credentials,
)
from usage_policy._evaluate import (
    Decision,
    Explanation,
    Obligation,
    Outcome,
    PriceTerms,
    compile_policy,
    evaluate,
)
from usage_policy._match import MatchResult, is_within
from usage_policy._model import (
    Action,
    Constraint,
    LogicalConstraint,
    Policy,
    Ref,
    Rule,
    Term,
    parse_policy,
)
from usage_policy._operands import MISSING, left_operand
from usage_policy._profile import validate_cx_constraint, validate_policy

__all__ = [
    "CATENA_X",
    "MISSING",
    "Action",
    "Constraint",
    "Decision",
    "DutyState",
    "EvaluationContext",
    "Explanation",
    "LogicalConstraint",
    "MatchResult",
    "Obligation",
    "Outcome",
    "PaymentState",
    "Policy",
    "PriceTerms",
    "Ref",
    "Rule",
    "Scope",
    "Term",
    "UsageState",
    "compile_policy",
    "context_from_credentials",
    "evaluate",
    "is_within",
    "left_operand",
    "parse_policy",
    "validate_cx_constraint",
    "validate_policy",
]
