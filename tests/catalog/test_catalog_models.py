"""Models validate once, with every problem named; filters and ODRL policies are checked strictly."""

from __future__ import annotations

import pytest
from pydantic import ValidationError as PydanticValidationError

from catalog import (
    Category,
    ContractDefinition,
    DataAddress,
    Dataset,
    DatasetSelector,
    PolicyDefinition,
    model_errors,
    odrl_problems,
    parse_filter,
    split_offer_id,
)
from catalog.samples import sample_datasets
from connector.errors import ValidationError


def _ds(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "urn:uuid:1",
        "title": "T",
        "description": "D",
        "category": "carbon",
        "publisher": {"id": "urn:bpn:BPNL000000000001", "name": "P"},
        "data_address": {"type": "http", "properties": {"url": "https://backend.example/pcf"}},
    }
    base.update(kw)
    return base


def test_dataset_defaults_and_frequency_shorthand() -> None:
    ds = Dataset.model_validate(_ds(accrual_periodicity="monthly", keywords=["a", "a", " b "]))
    assert ds.accrual_periodicity == "http://publications.europa.eu/resource/authority/frequency/MONTHLY"
    assert ds.keywords == ["a", "b"]
    assert ds.transfer_types == ["HttpData-PULL"]
    assert ds.category is Category.CARBON


def test_dataset_lists_every_problem_with_its_path() -> None:
    with pytest.raises(PydanticValidationError) as info:
        Dataset.model_validate(
            _ds(
                id="has space",
                title="",
                category="weather",
                conforms_to=["not an iri"],
                media_type="json",
                data_address={"type": "s3", "properties": {"bucket": "b"}},
            )
        )
    errors = model_errors(info.value)
    joined = "\n".join(errors)
    for path in ("id:", "title:", "category:", "conforms_to:", "media_type:", "data_address:"):
        assert any(e.startswith(path) for e in errors), (path, joined)
    assert "needs properties key" in joined
    assert "item 0 must be an absolute IRI" in joined


def test_temporal_and_dates_are_ordered() -> None:
    with pytest.raises(PydanticValidationError, match="after end"):
        Dataset.model_validate(_ds(temporal={"start": "2026-02-01", "end": "2026-01-01"}))
    with pytest.raises(PydanticValidationError, match="modified is before issued"):
        Dataset.model_validate(_ds(issued="2026-02-01T00:00:00Z", modified="2026-01-01T00:00:00Z"))


def test_data_address_requires_type_specific_properties() -> None:
    assert DataAddress(type="file", properties={"path": "/x"}).type == "file"
    with pytest.raises(PydanticValidationError, match="needs properties url"):
        DataAddress(type="http", properties={})


def test_samples_are_valid_and_realistic() -> None:
    samples = {d.id: d for d in sample_datasets()}
    pcf = samples["pcf-brake-disc-bd330v"]
    assert pcf.category is Category.CARBON
    assert "urn:samm:io.catenax.pcf:7.0.0#Pcf" in pcf.conforms_to
    assert pcf.accrual_periodicity and pcf.accrual_periodicity.endswith("/MONTHLY")
    assert pcf.quality and pcf.byte_size
    assert {d.category for d in samples.values()} == {
        Category.CARBON,
        Category.PROCESS,
        Category.SUPPLY_CHAIN,
    }
    for d in samples.values():
        assert d.data_address.type == "file"


def test_odrl_problems_name_their_paths() -> None:
    assert odrl_problems({"permission": [{"action": "use"}]}) == []
    problems = odrl_problems(
        {
            "target": "x",
            "permission": [
                {"constraint": [{"leftOperand": "a", "operator": "approx", "rightOperand": 1}]},
                {"action": "use", "constraint": [{"and": [{"leftOperand": "a"}], "or": []}]},
            ],
            "extra": 1,
        }
    )
    joined = "\n".join(problems)
    assert "policy.target" in joined
    assert "policy.permission[0].action: required" in joined
    assert "policy.permission[0].constraint[0].operator: 'approx'" in joined
    assert "policy.permission[0].constraint[0].rightOperand" in joined
    assert "policy.permission[1].constraint[0]: exactly one of" in joined
    assert "policy.permission[1].constraint[0].and[0].operator: required" in joined
    assert "unknown keys extra" in joined
    assert odrl_problems({"obligation": [{"action": "delete"}]}) == [
        "policy: needs at least one permission or prohibition"
    ]


