"""Ready-made policies: valid, round-trip, and mean what they say."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from usage_policy import (
    CATENA_X,
    EvaluationContext,
    Policy,
    Scope,
    evaluate,
    parse_policy,
    templates,
    validate_policy,
)
from vocab import expand

NOW = datetime(2025, 6, 1, tzinfo=UTC)
BPN = "BPNL00000000000A"


def test_catena_x_templates_pass_the_profile() -> None:
    for policy in (
        templates.cx_pcf_usage_policy("urn:p:pcf"),
        templates.access_by_bpnl([BPN], "urn:p:a"),
        templates.access_by_group(["tier1"], "urn:p:g"),
    ):
        assert validate_policy(policy.to_dsp()) == policy


def test_pcf_policy_on_the_dsp_wire_means_catena_x_terms() -> None:
    """With only the DSP context on the wire, Catena-X terms must be full IRIs to expand right."""
    dsp = templates.cx_pcf_usage_policy("urn:p:pcf").to_dsp()
    message = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractOfferMessage",
        "providerPid": "urn:p",
        "consumerPid": "urn:c",
        "offer": {**dsp, "@type": "Offer"},
    }
    expanded = json.dumps(expand(message))
    for term in ("FrameworkAgreement", "Membership", "UsagePurpose"):
        assert f'"https://w3id.org/catenax/2025/9/policy/{term}"' in expanded
    (group,) = dsp["permission"][0]["constraint"]
    assert {c["leftOperand"].rsplit("/", 1)[-1]: c["rightOperand"] for c in group["and"]} == {
        "FrameworkAgreement": "DataExchangeGovernance:1.0",
        "Membership": "active",
        "UsagePurpose": ["cx.pcf.base:1"],
    }


@pytest.mark.parametrize(
    "payment",
    [
        templates.flat_fee("99.00", "EUR", "P1M"),
        templates.metered("0.002", "EUR", "record"),
        templates.lump_sum("10000", "USD"),
        templates.revenue_share("15"),
    ],
    ids=["flat_fee", "metered", "lump_sum", "revenue_share"],
)
def test_data_bank_contracts(payment: templates.Payment) -> None:
    ctx = EvaluationContext(now=NOW, did="did:web:consumer")
    provision = templates.data_provision("did:web:p", payment, target="urn:ds:1", uid="urn:c:1")
    joint = templates.jointly_created_data(
        "did:web:p", ["did:web:co1", "did:web:co2"], payment, target="urn:ds:1"
    )
    resale = templates.brokered_resale("did:web:broker", "did:web:origin", payment, "30", target="urn:ds:1")
    for policy in (provision, joint, resale):
        assert parse_policy(policy.to_dsp()) == policy
        decision = evaluate(policy, Scope.NEGOTIATION, ctx)
        assert decision.permitted, decision.reasons()
        assert decision.price_terms[0].mode == payment.mode
        assert not evaluate(
            policy, Scope.USAGE, EvaluationContext(now=NOW, did="x", action="distribute")
        ).permitted
    joint_terms = evaluate(joint, Scope.NEGOTIATION, ctx)
    assert joint_terms.price_terms[0].payees == ("did:web:p", "did:web:co1", "did:web:co2")
    assert any(o.action == "inform" for o in joint_terms.obligations)
    resale_terms = evaluate(resale, Scope.NEGOTIATION, ctx).price_terms
    share = [t for t in resale_terms if t.payees == ("did:web:origin",)]
    assert share and share[0].mode == "revenue_share" and share[0].percentage == Decimal("30")
    assert share[0].payer == "did:web:broker"
    assert not evaluate(resale, Scope.USAGE, EvaluationContext(now=NOW, action="sell")).permitted


def test_access_templates_decide_by_claims() -> None:
    member = EvaluationContext(now=NOW, bpn=BPN, memberships=frozenset({CATENA_X}))
    assert evaluate(templates.access_by_bpnl([BPN]), Scope.CATALOG, member).permitted
    assert not evaluate(templates.access_by_bpnl(["BPNL00000000000B"]), Scope.CATALOG, member).permitted


ALL_TEMPLATES = [
    templates.cx_pcf_usage_policy("urn:t:1"),
    templates.access_by_bpnl([BPN], "urn:t:2"),
    templates.time_boxed(NOW, NOW.replace(year=2026), uid="urn:t:3"),
    templates.count_limited(5, uid="urn:t:4"),
    templates.data_provision("did:web:p", templates.metered("0.05", "EUR", "MB"), uid="urn:t:5"),
    templates.jointly_created_data("did:web:p", ["did:web:c"], templates.flat_fee("9", "EUR"), uid="urn:t:6"),
    templates.brokered_resale("did:web:b", "did:web:o", templates.lump_sum("1", "EUR"), "10", uid="urn:t:7"),
]


@pytest.mark.parametrize("policy", ALL_TEMPLATES, ids=[p.uid or "" for p in ALL_TEMPLATES])
def test_templates_survive_json_ld_processing_with_only_the_dsp_context(policy: Policy) -> None:
    """A peer expands our offer with the DSP context alone: nothing may be lost or misread."""
    from usage_policy._match import canonical

    message = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractOfferMessage",
        "providerPid": "urn:p",
        "consumerPid": "urn:c",
        "offer": {**policy.to_dsp(), "@type": "Offer"},
    }
    expanded = expand(message)[0]["https://w3id.org/dspace/2025/1/offer"][0]
    again = parse_policy(expanded)
    assert canonical(again) == canonical(policy)
    ctx = EvaluationContext(now=NOW, did="did:web:x")
    assert [t.to_dict() for t in evaluate(again, Scope.NEGOTIATION, ctx).price_terms] == [
        t.to_dict() for t in evaluate(policy, Scope.NEGOTIATION, ctx).price_terms
    ]
