"""Access decisions: may this caller see (and be offered) datasets under this access policy?

The catalog asks an :class:`AccessEvaluator` once per access policy per request. The default,
:class:`FailClosedEvaluator`, needs no policy engine and only permits unconditional policies; a
deployment with the ``usage_policy`` engine uses :class:`PolicyEngineEvaluator`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from catalog._odrl import policy_has_constraints
from connector.errors import DadamError
from connector.identity import Caller

__all__ = [
    "NO_ENGINE_REASON",
    "AccessDecision",
    "AccessEvaluator",
    "FailClosedEvaluator",
    "PolicyEngineEvaluator",
    "caller_context",
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


def caller_context(caller: Caller) -> Any:
    """The ``usage_policy.EvaluationContext`` for a verified DSP caller (claims as the engine names them)."""
    from usage_policy import EvaluationContext

    claims = caller.claims

    def _set(name: str) -> frozenset[str]:
        value = claims.get(name) or ()
        if isinstance(value, str):
            value = (value,)
        return frozenset(str(v) for v in value)

    return EvaluationContext(
        did=caller.did,
        bpn=claims.get("bpn"),
        memberships=_set("memberships"),
        framework_agreements=_set("framework_agreements"),
        credentials=_set("credentials"),
        groups=_set("bpn_groups") | _set("groups"),
        region=claims.get("region"),
        claims=dict(claims),
    )


class PolicyEngineEvaluator:
    """Adapter to the ``usage_policy`` engine, evaluating access policies in its CATALOG scope.

    ``context_factory(caller)`` builds the engine's ``EvaluationContext``; the default
    :func:`caller_context` maps the caller's verified claims. A policy the engine cannot parse or
    evaluate is denied with the engine's message, never permitted.
    """

    def __init__(self, context_factory: Callable[[Caller], Any] | None = None) -> None:
        self._context_factory = context_factory or caller_context

    def evaluate(self, policy: Mapping[str, Any], caller: Caller) -> AccessDecision:
        import usage_policy

        try:
            parsed = usage_policy.parse_policy(dict(policy))
            decision = usage_policy.evaluate(
                parsed, usage_policy.Scope.CATALOG, self._context_factory(caller)
            )
        except DadamError as exc:
            return AccessDecision(False, [f"access policy cannot be evaluated: {exc}"])
        return AccessDecision(bool(decision.permitted), [str(r) for r in decision.reasons()])
