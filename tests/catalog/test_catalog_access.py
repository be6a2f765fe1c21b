"""The usage_policy engine behind the catalog: members see member-only datasets, others do not."""

from __future__ import annotations

import pytest
from catalog_testing import DSP_BASE, PARTICIPANT, schema_errors

from catalog import CatalogService, CatalogStore, PolicyEngineEvaluator, caller_context, policy_tag
from connector.errors import NotFoundError
from connector.identity import Caller
from usage_policy import CATENA_X

MEMBER = Caller(did="did:web:member.example", claims={"memberships": [CATENA_X], "bpn": "BPNL000000000MEM"})
STRANGER = Caller(did="did:web:stranger.example")


def _svc(store: CatalogStore) -> CatalogService:
    return CatalogService(
        store, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE, access_evaluator=PolicyEngineEvaluator()
    )


def test_members_see_member_datasets_strangers_do_not(seeded: CatalogStore) -> None:
    svc = _svc(seeded)
    member = svc.catalog(MEMBER).to_dict()
    assert schema_errors(member) == []
    assert [d["@id"] for d in member["dataset"]] == [
        "bom-brake-assembly-as-built",
        "pcf-brake-disc-bd330v",
        "production-tracking-line2",
    ]
    stranger = svc.catalog(STRANGER).to_dict()
    assert [d["@id"] for d in stranger["dataset"]] == ["bom-brake-assembly-as-built"]


def test_offer_resolution_explains_the_engine_denial(seeded: CatalogStore) -> None:
    svc = _svc(seeded)
    offer_id = f"pcf-members:pcf-brake-disc-bd330v:{policy_tag(seeded.get_policy('pcf-usage').policy)}"
    assert svc.resolve_offer(offer_id, MEMBER).dataset.id == "pcf-brake-disc-bd330v"
    with pytest.raises(NotFoundError, match="Membership eq 'active'"):
        svc.resolve_offer(offer_id, STRANGER)


def test_caller_claims_map_to_the_engine_context() -> None:
    ctx = caller_context(
        Caller(
            did="did:web:x",
            claims={
                "bpn": "BPNL1",
                "memberships": "catena-x",
                "bpn_groups": ["g1"],
                "framework_agreements": ["f"],
            },
        )
    )
    assert ctx.did == "did:web:x" and ctx.bpn == "BPNL1"
    assert ctx.memberships == frozenset({"catena-x"})
    assert ctx.groups == frozenset({"g1"})
    assert ctx.framework_agreements == frozenset({"f"})


def test_a_policy_the_engine_cannot_parse_is_denied_with_its_message() -> None:
    decision = PolicyEngineEvaluator().evaluate(
        {"permission": [{"action": "use", "constraint": [{"leftOperand": "x", "operator": "nope"}]}]}, MEMBER
    )
    assert decision.permitted is False
    assert decision.reasons and decision.reasons[0].startswith("access policy cannot be evaluated")
