"""Catalog fixtures: a store on both backends, the samples, a service."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from catalog_testing import DSP_BASE, PARTICIPANT

from catalog import CatalogService, CatalogStore
from catalog.samples import seed_samples


@pytest.fixture
def store(engine: sa.Engine) -> CatalogStore:
    return CatalogStore(engine)


@pytest.fixture
def seeded(store: CatalogStore) -> CatalogStore:
    seed_samples(store)
    return store


@pytest.fixture
def service(seeded: CatalogStore) -> CatalogService:
    return CatalogService(seeded, participant_id=PARTICIPANT, dsp_base_url=DSP_BASE)
