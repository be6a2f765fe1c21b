"""Fixtures for contract negotiation tests (the harness is in cn_harness.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cn_harness import PG_ADMIN_URL, Node, Tck, database_factory

from contracts import StaticKeyResolver


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A factory of fresh database URLs on one backend (each connector gets its own database)."""
    with database_factory(request.param, tmp_path) as make:
        yield make


@pytest.fixture
def tck() -> Iterator[Tck]:
    """A scripted DSP counterparty of its own for the test (test_conformance shares one)."""
    t = Tck()
    yield t
    t.stop()


@pytest.fixture
def keys() -> StaticKeyResolver:
    return StaticKeyResolver()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Collects nodes made in a test and stops them all at teardown."""
    made: list[Node] = []
    yield made
    for n in made:
        n.stop()


def pg_database(request: pytest.FixtureRequest) -> Callable[[], str]:
    """A factory of fresh PostgreSQL databases, dropped when ``request``'s test ends."""
    try:
        admin = sa.create_engine(
            PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    created: list[str] = []

    def make() -> str:
        name = f"dadam_cn_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"

    def drop() -> None:
        with admin.connect() as conn:
            for name in created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    request.addfinalizer(drop)
    return make


@pytest.fixture
def pg_dbs(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Fresh PostgreSQL databases (request this before ``procs`` so processes stop first)."""
    return pg_database(request)


@pytest.fixture
def pg_databases(request: pytest.FixtureRequest) -> Callable[[], str]:
    """:func:`pg_database` as a fixture (importing from ``conftest`` breaks when the whole suite runs:
    another folder's conftest module is found first)."""
    return pg_database(request)
