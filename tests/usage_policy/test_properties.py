"""Property tests: logical constraints obey boolean algebra, operators obey their algebra,
round-trips are lossless, and malformed input always gives a PolicyError (never a crash)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import PolicyError
from usage_policy import EvaluationContext, Scope, evaluate, is_within, parse_policy
from usage_policy._values import apply_operator

NOW = datetime(2025, 1, 1, tzinfo=UTC)
PURPOSES = ["a", "b", "c"]

atoms = st.builds(
    lambda op, p: {"leftOperand": "purpose", "operator": op, "rightOperand": p},
    st.sampled_from(["eq", "neq"]),
    st.sampled_from(PURPOSES),
)


def _truth(node: dict[str, Any], purpose: str) -> bool:
    for op in ("and", "or", "xone", "andSequence"):
        if op in node:
            values = [_truth(c, purpose) for c in node[op]]
            if op == "or":
                return any(values)
            if op == "xone":
                return sum(values) == 1
            return all(values)
    if node["operator"] == "eq":
        return bool(purpose == node["rightOperand"])
    return bool(purpose != node["rightOperand"])


constraints = st.recursive(
    atoms,
    lambda children: st.builds(
        lambda op, items: {op: items},
        st.sampled_from(["and", "or", "xone", "andSequence"]),
        st.lists(children, min_size=1, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(constraints, st.sampled_from(PURPOSES))
def test_logical_constraints_match_boolean_semantics(tree: dict[str, Any], purpose: str) -> None:
    policy = parse_policy({"@type": "Set", "permission": [{"action": "use", "constraint": [tree]}]})
    decision = evaluate(policy, Scope.USAGE, EvaluationContext(now=NOW, purpose=purpose))
    assert decision.permitted == _truth(tree, purpose)
    assert parse_policy(policy.to_dsp()) == policy


@settings(max_examples=150, deadline=None)
@given(constraints, st.sampled_from(PURPOSES))
def test_prohibition_is_the_mirror_of_permission(tree: dict[str, Any], purpose: str) -> None:
    policy = parse_policy(
        {
            "@type": "Set",
            "permission": [{"action": "use"}],
            "prohibition": [{"action": "use", "constraint": [tree]}],
            "conflict": "prohibit",
        }
    )
    decision = evaluate(policy, Scope.USAGE, EvaluationContext(now=NOW, purpose=purpose))
    assert decision.permitted == (not _truth(tree, purpose))


ints = st.integers(min_value=-1000, max_value=1000)


@given(ints, ints)
def test_ordered_operators_are_consistent(a: int, b: int) -> None:
    lt, lteq, gt, gteq = (apply_operator(op, a, b) for op in ("lt", "lteq", "gt", "gteq"))
    eq, neq = apply_operator("eq", a, b), apply_operator("neq", a, b)
    assert lteq == (lt or eq) and gteq == (gt or eq)
    assert lt == (not gteq) and gt == (not lteq)
    assert eq != neq
    assert apply_operator("lt", a, b) == apply_operator("gt", b, a)


sets = st.frozensets(st.sampled_from("abcdef"), min_size=1, max_size=6)


@given(sets, sets)
def test_set_operators_are_consistent(left: frozenset[str], right: frozenset[str]) -> None:
    r = tuple(sorted(right))
    assert apply_operator("isAnyOf", left, r) != apply_operator("isNoneOf", left, r)
    assert apply_operator("isAllOf", left, r) == right.issubset(left)
    assert apply_operator("hasPart", left, r) == apply_operator("isAllOf", left, r)
    assert apply_operator("isPartOf", left, r) == left.issubset(right)
    if apply_operator("isAllOf", left, r):
        assert apply_operator("isAnyOf", left, r)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=60), st.integers(min_value=0, max_value=60))
def test_narrower_time_window_is_within_a_wider_one(a: int, b: int) -> None:
    def window(days: int) -> Any:
        end = (NOW + timedelta(days=days)).isoformat()
        return parse_policy(
            {
                "@type": "Offer",
                "permission": [
                    {
                        "action": "use",
                        "constraint": [{"leftOperand": "dateTime", "operator": "lteq", "rightOperand": end}],
                    }
                ],
            }
        )

    assert bool(is_within(window(a), window(b))) == (a <= b)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "action",
                    "constraint",
                    "permission",
                    "leftOperand",
                    "operator",
                    "rightOperand",
                    "and",
                    "@type",
                    "duty",
                    "target",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_malformed_input_gives_a_policy_error_not_a_crash(doc: Any) -> None:
    wrapped = (
        {"@type": "Set", "permission": [doc]} if not isinstance(doc, dict) or "@type" not in doc else doc
    )
    try:
        policy = parse_policy(wrapped)
    except PolicyError as exc:
        message = str(exc)
        policy = None
    if policy is None:
        assert message
        return
    evaluate(policy, Scope.USAGE, EvaluationContext(now=NOW))  # must not raise


@settings(max_examples=100, deadline=None)
@given(constraints, constraints)
def test_matching_is_reflexive_and_equality_symmetric(a: dict[str, Any], b: dict[str, Any]) -> None:
    pa = parse_policy({"@type": "Offer", "permission": [{"action": "use", "constraint": [a]}]})
    pb = parse_policy({"@type": "Offer", "permission": [{"action": "use", "constraint": [b]}]})
    assert is_within(pa, pa).equal
    assert is_within(pa, pb).equal == is_within(pb, pa).equal
    if is_within(pa, pb).equal:
        assert is_within(pa, pb).within


def test_the_engine_does_not_load_pyld() -> None:
    """JSON-LD processing stays off the hot path: importing and using the engine never loads pyld."""
    import subprocess
    import sys

    code = (
        "import sys, usage_policy as up;"
        "p = up.templates.cx_pcf_usage_policy();"
        "up.evaluate(p, up.Scope.NEGOTIATION, up.EvaluationContext());"
        "up.validate_policy(p.to_dsp());"
        "print('pyld' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


@settings(max_examples=200, deadline=None)
@given(constraints, constraints)
def test_within_is_sound(a: dict[str, Any], b: dict[str, Any]) -> None:
    """If a request is judged within an offer, whatever the request permits the offer permits."""
    req = parse_policy({"@type": "Offer", "permission": [{"action": "use", "constraint": [a]}]})
    off = parse_policy({"@type": "Offer", "permission": [{"action": "use", "constraint": [b]}]})
    if not is_within(req, off).within:
        return
    for purpose in [*PURPOSES, "other"]:
        ctx = EvaluationContext(now=NOW, purpose=purpose)
        if evaluate(req, Scope.USAGE, ctx).permitted:
            assert evaluate(off, Scope.USAGE, ctx).permitted, purpose
