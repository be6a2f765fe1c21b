"""Connector app fixtures: an app on a fresh SQLite database with the sample catalog, and clients."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

# the DSP schema helpers live next to the catalog tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "catalog"))

from connector_testing import API_KEY, TestClient

from catalog.samples import seed_samples
from connector.app import create_app
from connector.runtime import Runtime
from connector.settings import Settings


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str) -> Settings:
    return Settings(
        public_url="http://127.0.0.1:8181",
        data_dir=tmp_path,
        database_url=SecretStr(sqlite_url),
        api_key=SecretStr(API_KEY),
        max_body_bytes=4096,
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.create(settings)
    seed_samples(rt.catalog_store)
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime)) as c:
        yield c


@pytest.fixture
def auth() -> dict[str, str]:
    return {"X-Api-Key": API_KEY}
