"""``connector.store.run`` (decision 0406): hot statements on the driver's cursor give what
``Connection.execute`` gives (values, types, row counts, errors), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector.store import create_engine, migrate, read_only, run
from connector.store._direct import _PLANS

META = sa.MetaData()
THING = sa.Table(
    "direct_thing",
    META,
    sa.Column("id", sa.String(50), primary_key=True),
    sa.Column("state", sa.Integer, nullable=False),
    sa.Column("pending", sa.Boolean, nullable=False),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("seen", sa.DateTime, nullable=True),
    sa.Column("doc", sa.JSON, nullable=True),
    sa.Column("version", sa.Integer, nullable=False, default=0),
)

WHEN = datetime.datetime(2026, 11, 28, 12, 30, 15, 250000)
SELECT = sa.select(THING).where(THING.c.id == sa.bindparam("_id"))
INSERT = sa.insert(THING)
INSERT_RETURNING = sa.insert(THING).returning(THING.c.id, THING.c.pending, THING.c.seen)
BUMP = (
    sa.update(THING)
    .where(THING.c.id == sa.bindparam("_id"), THING.c.state == sa.literal(1))  # a literal parameter
    .values(state=sa.bindparam("_state"), version=THING.c.version + 1)
)
ROW = {
    "id": "a",
    "state": 1,
    "pending": True,
    "score": 0.5,
    "seen": WHEN,
    "doc": {"k": [1, "x"]},
    "version": 0,
}


@pytest.fixture
def things(engine: sa.Engine) -> sa.Engine:
    META.create_all(engine)
    return engine


def _sa(engine: sa.Engine, stmt: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt, params).mappings()]


def test_rows_and_types_are_those_of_connection_execute(things: sa.Engine) -> None:
    with things.begin() as conn:
        run(conn, INSERT, ROW)
        run(conn, INSERT, {**ROW, "id": "b", "pending": False, "score": None, "seen": None, "doc": None})
    with things.connect() as conn:
        got = run(conn, SELECT, {"_id": "a"}).first()
        assert run(conn, SELECT, {"_id": "nope"}).first() is None
    assert got == _sa(things, SELECT, {"_id": "a"})[0] == ROW
    assert got is not None and got["pending"] is True and isinstance(got["seen"], datetime.datetime)
    with things.connect() as conn:
        other = run(conn, SELECT, {"_id": "b"}).one()
    assert other == _sa(things, SELECT, {"_id": "b"})[0]
    assert other["pending"] is False and other["doc"] is None


def test_update_row_count_literals_and_returning(things: sa.Engine) -> None:
    with things.begin() as conn:
        inserted = run(conn, INSERT_RETURNING, ROW).one()
        assert inserted == {"id": "a", "pending": True, "seen": WHEN}
        assert run(conn, BUMP, {"_id": "a", "_state": 2}).rowcount == 1
        assert run(conn, BUMP, {"_id": "a", "_state": 3}).rowcount == 0  # state is 2 now, not 1
        assert run(conn, BUMP, {"_id": "zzz", "_state": 3}).rowcount == 0
    assert _sa(things, SELECT, {"_id": "a"})[0] == {**ROW, "state": 2, "version": 1}


def test_python_side_defaults_go_through_sqlalchemy(things: sa.Engine) -> None:
    row = {k: v for k, v in ROW.items() if k != "version"}  # version has default=0
    with things.begin() as conn:
        run(conn, INSERT, row)
    assert _sa(things, SELECT, {"_id": "a"})[0]["version"] == 0


def test_expanding_in_goes_through_sqlalchemy(things: sa.Engine) -> None:
    stmt = (
        sa.select(THING.c.id).where(THING.c.id.in_(sa.bindparam("_ids", expanding=True))).order_by(THING.c.id)
    )
    with things.begin() as conn:
        for i in "abc":
            run(conn, INSERT, {**ROW, "id": i})
        assert [r["id"] for r in run(conn, stmt, {"_ids": ["a", "c"]}).all()] == ["a", "c"]
        assert [r["id"] for r in run(conn, stmt, {"_ids": ["b"]}).all()] == ["b"]


def test_errors_are_sqlalchemy_errors_and_the_transaction_is_kept(things: sa.Engine) -> None:
    with things.connect() as conn:
        run(conn, INSERT, ROW)  # begins a transaction, as Connection.execute would
        assert conn.in_transaction()
        with pytest.raises(sa.exc.IntegrityError) as err:
            run(conn, INSERT, ROW)
        assert "direct_thing" in str(err.value).lower() or "unique" in str(err.value).lower()
        conn.rollback()
    # the rollback took the first insert back: it was in the transaction
    assert _sa(things, SELECT, {"_id": "a"}) == []


def test_plans_are_per_dialect_and_parameter_names(things: sa.Engine) -> None:
    short = {k: v for k, v in ROW.items() if k not in ("score", "seen", "doc")} | {"id": "b"}
    with things.begin() as conn:
        run(conn, INSERT, ROW)
        run(conn, INSERT, short)
    for params in (ROW, short):
        assert (id(INSERT), things.dialect.name, frozenset(params)) in _PLANS
    assert _sa(things, SELECT, {"_id": "b"})[0]["score"] is None


@pytest.mark.postgres
def test_a_lost_postgres_connection_is_invalidated(pg_url: str) -> None:
    things = create_engine(pg_url)
    META.create_all(things)
    try:
        _lose_connection(things)
    finally:
        things.dispose()


def _lose_connection(things: sa.Engine) -> None:
    with things.connect() as conn:
        pid = conn.execute(sa.text("select pg_backend_pid()")).scalar()
        conn.rollback()
        with things.connect() as killer:
            killer.execute(sa.text("select pg_terminate_backend(:p)"), {"p": pid})
            killer.commit()
        with pytest.raises(sa.exc.DBAPIError) as err:
            run(conn, SELECT, {"_id": "a"})
        assert err.value.connection_invalidated
        assert conn.invalidated
    with things.connect() as conn:  # the pool hands out a working connection
        assert run(conn, SELECT, {"_id": "a"}).first() is None


@pytest.mark.postgres
def test_catalog_revision_read_is_one_round_trip_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """Read before every offer lookup: autocommit, no BEGIN and ROLLBACK round trips (libpq trace)."""
    from catalog._store import CatalogStore

    eng = create_engine(pg_url)
    try:
        migrate(eng)
        store = CatalogStore(eng)
        for _ in range(2):  # the second run prepares the statement (decision 0407)
            assert store.revision() == 0
        with read_only(eng) as conn:  # the kept connection the next read will use
            raw: Any = conn.connection.dbapi_connection
        trace = tmp_path / "libpq.trace"
        with trace.open("w") as f:
            raw.pgconn.trace(f.fileno())
            assert store.revision() == 0
            raw.pgconn.untrace()
        sent = [line.split("\t")[3] for line in trace.read_text().splitlines() if "\tF\t" in line]
        assert sent.count("Sync") + sent.count("Query") == 1, sent  # one request, one answer
        assert "Parse" not in sent, sent  # the prepared statement
    finally:
        eng.dispose()
