"""Management endpoints: validate a policy, evaluate one against a context (dry run).

The integrator mounts :func:`policy_router` under the management API prefix, behind its
authentication. Errors are dadam exceptions (``PolicyError`` 400 for a malformed policy,
``ValidationError`` 400 for a bad context or scope); the management API's handlers turn them
into problem bodies.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from connector.errors import PolicyError, ValidationError
from usage_policy._context import EvaluationContext, Scope
from usage_policy._evaluate import evaluate
from usage_policy._match import is_within
from usage_policy._model import parse_policy
from usage_policy._profile import validate_policy

__all__ = ["policy_router"]


class ValidateBody(BaseModel):
    policy: dict[str, Any] = Field(description="The ODRL policy (compact or expanded JSON-LD).")
    profile: Literal["odrl", "catena-x"] = Field(
        "catena-x", description="odrl: ODRL 2.2 only; catena-x: also the Catena-X profile (CX-0152)."
    )


class EvaluateBody(BaseModel):
    policy: dict[str, Any] = Field(description="The ODRL policy to evaluate.")
    scope: str = Field("usage", description="catalog, negotiation, transfer-start or usage.")
    context: dict[str, Any] = Field(default_factory=dict, description="EvaluationContext fields (JSON).")


class MatchBody(BaseModel):
    requested: dict[str, Any] = Field(description="The requested (or counter-offered) policy.")
    offered: dict[str, Any] = Field(description="The offered policy.")


def policy_router() -> APIRouter:
    """Routes ``POST /policies/validate``, ``/policies/evaluate`` and ``/policies/match``."""
    router = APIRouter(tags=["policies"])

    @router.post("/policies/validate")
    def validate(body: ValidateBody) -> dict[str, Any]:
        """Is this policy well-formed (and Catena-X conformant)? Lists every problem found."""
        try:
            policy = validate_policy(body.policy) if body.profile == "catena-x" else parse_policy(body.policy)
        except PolicyError as exc:
            problems = exc.context.get("problems") or [exc.message]
            return {"valid": False, "profile": body.profile, "problems": problems}
        return {
            "valid": True,
            "profile": body.profile,
            "problems": [],
            "policy": policy.to_dsp(),
            "digest": policy.digest,
        }

    @router.post("/policies/evaluate")
    def evaluate_policy(body: EvaluateBody) -> dict[str, Any]:
        """Dry run: the decision and its explanation for ``context`` in ``scope``."""
        try:
            scope = Scope(body.scope)
        except ValueError as exc:
            raise ValidationError(
                f"unknown scope {body.scope!r} (use one of: {', '.join(s.value for s in Scope)})"
            ) from exc
        policy = parse_policy(body.policy)
        return evaluate(policy, scope, EvaluationContext.from_dict(body.context)).to_dict()

    @router.post("/policies/match")
    def match(body: MatchBody) -> dict[str, Any]:
        """Is the requested policy the offered one, or within it (by meaning)?"""
        return is_within(parse_policy(body.requested), parse_policy(body.offered)).to_dict()

    return router
