"""Evaluation: fail closed, typed operators, scopes, conflicts, Catena-X claims, duties,
usage limits and the explanation a user reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from usage_policy import (
    CATENA_X,
    DutyState,
    EvaluationContext,
    Outcome,
    PaymentState,
    Scope,
    UsageState,
    evaluate,
    parse_policy,
    templates,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BPN = "BPNL000000000001"


def _perm(*constraints: dict[str, Any], action: str = "use", **extra: Any) -> Any:
    return parse_policy(
        {"@type": "Set", "permission": [{"action": action, "constraint": list(constraints)}], **extra}
    )


def _c(left: str, op: str, right: Any, **kw: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": op, "rightOperand": right, **kw}


def _ctx(**kw: Any) -> EvaluationContext:
    kw.setdefault("now", NOW)
    return EvaluationContext(**kw)


# --- fail closed ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (_c("partner", "eq", "gold"), "unsupported left operand 'partner'"),
        (_c("dateTime", "within", "2020-01-01"), "unsupported operator"),
        (
            _c("dateTime", "isAnyOf", ["2020-01-01"]),
            "unsupported operator 'isAnyOf' for left operand 'dateTime'",
        ),
        (_c("dateTime", "lt", "yesterday"), "invalid right operand for dateTime"),
        (_c("count", "lt", "many"), "invalid right operand for count"),
        (
            {"leftOperand": "dateTime", "operator": "lt", "rightOperandReference": "http://x/ref"},
            "rightOperandReference",
        ),
    ],
)
def test_unsupported_or_invalid_denies_and_says_why(constraint: dict[str, Any], message: str) -> None:
    # even inside an "or" whose other branch holds, and in every scope
    policy = _perm({"or": [constraint, _c("dateTime", "gt", "2000-01-01T00:00:00Z")]})
    for scope in Scope:
        decision = evaluate(policy, scope, _ctx())
        assert decision.outcome is Outcome.DENY
        assert message in decision.reasons()[0]


def test_unsupported_constraint_in_a_prohibition_still_denies() -> None:
    policy = parse_policy(
        {
            "@type": "Set",
            "permission": [{"action": "use"}],
            "prohibition": [{"action": "use", "constraint": [_c("mood", "eq", "bad")]}],
        }
    )
    decision = evaluate(policy, Scope.USAGE, _ctx())
    assert decision.outcome is Outcome.DENY and "unsupported left operand 'mood'" in decision.reasons()[0]


def test_unknown_actions_deny() -> None:
    policy = parse_policy({"@type": "Set", "permission": [{"action": "teleport"}]})
    assert "unsupported action 'teleport'" in evaluate(policy, Scope.USAGE, _ctx()).reasons()[0]
    policy = parse_policy({"@type": "Set", "permission": [{"action": "use"}]})
    decision = evaluate(policy, Scope.USAGE, _ctx(action="teleport"))
    assert decision.outcome is Outcome.DENY and "unsupported action 'teleport'" in decision.reasons()[0]


def test_nothing_is_dropped_every_constraint_is_explained() -> None:
    policy = _perm(
        _c("dateTime", "lt", "2030-01-01T00:00:00Z"),
        {"and": [_c("count", "lteq", "5"), _c("purpose", "eq", "research")]},
    )
    decision = evaluate(policy, Scope.USAGE, _ctx(purpose="research"))
    leaves = [n for _, n in decision.explanation.walk() if n.kind == "constraint"]
    assert [n.left_operand for n in leaves] == ["dateTime", "count", "purpose"]
    assert all(n.outcome == "satisfied" for n in leaves)
    as_dict = decision.to_dict()
    assert as_dict["outcome"] == "permit" and as_dict["permitted"] is True
    leaf = as_dict["explanation"]["children"][0]["children"][1]
    assert leaf["leftValue"] == "2025-06-01T12:00:00Z" and leaf["operator"] == "lt"


def test_missing_input_is_reported() -> None:
    decision = evaluate(_perm(_c("purpose", "eq", "research")), Scope.USAGE, _ctx())
    assert not decision.permitted
    assert any("missing input: purpose" in r for r in decision.reasons())


# --- operators and types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("constraint", "ctx", "expected"),
    [
        (_c("dateTime", "eq", "2025-06-01T12:00:00Z"), {}, True),
        (_c("dateTime", "neq", "2025-06-01T12:00:00Z"), {}, False),
        (_c("dateTime", "lt", "2025-06-01T12:00:01+00:00"), {}, True),
        (_c("dateTime", "lteq", {"@value": "2025-06-01", "@type": "xsd:date"}), {}, False),
        (_c("dateTime", "gt", "2025-06-01T14:00:00+02:00"), {}, False),  # same instant
        (_c("dateTime", "gteq", "2025-06-01T14:00:00+02:00"), {}, True),
        (_c("count", "lteq", {"@value": "3", "@type": "xsd:integer"}), {"usage": UsageState(count=2)}, True),
        (_c("count", "lteq", "3"), {"usage": UsageState(count=3)}, False),
        (
            _c("elapsedTime", "lteq", {"@value": "P30D", "@type": "xsd:duration"}),
            {"usage": UsageState(first_use=NOW - timedelta(days=29))},
            True,
        ),
        (_c("elapsedTime", "lteq", "PT1H"), {"usage": UsageState(first_use=NOW - timedelta(hours=2))}, False),
        (
            _c("payAmount", "gteq", {"@value": "5.00", "@type": "xsd:decimal"}),
            {"payment": PaymentState(paid=Decimal("5"))},
            True,
        ),
        (_c("percentage", "lt", "12.5"), {"values": {"percentage": "12.4"}}, True),
        (_c("purpose", "isAnyOf", ["a", "b"]), {"purpose": "b"}, True),
        (_c("purpose", "isNoneOf", ["a", "b"]), {"purpose": "b"}, False),
        (_c("purpose", "isAllOf", ["b"]), {"purpose": "b"}, True),
        (_c("purpose", "isAllOf", ["a", "b"]), {"purpose": "b"}, False),
        (_c("recipient", "hasPart", "did:web:a"), {"did": "did:web:a", "bpn": BPN}, True),
        (_c("recipient", "isPartOf", ["did:web:a", BPN, "x"]), {"did": "did:web:a", "bpn": BPN}, True),
        (_c("recipient", "isA", {"@id": "did:web:b"}), {"did": "did:web:a"}, False),
        (_c("spatial", "eq", {"@id": "http://example.org/EU"}), {"region": "http://example.org/EU"}, True),
        (_c("industry", "neq", "automotive"), {"values": {"industry": "chemicals"}}, True),
    ],
)
def test_operator_algebra(constraint: dict[str, Any], ctx: dict[str, Any], expected: bool) -> None:
    decision = evaluate(_perm(constraint), Scope.USAGE, _ctx(**ctx))
    assert decision.permitted is expected, decision.reasons()


def test_logical_operators() -> None:
    yes, no = _c("purpose", "eq", "x"), _c("purpose", "eq", "y")
    ctx = _ctx(purpose="x")
    assert evaluate(_perm({"or": [no, yes]}), Scope.USAGE, ctx).permitted
    assert not evaluate(_perm({"and": [no, yes]}), Scope.USAGE, ctx).permitted
    assert evaluate(_perm({"xone": [no, yes]}), Scope.USAGE, ctx).permitted
    assert not evaluate(_perm({"xone": [yes, yes]}), Scope.USAGE, ctx).permitted
    assert evaluate(_perm({"andSequence": [yes, yes]}), Scope.USAGE, ctx).permitted


# --- rules, conflicts, scopes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "outcome"),
    [("perm", Outcome.PERMIT), ("prohibit", Outcome.DENY), ("invalid", Outcome.DENY), (None, Outcome.DENY)],
)
def test_conflict_strategies(strategy: str | None, outcome: Outcome) -> None:
    doc: dict[str, Any] = {
        "@type": "Set",
        "permission": [{"action": "use"}],
        "prohibition": [{"action": "read"}],
    }
    if strategy:
        doc["conflict"] = strategy
    decision = evaluate(parse_policy(doc), Scope.USAGE, _ctx(action="read"))
    assert decision.outcome is outcome
    assert "conflict strategy" in decision.reasons()[0]
    # a use that is not a read is not in conflict
    assert evaluate(parse_policy(doc), Scope.USAGE, _ctx(action="print")).permitted


def test_not_applicable_when_no_rule_is_about_the_action() -> None:
    policy = parse_policy({"@type": "Set", "permission": [{"action": "transfer"}]})
    decision = evaluate(policy, Scope.USAGE, _ctx(action="read"))
    assert decision.outcome is Outcome.NOT_APPLICABLE and not decision.permitted


def test_purpose_is_deferred_in_catalog_scope_and_checked_later() -> None:
    policy = templates.cx_pcf_usage_policy()
    member = _ctx(
        bpn=BPN,
        memberships=frozenset({CATENA_X}),
        framework_agreements=frozenset({"DataExchangeGovernance:1.0"}),
    )
    catalog = evaluate(policy, Scope.CATALOG, member.__class__(**{**_fields(member), "action": "use"}))
    assert catalog.permitted
    assert any("deferred" in r and "UsagePurpose" in r for r in catalog.reasons())
    assert not evaluate(policy, Scope.NEGOTIATION, member).permitted
    with_purpose = _ctx(**{**_fields(member), "purpose": "cx.pcf.base:1"})
    assert evaluate(policy, Scope.NEGOTIATION, with_purpose).permitted
    wrong = _ctx(**{**_fields(member), "purpose": "cx.quality.base:1"})
    assert not evaluate(policy, Scope.TRANSFER_START, wrong).permitted


def _fields(ctx: EvaluationContext) -> dict[str, Any]:
    return {k: getattr(ctx, k) for k in ctx.__dataclass_fields__}


def test_catena_x_credentials() -> None:
    access = templates.access_by_bpnl([BPN])
    member = _ctx(bpn=BPN, memberships=frozenset({CATENA_X}))
    assert evaluate(access, Scope.CATALOG, member).permitted
    assert not evaluate(
        access, Scope.CATALOG, _ctx(bpn="BPNL000000000002", memberships=frozenset({CATENA_X}))
    ).permitted
    assert not evaluate(access, Scope.CATALOG, _ctx(bpn=BPN)).permitted  # no membership credential
    groups = templates.access_by_group(["gold"])
    assert evaluate(
        groups, Scope.CATALOG, _ctx(bpn=BPN, memberships=frozenset({CATENA_X}), groups=frozenset({"gold"}))
    ).permitted
    assert not evaluate(groups, Scope.CATALOG, _ctx(bpn=BPN, memberships=frozenset({CATENA_X}))).permitted
    # a bare framework name matches any version held, a versioned one only that version
    fa = _perm(_c("cx-policy:FrameworkAgreement", "eq", "Pcf"))
    assert evaluate(fa, Scope.USAGE, _ctx(framework_agreements=frozenset({"Pcf:1.0"}))).permitted
    fa1 = _perm(_c("cx-policy:FrameworkAgreement", "eq", "Pcf:2.0"))
    assert not evaluate(fa1, Scope.USAGE, _ctx(framework_agreements=frozenset({"Pcf:1.0"}))).permitted


def test_contractual_terms_are_recorded_not_checked() -> None:
    policy = _perm(
        _c("cx-policy:ContractReference", "isAllOf", ["C-1"]),
        _c("cx-policy:Liability", "eq", "cx.grossNegligence:1"),
    )
    decision = evaluate(policy, Scope.USAGE, _ctx())
    assert decision.permitted
    assert sum("recorded" in r for r in decision.reasons()) == 2


def test_usage_restriction_prohibition_bites_on_declared_activity() -> None:
    policy = parse_policy(
        {
            "@type": "Set",
            "permission": [{"action": "use"}],
            "prohibition": [
                {
                    "action": "use",
                    "constraint": [
                        _c("cx-policy:UsageRestriction", "isAllOf", ["cx.thirdParty.forbidden:1"])
                    ],
                }
            ],
        }
    )
    assert evaluate(policy, Scope.USAGE, _ctx()).permitted
    assert evaluate(
        policy, Scope.NEGOTIATION, _ctx(activities=frozenset({"thirdParty"}))
    ).permitted  # deferred
    decision = evaluate(policy, Scope.USAGE, _ctx(activities=frozenset({"thirdParty"})))
    # permission and prohibition both apply: the default strategy (invalid) denies
    assert decision.outcome is Outcome.DENY and "conflict strategy invalid" in decision.reasons()[0]
    assert any("UsageRestriction isAllOf" in r and "-> satisfied" in r for r in decision.reasons())


def test_data_usage_end() -> None:
    policy = _perm(_c("cx-policy:DataUsageEndDate", "eq", "2025-06-30T00:00:00Z"))
    assert evaluate(policy, Scope.USAGE, _ctx()).permitted
    assert not evaluate(policy, Scope.USAGE, _ctx(now=datetime(2025, 7, 1, tzinfo=UTC))).permitted
    days = _perm(_c("cx-policy:DataUsageEndDurationDays", "eq", "30"))
    assert evaluate(days, Scope.USAGE, _ctx(usage=UsageState(agreed_at=NOW - timedelta(days=10)))).permitted
    assert not evaluate(
        days, Scope.USAGE, _ctx(usage=UsageState(agreed_at=NOW - timedelta(days=31)))
    ).permitted
    missing = evaluate(days, Scope.USAGE, _ctx())
    assert any("missing input: usage.agreed_at" in r for r in missing.reasons())


def test_time_boxed_and_count_limited_templates() -> None:
    box = templates.time_boxed(NOW - timedelta(days=1), NOW + timedelta(days=1))
    assert evaluate(box, Scope.USAGE, _ctx()).permitted
    assert not evaluate(box, Scope.USAGE, _ctx(now=NOW + timedelta(days=1))).permitted
    limit = templates.count_limited(3)
    assert evaluate(limit, Scope.USAGE, _ctx(usage=UsageState(count=2))).permitted
    assert not evaluate(limit, Scope.USAGE, _ctx(usage=UsageState(count=3))).permitted
    assert evaluate(limit, Scope.NEGOTIATION, _ctx(usage=UsageState(count=3))).permitted  # counted at use


def test_party_and_target() -> None:
    policy = parse_policy(
        {
            "@type": "Agreement",
            "assigner": "did:web:p",
            "assignee": "did:web:c",
            "target": "urn:ds:1",
            "permission": [{"action": "use"}],
        }
    )
    assert evaluate(policy, Scope.TRANSFER_START, _ctx(did="did:web:c", target="urn:ds:1")).permitted
    assert evaluate(policy, Scope.TRANSFER_START, _ctx(did="did:web:c")).permitted  # target implicit
    assert not evaluate(policy, Scope.TRANSFER_START, _ctx(did="did:web:x", target="urn:ds:1")).permitted
    assert not evaluate(policy, Scope.TRANSFER_START, _ctx(did="did:web:c", target="urn:ds:2")).permitted
    nobody = evaluate(policy, Scope.TRANSFER_START, _ctx())
    assert any("missing input: did/bpn/party" in r for r in nobody.reasons())


# --- duties ------------------------------------------------------------------------------------------


def test_compensate_duty_gives_price_terms() -> None:
    for payment, mode in (
        (templates.metered("0.05", "EUR", "call"), "metered"),
        (templates.flat_fee("100", "EUR"), "flat_fee"),
        (templates.lump_sum("5000", "EUR"), "lump_sum"),
        (templates.revenue_share("12.5"), "revenue_share"),
    ):
        policy = templates.data_provision("did:web:provider", payment, target="urn:ds:1")
        decision = evaluate(policy, Scope.NEGOTIATION, _ctx(did="did:web:c"))
        assert decision.permitted, decision.reasons()
        (terms,) = decision.price_terms
        assert terms.mode == mode and terms.payees == ("did:web:provider",)
        assert terms.to_dict()["mode"] == mode
        # at use time the data bank must vouch for the payment
        assert not evaluate(policy, Scope.USAGE, _ctx(did="did:web:c")).permitted
        billed = evaluate(policy, Scope.USAGE, _ctx(did="did:web:c", payment=PaymentState(account_open=True)))
        assert billed.permitted
        overdue = evaluate(
            policy, Scope.USAGE, _ctx(did="did:web:c", payment=PaymentState(account_open=True, overdue=True))
        )
        assert not overdue.permitted and any("violated" in r for r in overdue.reasons())
    metered = evaluate(
        templates.data_provision("p", templates.metered("0.05", "EUR", "MB")), Scope.NEGOTIATION, _ctx()
    )
    assert (
        metered.price_terms[0].amount,
        metered.price_terms[0].currency,
        metered.price_terms[0].unit_of_count,
    ) == (Decimal("0.05"), "EUR", "MB")


def test_obligations_are_recorded_with_deadlines() -> None:
    policy = parse_policy(
        {
            "@type": "Set",
            "permission": [
                {
                    "action": "use",
                    "duty": [
                        {
                            "@id": "urn:duty:del",
                            "action": [
                                {
                                    "rdf:value": {"@id": "odrl:delete"},
                                    "refinement": [_c("dateTime", "lteq", "2025-12-31T00:00:00Z")],
                                }
                            ],
                        },
                        {"action": "inform"},
                        {"@id": "urn:duty:consent", "action": "obtainConsent"},
                    ],
                }
            ],
        }
    )
    negotiation = evaluate(policy, Scope.NEGOTIATION, _ctx())
    assert negotiation.permitted
    by_action = {o.action: o for o in negotiation.obligations}
    assert set(by_action) == {"delete", "inform", "obtainConsent"}
    assert by_action["delete"].deadline == datetime(2025, 12, 31, tzinfo=UTC)
    assert by_action["delete"].to_dict()["deadline"] == "2025-12-31T00:00:00Z"
    # at use: consent is a precondition (unknown -> deny); delete/inform are done after use
    assert not evaluate(policy, Scope.USAGE, _ctx()).permitted
    consented = evaluate(policy, Scope.USAGE, _ctx(duty_states={"urn:duty:consent": DutyState.FULFILLED}))
    assert consented.permitted
    assert {o.action for o in consented.obligations} == {"delete", "inform"}


def test_policy_obligation_violation_denies() -> None:
    policy = parse_policy(
        {
            "@type": "Set",
            "permission": [{"action": "use"}],
            "obligation": [{"@id": "urn:o:1", "action": "inform"}],
        }
    )
    assert evaluate(policy, Scope.USAGE, _ctx()).permitted
    assert not evaluate(policy, Scope.USAGE, _ctx(duty_states={"urn:o:1": DutyState.VIOLATED})).permitted


def test_compiled_policies_are_cached_by_content() -> None:
    import dataclasses

    from usage_policy import compile_policy

    a = templates.cx_pcf_usage_policy("x")
    b = dataclasses.replace(a)  # an equal policy, another object (parse_policy would share one)
    assert a is not b and a.digest == b.digest
    assert compile_policy(a).permissions is compile_policy(b).permissions
    assert compile_policy(a) is compile_policy(a)


def test_context_from_dict_round_trips_and_rejects_unknown_fields() -> None:
    from connector.errors import ValidationError

    ctx = _ctx(
        bpn=BPN,
        memberships=frozenset({CATENA_X}),
        usage=UsageState(count=2, first_use=NOW),
        payment=PaymentState(paid=Decimal("1.5")),
        duty_states={"d": DutyState.PENDING},
    )
    assert EvaluationContext.from_dict(ctx.to_dict()) == ctx
    with pytest.raises(ValidationError, match="unknown context field"):
        EvaluationContext.from_dict({"bpnl": BPN})
    with pytest.raises(ValidationError):
        EvaluationContext.from_dict({"now": "not a date"})


@pytest.mark.parametrize(
    "doc",
    [
        {"@type": "Set", "inheritFrom": "urn:parent", "permission": [{"action": "use"}]},
        {
            "@type": "Set",
            "permission": [
                {
                    "action": "use",
                    "assignee": {
                        "@type": "PartyCollection",
                        "source": "urn:g",
                        "refinement": [_c("spatial", "eq", "EU")],
                    },
                }
            ],
        },
        {
            "@type": "Set",
            "permission": [
                {
                    "action": "use",
                    "target": {
                        "@type": "AssetCollection",
                        "source": "urn:a",
                        "refinement": [_c("fileFormat", "eq", "csv")],
                    },
                }
            ],
        },
    ],
    ids=["inheritFrom", "party-refinement", "asset-refinement"],
)
def test_features_we_do_not_evaluate_deny_instead_of_being_ignored(doc: dict[str, Any]) -> None:
    decision = evaluate(parse_policy(doc), Scope.USAGE, _ctx(party="urn:g", target="urn:a"))
    assert decision.outcome is Outcome.DENY
    assert "unsupported" in " ".join(decision.reasons())


def test_refined_prohibition_bites_only_when_its_refinement_holds() -> None:
    policy = parse_policy(
        {
            "@type": "Set",
            "permission": [{"action": "use"}],
            "prohibition": [
                {
                    "action": {
                        "rdf:value": {"@id": "odrl:use"},
                        "refinement": [_c("purpose", "eq", "marketing")],
                    }
                }
            ],
            "conflict": "prohibit",
        }
    )
    assert evaluate(policy, Scope.CATALOG, _ctx(action="use")).permitted  # purpose not known yet
    assert evaluate(policy, Scope.USAGE, _ctx(purpose="research")).permitted
    assert not evaluate(policy, Scope.USAGE, _ctx(purpose="marketing")).permitted


def test_legacy_catena_x_access_policy_is_an_access_policy() -> None:
    legacy = parse_policy(
        {
            "@context": [{"cx-policy": "https://w3id.org/catenax/policy/"}],
            "@type": "Set",
            "permission": [
                {
                    "action": "cx-policy:access",
                    "constraint": [_c("cx-policy:BusinessPartnerNumber", "isAnyOf", [BPN])],
                }
            ],
        }
    )
    assert evaluate(legacy, Scope.CATALOG, _ctx(bpn=BPN)).permitted
    assert not evaluate(legacy, Scope.CATALOG, _ctx(bpn="BPNL000000000009")).permitted


def test_failures_lists_only_what_went_wrong() -> None:
    policy = templates.cx_pcf_usage_policy()
    decision = evaluate(policy, Scope.NEGOTIATION, _ctx(bpn=BPN, memberships=frozenset({CATENA_X})))
    failures = decision.failures()
    assert failures[0].startswith("Set: deny")
    assert len(failures) == 3  # verdict, FrameworkAgreement (none held), UsagePurpose (missing)
    assert "FrameworkAgreement eq 'DataExchangeGovernance:1.0' (found nothing)" in failures[1]
    assert "missing input: purpose" in failures[2]
    ok = evaluate(
        policy,
        Scope.CATALOG,
        _ctx(
            bpn=BPN,
            memberships=frozenset({CATENA_X}),
            framework_agreements=frozenset({"DataExchangeGovernance:1.0"}),
        ),
    )
    assert ok.permitted and ok.failures() == []


def test_parsed_policies_are_shared_by_content_and_immune_to_later_changes() -> None:
    from usage_policy import parse_policy

    data: dict[str, Any] = {
        "@type": "Offer",
        "permission": [
            {
                "action": "use",
                "constraint": [{"leftOperand": "purpose", "operator": "eq", "rightOperand": "a"}],
            }
        ],
    }
    first = parse_policy(data)
    assert parse_policy(json.loads(json.dumps(data))) is first  # same content: parsed once
    data["permission"][0]["constraint"][0]["rightOperand"] = "b"  # the caller changes its dict
    assert first.permissions[0].constraints[0].right == "a"  # the shared result did not change
    assert parse_policy(data).permissions[0].constraints[0].right == "b"
    # failures are not remembered: the same bad input fails again, with the same reason
    from connector.errors import PolicyError

    for _ in range(2):
        with pytest.raises(PolicyError):
            parse_policy({"@type": "Offer", "permission": "nope"})