def test_policy_definition_reports_each_odrl_problem_separately() -> None:
    with pytest.raises(PydanticValidationError) as info:
        PolicyDefinition(id="p", policy={"permission": [{}], "target": "x"})
    errors = model_errors(info.value)
    assert "policy: policy.target: not allowed; the catalog sets the dataset as target" in errors
    assert "policy: policy.permission[0].action: required, a string such as 'use' or 'access'" in errors


def test_contract_definition_ids_and_selectors() -> None:
    with pytest.raises(PydanticValidationError, match="must not contain ':'"):
        ContractDefinition(
            id="a:b", access_policy_id="p", contract_policy_id="p", selector=DatasetSelector(match_all=True)
        )
    with pytest.raises(PydanticValidationError, match="selector selects nothing"):
        DatasetSelector()
    ds = Dataset.model_validate(_ds(keywords=["pcf"], conforms_to=["urn:x:1"]))
    assert DatasetSelector(categories=[Category.CARBON], keywords=["pcf"]).matches(ds)
    assert not DatasetSelector(categories=[Category.CARBON], keywords=["bom"]).matches(ds)
    assert not DatasetSelector(conforms_to=["urn:x:2"]).matches(ds)
    assert DatasetSelector(dataset_ids=["urn:uuid:1"]).matches(ds)


def test_filter_grammar() -> None:
    flt = parse_filter(
        [
            {"property": "category", "operator": "eq", "value": "carbon"},
            {"property": "keyword", "operator": "in", "value": ["pcf", "co2"]},
        ]
    )
    ds = Dataset.model_validate(_ds(keywords=["co2"]))
    assert flt.matches(ds)
    assert not parse_filter([{"property": "id", "operator": "eq", "value": "other"}]).matches(ds)
    assert not parse_filter(None)
    assert parse_filter([]) == parse_filter(None)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"property": "id"}, "filter: must be an array"),
        (
            [{"property": "title", "operator": "eq", "value": "x"}],
            "filter[0].property: 'title' is not one of",
        ),
        (
            [{"property": "id", "operator": "like", "value": "x"}],
            "filter[0].operator: 'like' is not one of eq, in",
        ),
        (
            [{"property": "id", "operator": "in", "value": "x"}],
            "filter[0].value: 'in' needs a non-empty array",
        ),
        (
            [{"property": "id", "operator": "eq", "value": 3}],
            "filter[0].value: 'eq' needs a non-empty string",
        ),
        ([{"property": "category", "operator": "eq", "value": "weather"}], "unknown category 'weather'"),
        (["x"], "filter[0]: must be an object"),
        ([{"property": "id", "operator": "eq", "value": "x", "x": 1}], "filter[0]: unknown keys x"),
    ],
)
def test_bad_filters_are_refused_with_the_problem(raw: object, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_filter(raw)
    assert any(problem in r for r in info.value.reasons()), info.value.reasons()


def test_offer_ids_split_on_first_and_last_colon() -> None:
    assert split_offer_id("CD123:ACN0101:456") == ("CD123", "ACN0101", "456")
    assert split_offer_id("cd:urn:uuid:abc:tag") == ("cd", "urn:uuid:abc", "tag")
    for bad in ("nocolon", "a:b", ":ds:t", "cd::t", "cd:ds:"):
        with pytest.raises(ValidationError, match="malformed offer id"):
            split_offer_id(bad)


def test_nul_characters_are_refused_everywhere() -> None:
    # PostgreSQL cannot store U+0000 in text columns; refusing it in the model gives a 400, not a 500
    with pytest.raises(PydanticValidationError, match="must not contain NUL"):
        Dataset.model_validate(_ds(keywords=["ok", "bad\x00"]))
    with pytest.raises(PydanticValidationError, match="must not contain NUL"):
        PolicyDefinition(id="p", policy={"permission": [{"action": "use", "x\x00": 1}]})
    with pytest.raises(PydanticValidationError, match="must not contain NUL"):
        ContractDefinition.model_validate(
            {
                "id": "c",
                "access_policy_id": "p\x00",
                "contract_policy_id": "p",
                "selector": {"match_all": True},
            }
        )
