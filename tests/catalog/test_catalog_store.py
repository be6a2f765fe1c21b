"""Store contract: the same behaviour on SQLite and PostgreSQL (``engine`` runs each test on both)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from catalog import (
    CatalogStore,
    Category,
    ContractDefinition,
    Dataset,
    DatasetSelector,
    PolicyDefinition,
)
from catalog.samples import sample_datasets
from connector.errors import ConflictError, NotFoundError, ValidationError


def _dataset(i: int, **kw: object) -> Dataset:
    base = sample_datasets()[0].model_dump()
    base.update({"id": f"ds-{i:03d}", "title": f"Dataset {i}", "keywords": [f"k{i % 3}", "common"], **kw})
    return Dataset.model_validate(base)


OPEN = {"permission": [{"action": "use"}]}


def test_dataset_crud_round_trip_keeps_every_field(store: CatalogStore) -> None:
    original = sample_datasets()[0]
    rev0 = store.revision()
    store.create_dataset(original)
    assert store.revision() > rev0
    loaded = store.get_dataset(original.id)
    assert loaded == original  # including the private data address
    changed = original.model_copy(update={"title": "New title", "keywords": ["x"]})
    store.update_dataset(changed)
    assert store.get_dataset(original.id).title == "New title"
    assert store.query_datasets(keyword="x").total == 1
    assert store.query_datasets(keyword="pcf").total == 0  # terms were replaced
    store.delete_dataset(original.id)
    with pytest.raises(NotFoundError, match="does not exist"):
        store.get_dataset(original.id)


def test_duplicates_and_missing_rows(store: CatalogStore) -> None:
    ds = _dataset(1)
    store.create_dataset(ds)
    rev = store.revision()
    with pytest.raises(ConflictError, match="already exists"):
        store.create_dataset(ds)
    assert store.revision() == rev  # nothing changed
    with pytest.raises(NotFoundError):
        store.update_dataset(_dataset(2))
    with pytest.raises(NotFoundError):
        store.delete_dataset("ds-999")
    with pytest.raises(ConflictError):
        store.create_datasets([_dataset(3), _dataset(1)])
    assert store.query_datasets().total == 1  # the failed batch left nothing behind


def test_query_filters_and_paging(store: CatalogStore) -> None:
    store.create_datasets([_dataset(i) for i in range(25)])
    page = store.query_datasets(offset=0, limit=10)
    assert page.total == 25
    assert [d.id for d in page.items] == [f"ds-{i:03d}" for i in range(10)]
    assert page.next_offset == 10
    assert page.prev_offset is None
    last = store.query_datasets(offset=20, limit=10)
    assert len(last.items) == 5
    assert last.next_offset is None
    assert last.prev_offset == 10
    assert store.query_datasets(keyword="k1").total == 8
    assert store.query_datasets(category=Category.CARBON).total == 25
    assert store.query_datasets(category="process").total == 0
    assert store.query_datasets(conforms_to="urn:samm:io.catenax.pcf:7.0.0#Pcf").total == 25
    assert store.query_datasets(q="DATASET 1").total == 11  # 1, 10..19
    assert store.query_datasets(q="100%").total == 0  # LIKE wildcards are escaped
    with pytest.raises(ValidationError, match="invalid paging"):
        store.query_datasets(limit=0)
    with pytest.raises(ValidationError):
        store.query_datasets(offset=-1)


def test_policies_crud_and_delete_in_use_names_the_definition(store: CatalogStore) -> None:
    store.create_policy(PolicyDefinition(id="p1", policy=OPEN))
    store.create_policy(PolicyDefinition(id="p2", policy=OPEN))
    with pytest.raises(ConflictError):
        store.create_policy(PolicyDefinition(id="p1", policy=OPEN))
    store.update_policy(PolicyDefinition(id="p2", policy={"prohibition": [{"action": "distribute"}]}))
    assert store.get_policy("p2").policy == {"prohibition": [{"action": "distribute"}]}
    cd = ContractDefinition(
        id="cd1", access_policy_id="p1", contract_policy_id="p2", selector=DatasetSelector(match_all=True)
    )
    store.create_contract_definition(cd)
    rev = store.revision()
    with pytest.raises(ConflictError, match="used by contract definition\\(s\\) cd1"):
        store.delete_policy("p2")
    assert store.get_policy("p2")  # still there
    assert store.revision() == rev
    store.delete_contract_definition("cd1")
    store.delete_policy("p2")
    with pytest.raises(NotFoundError):
        store.get_policy("p2")
    assert [p.id for p in store.query_policies().items] == ["p1"]
    assert store.query_policies(q="zz").total == 0


def test_contract_definitions_need_existing_policies(store: CatalogStore) -> None:
    store.create_policy(PolicyDefinition(id="p1", policy=OPEN))
    cd = ContractDefinition(
        id="cd1",
        access_policy_id="p1",
        contract_policy_id="missing",
        selector=DatasetSelector(dataset_ids=["a"], categories=[Category.CARBON]),
        accept_any_offer_tag=True,
    )
    with pytest.raises(ValidationError) as info:
        store.create_contract_definition(cd)
    assert "contract_policy_id: policy 'missing' does not exist" in info.value.errors
    good = cd.model_copy(update={"contract_policy_id": "p1"})
    store.create_contract_definition(good)
    assert store.get_contract_definition("cd1") == good
    with pytest.raises(ConflictError):
        store.create_contract_definition(good)
    with pytest.raises(ValidationError):
        store.update_contract_definition(good.model_copy(update={"access_policy_id": "nope"}))
    assert store.query_contract_definitions(policy_id="p1").total == 1
    assert store.query_contract_definitions(policy_id="p9").total == 0
    assert store.all_contract_definitions() == [good]
    with pytest.raises(NotFoundError):
        store.get_contract_definition("cd9")
    with pytest.raises(NotFoundError):
        store.delete_contract_definition("cd9")


def test_every_write_bumps_the_revision(store: CatalogStore) -> None:
    seen = [store.revision()]

    def bumped() -> None:
        seen.append(store.revision())
        assert seen[-1] > seen[-2]

    store.create_policy(PolicyDefinition(id="p", policy=OPEN))
    bumped()
    store.create_dataset(_dataset(1))
    bumped()
    store.update_dataset(_dataset(1, title="x"))
    bumped()
    store.create_contract_definition(
        ContractDefinition(
            id="c", access_policy_id="p", contract_policy_id="p", selector=DatasetSelector(match_all=True)
        )
    )
    bumped()
    store.delete_dataset("ds-001")
    bumped()


def test_migrations_match_the_table_definitions(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from connector.store import metadata

    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    ours = [d for d in diffs if "catalog_" in repr(d)]
    assert ours == []
