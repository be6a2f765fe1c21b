"""A provider decides an initial request on the catalog as it is when the negotiation is written:
on PostgreSQL against the catalog this process last loaded, with the INSERT conditional on the
catalog revision being unchanged (decided again when another replica changed it meanwhile)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from catalog import CatalogService, CatalogStore, PolicyEngineEvaluator, policy_tag
from catalog.samples import seed_samples
from connector.errors import ValidationError
from connector.identity import Caller
from contracts import NegotiationConfig, NegotiationManager
from usage_policy import CATENA_X

PROVIDER = "did:web:provider.example"
MEMBER = Caller(did="did:web:member.example", claims={"memberships": [CATENA_X], "bpn": "BPNL000000000MEM"})
DATASET = "pcf-brake-disc-bd330v"


def _request(offer_id: str) -> dict[str, Any]:
    return {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@id": f"urn:uuid:{uuid.uuid4()}",
        "@type": "ContractRequestMessage",
        "consumerPid": f"urn:uuid:{uuid.uuid4()}",
        "offer": {"@id": offer_id, "@type": "Offer", "target": DATASET, "permission": [{"action": "use"}]},
        "callbackAddress": "http://127.0.0.1:9/dsp",  # nobody: the agreement is never delivered
    }


@pytest.fixture
def provider(engine: sa.Engine) -> Any:
    store = CatalogStore(engine)
    seed_samples(store)
    catalog = CatalogService(
        store,
        participant_id=PROVIDER,
        dsp_base_url="http://127.0.0.1:9/dsp",
        access_evaluator=PolicyEngineEvaluator(),
    )
    manager = NegotiationManager(
        engine,
        NegotiationConfig(participant_id=PROVIDER, dsp_base_url="http://127.0.0.1:9/dsp"),
        offers=catalog,
    )
    assert manager._optimistic == (engine.dialect.name == "postgresql")
    yield manager, catalog, store
    manager.stop()


def test_an_offer_removed_by_another_replica_is_refused_at_once(provider: Any, engine: sa.Engine) -> None:
    manager, _catalog, store = provider
    offer_id = f"pcf-members:{DATASET}:{policy_tag(store.get_policy('pcf-usage').policy)}"
    assert manager.provider_request(_request(offer_id), MEMBER)["state"] in ("REQUESTED", "AGREED")
    # another replica (its own store on the same database) withdraws the dataset
    CatalogStore(engine).delete_dataset(DATASET)
    with pytest.raises(ValidationError, match="cannot be negotiated") as err:
        manager.provider_request(_request(offer_id), MEMBER)
    assert any(DATASET in r for r in err.value.reasons())
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("select count(*) from cn_negotiations").scalar_one()
    assert rows == 1  # only the first request's negotiation


def test_an_unchanged_catalog_is_not_read_again(provider: Any, engine: sa.Engine) -> None:
    """PostgreSQL: deciding on the loaded catalog saves the revision read of every request."""
    manager, catalog, store = provider
    offer_id = f"pcf-members:{DATASET}:{policy_tag(store.get_policy('pcf-usage').policy)}"
    manager.provider_request(_request(offer_id), MEMBER)
    reads = []
    revision = catalog.store.revision
    catalog.store.revision = lambda: reads.append(1) or revision()
    for _ in range(3):
        assert manager.provider_request(_request(offer_id), MEMBER)["state"] in ("REQUESTED", "AGREED")
    assert len(reads) == (0 if engine.dialect.name == "postgresql" else 3)
