"""Usage policy engine benchmark.

Measures, in one process on this machine:

* atomic constraint checks per second (compiled checks of several kinds, explanation node
  included): goal >= 100,000/s;
* full Catena-X PCF usage policy evaluations per second (``evaluate`` with the compiled
  policy cache warm, explanation tree included);
* parse + compile per second (cold: content-hash cache cleared each time);
* a floor: calls per second of a trivial Python function (the better of a measurement at the
  start and one at the end), so figures can be compared across machines as ratios.

Run: ``.venv/bin/python bench/policy.py [--seconds 1.0]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from usage_policy import CATENA_X, EvaluationContext, Scope, evaluate, parse_policy, templates
from usage_policy._evaluate import _BY_DIGEST, _BY_ID, compile_constraint, compile_policy
from usage_policy._model import Constraint

GOAL_ATOMIC_PER_S = 100_000


def _rate(fn: Callable[[], Any], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (batches of 1000 calls)."""
    for _ in range(200):
        fn()
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            fn()
        calls += 1000
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def _atomic(left: str, op: str, right: Any) -> Constraint:
    policy = parse_policy(
        {
            "@type": "Set",
            "permission": [
                {
                    "action": "use",
                    "constraint": [{"leftOperand": left, "operator": op, "rightOperand": right}],
                }
            ],
        }
    )
    constraint = policy.permissions[0].constraints[0]
    assert isinstance(constraint, Constraint)
    return constraint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    seconds: float = args.seconds

    ctx = EvaluationContext(
        now=datetime(2025, 6, 1, tzinfo=UTC),
        bpn="BPNL000000000001",
        did="did:web:consumer.example",
        memberships=frozenset({CATENA_X}),
        framework_agreements=frozenset({"DataExchangeGovernance:1.0"}),
        purpose="cx.pcf.base:1",
    )
    bpns = [f"BPNL{i:012d}" for i in range(1, 51)]

    def floor_fn() -> None:
        return None

    floor = _rate(floor_fn, seconds)

    atomic_cases = {
        "dateTime lt": _atomic("dateTime", "lt", "2030-01-01T00:00:00Z"),
        "BusinessPartnerNumber isAnyOf (50)": _atomic("cx-policy:BusinessPartnerNumber", "isAnyOf", bpns),
        "UsagePurpose isAnyOf": _atomic(
            "cx-policy:UsagePurpose", "isAnyOf", ["cx.pcf.base:1", "cx.quality.base:1"]
        ),
        "FrameworkAgreement eq": _atomic("cx-policy:FrameworkAgreement", "eq", "DataExchangeGovernance:1.0"),
        "count lteq": _atomic("count", "lteq", "1000"),
    }
    atomic: dict[str, float] = {}
    for name, constraint in atomic_cases.items():
        check = compile_constraint(constraint, "bench", "positive")
        assert check(ctx, Scope.USAGE).holds, name

        def run(check: Any = check) -> None:
            check(ctx, Scope.USAGE)

        atomic[name] = _rate(run, seconds)
        print(f"atomic {name:40s} {atomic[name]:>12,.0f} checks/s")
    atomic_min = min(atomic.values())

    pcf = templates.cx_pcf_usage_policy("urn:policy:pcf")
    assert evaluate(pcf, Scope.NEGOTIATION, ctx).permitted
    pcf_rate = _rate(lambda: evaluate(pcf, Scope.NEGOTIATION, ctx), seconds)
    print(f"full PCF policy evaluation (cached)        {pcf_rate:>12,.0f} evaluations/s")

    same_content = templates.cx_pcf_usage_policy("urn:policy:pcf")  # equal policy, new object
    digest_hit = _rate(lambda: compile_policy(templates.cx_pcf_usage_policy("urn:policy:pcf")), seconds / 2)
    assert compile_policy(same_content).permissions is compile_policy(pcf).permissions
    print(f"build + compile, content-hash cache hit     {digest_hit:>12,.0f} policies/s")

    doc = pcf.to_dsp()

    def cold() -> None:
        _BY_DIGEST.clear()
        _BY_ID.clear()
        compile_policy(parse_policy(doc))

    cold_rate = _rate(cold, seconds / 2)
    print(f"parse + compile, cold                       {cold_rate:>12,.0f} policies/s")

    # the machine is shared: take the better of a floor measured first and one measured last
    floor = max(floor, _rate(floor_fn, seconds))
    print(f"floor: trivial Python call                  {floor:>12,.0f} calls/s")

    result = {
        "bench": "policy",
        "seconds_per_measurement": seconds,
        "floor_calls_per_s": round(floor),
        "atomic_checks_per_s": {k: round(v) for k, v in atomic.items()},
        "atomic_checks_per_s_min": round(atomic_min),
        "atomic_goal_per_s": GOAL_ATOMIC_PER_S,
        "atomic_min_vs_goal": round(atomic_min / GOAL_ATOMIC_PER_S, 2),
        "atomic_min_vs_floor": round(atomic_min / floor, 4),
        "pcf_evaluations_per_s": round(pcf_rate),
        "pcf_vs_floor": round(pcf_rate / floor, 4),
        "compile_cache_hit_per_s": round(digest_hit),
        "parse_compile_cold_per_s": round(cold_rate),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
