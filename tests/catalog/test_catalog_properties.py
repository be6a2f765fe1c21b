"""Property tests: any JSON as a filter is either parsed or refused cleanly; any text survives the wire."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from catalog_testing import DSP_BASE, schema_errors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vocab
from catalog import CatalogFilter, CatalogStore, parse_filter
from catalog._dsp import data_service, dataset_head, distributions
from catalog.samples import sample_datasets
from connector.errors import ValidationError
from vocab import DCAT, DCT

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
conditions = st.fixed_dictionaries(
    {
        "property": st.sampled_from(["id", "category", "keyword", "conformsTo", "title"]),
        "operator": st.sampled_from(["eq", "in", "like"]),
        "value": st.one_of(st.text(max_size=6), st.lists(st.text(max_size=6), max_size=3), st.integers()),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.lists(conditions, max_size=4)))
def test_any_filter_is_parsed_or_refused_with_reasons(raw: Any) -> None:
    refusal: ValidationError | None = None
    try:
        flt = parse_filter(raw)
    except ValidationError as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.errors, "a refusal must say why"
        return
    assert isinstance(flt, CatalogFilter)
    for ds in sample_datasets():
        flt.matches(ds)  # never raises


@settings(max_examples=60, deadline=None)
@given(
    title=st.text(min_size=1, max_size=40).filter(lambda s: s.strip()),
    keyword=st.text(min_size=1, max_size=20).filter(lambda s: s.strip()),
)
def test_any_text_round_trips_through_the_wire(title: str, keyword: str) -> None:
    base = sample_datasets()[2]
    ds = base.model_copy(update={"title": title.strip(), "keywords": [keyword.strip()]})
    body = dataset_head(ds)
    body["hasPolicy"] = [{"@id": "cd:x:t", "@type": "Offer", "permission": [{"action": "use"}]}]
    body["distribution"] = distributions(ds, data_service("urn:s", DSP_BASE))
    body = {"@context": ["https://w3id.org/dspace/2025/1/context.jsonld"], **body}
    wire = orjson.loads(orjson.dumps(body))
    assert schema_errors(wire, "Dataset") == []
    [node] = vocab.expand(wire)
    assert node[DCT["title"]] == [{"@value": title.strip()}]
    assert node[DCAT.keyword] == [{"@value": keyword.strip()}]


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(str.strip)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(title=_text, keywords=st.lists(_text, max_size=4), description=_text)
def test_any_text_round_trips_through_the_store(
    store: CatalogStore, title: str, keywords: list[str], description: str
) -> None:
    base = sample_datasets()[0]
    ds = base.model_copy(
        update={
            "id": f"urn:uuid:{uuid.uuid4()}",
            "title": title.strip(),
            "description": description.strip(),
            "keywords": list(dict.fromkeys(k.strip() for k in keywords)),
        }
    )
    store.create_dataset(ds)
    assert store.get_dataset(ds.id) == ds
    for k in ds.keywords:
        assert ds.id in {d.id for d in store.query_datasets(keyword=k, limit=1000).items}
