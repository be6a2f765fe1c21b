"""Catalog generation: only what the caller's access policies allow, offers per definition, paging, offer ids."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from catalog_testing import DSP_BASE, PARTICIPANT, schema_errors

from catalog import (
    NO_ENGINE_REASON,
    AccessDecision,
    CatalogService,
    CatalogStore,
    ContractDefinition,
    Dataset,
    DatasetSelector,
    FailClosedEvaluator,
    PolicyDefinition,
    _tables,
    parse_filter,
    policy_tag,
)
from catalog.samples import sample_datasets
from connector.errors import NotFoundError, StoreError, ValidationError
from connector.identity import Caller
from connector.store import create_engine

ALICE = Caller(did="did:web:alice.example", claims={"memberships": ["active"]})


class CountingEvaluator:
    """Permits everything, or only the policies whose ids are listed; counts calls."""

    def __init__(self, deny_constrained: bool = False) -> None:
        self.calls = 0
        self.deny_constrained = deny_constrained

    def evaluate(self, policy: Mapping[str, Any], caller: Caller) -> AccessDecision:
        self.calls += 1
        if self.deny_constrained and FailClosedEvaluator().evaluate(policy, caller).permitted is False:
            return AccessDecision(False, ["caller lacks an active membership"])
        return AccessDecision(True, [])


def _ids(body: dict[str, Any]) -> list[str]:
    return [d["@id"] for d in body.get("dataset", [])]


def test_fail_closed_shows_only_unconditional_datasets(service: CatalogService) -> None:
    page = service.catalog(ALICE)
    body = page.to_dict()
    assert _ids(body) == ["bom-brake-assembly-as-built"]
    assert page.total == 1
    assert schema_errors(body) == []
    decision = FailClosedEvaluator().evaluate(
        {
            "permission": [
                {"action": "use", "constraint": [{"leftOperand": "a", "operator": "eq", "rightOperand": "b"}]}
            ]
        },
        ALICE,
    )
    assert decision == AccessDecision(False, [NO_ENGINE_REASON])
    assert FailClosedEvaluator().evaluate({"prohibition": [{"action": "use"}]}, ALICE).permitted is False
    with pytest.raises(NotFoundError, match="not in the catalog"):
        service.dataset(ALICE, "pcf-brake-disc-bd330v")  # exists, but not for this caller


def test_permitted_caller_sees_every_offer(seeded: CatalogStore) -> None:
    evaluator = CountingEvaluator()
    svc = CatalogService(
        seeded, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE, access_evaluator=evaluator
    )
    body = svc.catalog(ALICE).to_dict()
    assert schema_errors(body) == []
    assert _ids(body) == ["bom-brake-assembly-as-built", "pcf-brake-disc-bd330v", "production-tracking-line2"]
    assert evaluator.calls == 2  # once per distinct access policy, not per dataset
    pcf = body["dataset"][1]
    pcf_usage = seeded.get_policy("pcf-usage").policy
    assert pcf["hasPolicy"] == [
        {
            "@id": f"pcf-members:pcf-brake-disc-bd330v:{policy_tag(pcf_usage)}",
            "@type": "Offer",
            "assigner": PARTICIPANT,
            "permission": pcf_usage["permission"],
        }
    ]
    assert "target" not in pcf["hasPolicy"][0]
    assert pcf["distribution"][0]["format"] == "HttpData-PULL"
    assert pcf["distribution"][0]["accessService"]["endpointURL"] == DSP_BASE
    assert body["service"][0]["endpointURL"] == DSP_BASE
    assert body["participantId"] == PARTICIPANT
    assert "data_address" not in str(body) and "sample_data" not in str(body)  # private address never leaks


def test_filter_and_paging(seeded: CatalogStore) -> None:
    svc = CatalogService(
        seeded, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE, access_evaluator=CountingEvaluator()
    )
    carbon = svc.catalog(ALICE, parse_filter([{"property": "category", "operator": "eq", "value": "carbon"}]))
    assert _ids(carbon.to_dict()) == ["pcf-brake-disc-bd330v"]
    trace = parse_filter([{"property": "keyword", "operator": "eq", "value": "traceability"}])
    first = svc.catalog(ALICE, trace, 0, 1)
    assert (first.total, first.next_offset, first.prev_offset) == (2, 1, None)
    second = svc.catalog(ALICE, trace, 1, 1)
    assert _ids(second.to_dict()) == ["production-tracking-line2"]
    assert (second.next_offset, second.prev_offset) == (None, 0)
    none = svc.catalog(ALICE, parse_filter([{"property": "id", "operator": "in", "value": ["x", "y"]}]))
    body = none.to_dict()
    assert "dataset" not in body  # the schema wants >= 1 item when present; zero datasets is legal
    assert schema_errors(body) == []
    conforms = parse_filter(
        [{"property": "conformsTo", "operator": "eq", "value": "urn:samm:io.catenax.pcf:7.0.0#Pcf"}]
    )
    assert _ids(svc.catalog(ALICE, conforms).to_dict()) == ["pcf-brake-disc-bd330v"]
    with pytest.raises(ValidationError, match="invalid paging"):
        svc.catalog(ALICE, None, -1, 10)
    everything = svc.catalog(ALICE, None, 0, None)
    assert everything.total == 3 and everything.next_offset is None


def test_dataset_has_context_and_validates(seeded: CatalogStore) -> None:
    svc = CatalogService(
        seeded, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE, access_evaluator=CountingEvaluator()
    )
    body = orjson.loads(svc.dataset(ALICE, "pcf-brake-disc-bd330v"))
    assert body["@context"] == ["https://w3id.org/dspace/2025/1/context.jsonld"]
    assert schema_errors(body) == []
    with pytest.raises(NotFoundError):
        svc.dataset(ALICE, "CAT0103")


def test_resolve_offer_checks_definition_dataset_tag_and_access(seeded: CatalogStore) -> None:
    evaluator = CountingEvaluator(deny_constrained=True)
    svc = CatalogService(
        seeded, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE, access_evaluator=evaluator
    )
    tag = policy_tag(seeded.get_policy("use-unrestricted").policy)
    resolved = svc.resolve_offer(f"bom-open:bom-brake-assembly-as-built:{tag}", ALICE)
    assert resolved.dataset.id == "bom-brake-assembly-as-built"
    assert resolved.contract_definition.id == "bom-open"
    assert resolved.offer_policy_json["@id"] == f"bom-open:bom-brake-assembly-as-built:{tag}"
    assert resolved.offer_policy_json["permission"] == [{"action": "use"}]
    with pytest.raises(NotFoundError, match="outdated"):
        svc.resolve_offer("bom-open:bom-brake-assembly-as-built:0000000000", ALICE)
    with pytest.raises(NotFoundError, match="no contract definition 'nope'"):
        svc.resolve_offer(f"nope:bom-brake-assembly-as-built:{tag}", ALICE)
    with pytest.raises(NotFoundError, match="no dataset"):
        svc.resolve_offer(f"bom-open:missing:{tag}", ALICE)
    with pytest.raises(NotFoundError, match="is not offered under contract definition 'bom-open'"):
        svc.resolve_offer(f"bom-open:pcf-brake-disc-bd330v:{tag}", ALICE)
    with pytest.raises(NotFoundError, match="caller lacks an active membership"):
        svc.resolve_offer(f"process-members:production-tracking-line2:{tag}", ALICE)
    with pytest.raises(ValidationError, match="malformed offer id"):
        svc.resolve_offer("garbage", ALICE)


def test_changed_contract_policy_changes_offer_ids(seeded: CatalogStore) -> None:
    svc = CatalogService(seeded, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE)
    old_id = svc.catalog(ALICE).to_dict()["dataset"][0]["hasPolicy"][0]["@id"]
    svc.resolve_offer(old_id, ALICE)
    seeded.update_policy(
        PolicyDefinition(
            id="use-unrestricted", policy={"permission": [{"action": "use"}], "profile": "urn:p:1"}
        )
    )
    new_id = svc.catalog(ALICE).to_dict()["dataset"][0]["hasPolicy"][0]["@id"]
    assert new_id != old_id
    svc.resolve_offer(new_id, ALICE)
    with pytest.raises(NotFoundError, match="outdated"):
        svc.resolve_offer(old_id, ALICE)


def test_tck_style_fixed_offer_ids_need_an_explicit_flag(store: CatalogStore) -> None:
    base = sample_datasets()[2].model_dump()
    for i in ("ACN0101", "ACN0102"):
        base["id"] = i
        store.create_dataset(Dataset.model_validate(base))
    store.create_policy(PolicyDefinition(id="open", policy={"permission": [{"action": "use"}]}))
    strict = ContractDefinition(
        id="CD123",
        access_policy_id="open",
        contract_policy_id="open",
        selector=DatasetSelector(match_all=True),
    )
    store.create_contract_definition(strict)
    svc = CatalogService(store, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE)
    with pytest.raises(NotFoundError, match="outdated"):
        svc.resolve_offer("CD123:ACN0101:456", ALICE)
    store.update_contract_definition(strict.model_copy(update={"accept_any_offer_tag": True}))
    assert svc.resolve_offer("CD123:ACN0101:456", ALICE).dataset.id == "ACN0101"
    assert svc.resolve_offer("CD123:ACN0102:456", ALICE).dataset.id == "ACN0102"


def test_writes_from_another_process_are_seen(seeded: CatalogStore, db_url: str) -> None:
    svc = CatalogService(seeded, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE)
    assert svc.catalog(ALICE).total == 1
    other_engine = create_engine(db_url)  # a second engine: what another process would use
    try:
        other = CatalogStore(other_engine)
        other.delete_contract_definition("bom-open")
        assert svc.catalog(ALICE).total == 0
        base = sample_datasets()[2].model_dump()
        base["id"] = "bom-2"
        other.create_dataset(Dataset.model_validate(base))
        other.create_contract_definition(
            ContractDefinition(
                id="bom-open",
                access_policy_id="open-access",
                contract_policy_id="use-unrestricted",
                selector=DatasetSelector(dataset_ids=["bom-2"]),
            )
        )
        assert _ids(svc.catalog(ALICE).to_dict()) == ["bom-2"]
        edited = other.get_dataset("bom-2").model_copy(update={"title": "Edited elsewhere"})
        other.update_dataset(edited)  # an incremental reload picks up just this row
        assert svc.catalog(ALICE).to_dict()["dataset"][0]["dct:title"] == "Edited elsewhere"
        other.delete_dataset("bom-2")
        assert svc.catalog(ALICE).total == 0
    finally:
        other_engine.dispose()


def test_revision_row_missing_is_a_store_error(store: CatalogStore, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(_tables.revision))
    with pytest.raises(StoreError, match="catalog_revision row is missing"):
        store.revision()


def test_deleted_and_recreated_dataset_is_served_fresh(seeded: CatalogStore) -> None:
    svc = CatalogService(seeded, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE)
    bom = seeded.get_dataset("bom-brake-assembly-as-built")
    assert svc.catalog(ALICE).to_dict()["dataset"][0]["dct:title"] == bom.title
    seeded.delete_dataset(bom.id)  # no catalog request in between: the cached entry survives
    seeded.create_dataset(bom.model_copy(update={"title": "Recreated"}))
    assert svc.catalog(ALICE).to_dict()["dataset"][0]["dct:title"] == "Recreated"
    seeded.delete_dataset(bom.id)
    assert svc.catalog(ALICE).total == 0


def test_dataset_rows_carry_the_revision_of_their_last_write(store: CatalogStore) -> None:
    ds = sample_datasets()[0]
    store.create_dataset(ds)
    assert dict(store.dataset_revisions())[ds.id] == store.revision()
    store.create_policy(PolicyDefinition(id="p", policy={"permission": [{"action": "use"}]}))
    store.update_dataset(ds.model_copy(update={"title": "x"}))
    assert dict(store.dataset_revisions())[ds.id] == store.revision()
    rev, loaded = store.datasets_with_revisions([ds.id, "missing"])[ds.id]
    assert rev == store.revision() and loaded.title == "x"
