"""Access decisions: may this caller see (and be offered) datasets under this access policy?

The catalog asks an :class:`AccessEvaluator` once per access policy per request. The default,
:class:`FailClosedEvaluator`, needs no policy engine and only permits unconditional policies; a
deployment with the ``usage_policy`` engine uses :class:`PolicyEngineEvaluator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from catalog._odrl import policy_has_constraints
from connector.identity import Caller

__all__ = [
    "NO_ENGINE_REASON",
    "AccessDecision",
    "AccessEvaluator",
    "FailClosedEvaluator",
    "PolicyEngineEvaluator",
]

NO_ENGINE_REASON = "access policy has constraints and no policy engine is configured"


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """The outcome of an access check; ``reasons`` explain a denial (and may annotate a permit)."""

    permitted: bool
    reasons: list[str] = field(default_factory=list)


@runtime_checkable
class AccessEvaluator(Protocol):
    """Decides whether ``caller`` satisfies an access ``policy`` (stored ODRL JSON)."""

    def evaluate(self, policy: Mapping[str, Any], caller: Caller) -> AccessDecision: ...


class FailClosedEvaluator:
    """Permits only unconditional policies: permissions without constraints or duties, no prohibitions.

    Anything conditional is denied with :data:`NO_ENGINE_REASON`: without an engine we cannot
    check a constraint, so we never assume it holds.
    """

    def evaluate(self, policy: Mapping[str, Any], caller: Caller) -> AccessDecision:
        if not policy.get("permission"):
            return AccessDecision(False, ["access policy grants no permission"])
        if policy_has_constraints(policy):
            return AccessDecision(False, [NO_ENGINE_REASON])
        return AccessDecision(True, [])


class PolicyEngineEvaluator:
    """Adapter to the ``usage_policy`` engine, evaluating in its CATALOG scope.

    ``context_factory(caller)`` builds the engine's ``EvaluationContext`` for a caller; by default
    ``usage_policy.EvaluationContext.for_caller(caller)`` is used when the engine provides it.
    A policy the engine cannot parse is denied (with the engine's message), never permitted.
    """

    def __init__(self, context_factory: Any = None) -> None:
        import usage_policy

        self._up: Any = usage_policy
        self._context_factory = context_factory

    def _context(self, caller: Caller) -> Any:
        if self._context_factory is not None:
            return self._context_factory(caller)
        ctx_cls = self._up.EvaluationContext
        if hasattr(ctx_cls, "for_caller"):
            return ctx_cls.for_caller(caller)
        return ctx_cls(caller=caller)

    def evaluate(self, policy: Mapping[str, Any], caller: Caller) -> AccessDecision:
        from connector.errors import DadamError

        try:
            parsed = self._up.parse_policy(dict(policy))
            decision = self._up.evaluate(parsed, self._up.Scope.CATALOG, self._context(caller))
        except DadamError as exc:
            return AccessDecision(False, [f"access policy cannot be evaluated: {exc}"])
        reasons = decision.reasons() if callable(getattr(decision, "reasons", None)) else []
        return AccessDecision(bool(decision.permitted), [str(r) for r in reasons])
