"""The SolidLab ODRL test suite (68 cases): our decisions and explanations match every
expected compliance report (rule activation, target/party/action premises, constraints)."""

from __future__ import annotations

from typing import Any

import pytest

import policy_suites as solidlab

from usage_policy import Explanation, Outcome, Scope, evaluate, parse_policy

BASE = solidlab.SPEC / "odrl" / "solidlab-test-suite"
CASES = solidlab.cases(BASE)


def test_all_68_cases_are_found() -> None:
    assert len(CASES) == 68


def _by_uid(root: Explanation) -> dict[str, Explanation]:
    return {node.uid: node for _, node in root.walk() if node.uid}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Any) -> None:
    policy = parse_policy(solidlab.policy_json(case.policy), require_action=False)
    ctx = solidlab.context(case.request, case.sotw)
    decision = evaluate(policy, Scope.USAGE, ctx)
    nodes = _by_uid(decision.explanation)
    for exp in case.expected:
        rule = nodes[exp.rule]
        assert rule.kind == exp.kind.removesuffix("Report").lower()
        assert rule.holds == exp.active, decision.reasons()
        premises = {c.kind: c.holds for c in rule.children if c.kind in ("target", "party", "action")}
        for name, satisfied in exp.premises.items():
            assert premises[name.lower()] == satisfied, (name, decision.reasons())
        for constraint, satisfied in exp.constraints.items():
            assert nodes[constraint].holds == satisfied, (constraint, decision.reasons())
        if exp.kind == "PermissionReport":
            assert decision.permitted == exp.active
        else:
            assert decision.outcome == (Outcome.DENY if exp.active else Outcome.NOT_APPLICABLE)
