from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector.errors import ConfigError
from connector.store import autocommit_tx, create_engine, migrate, normalize_url, read_only, run


def test_normalize_url_uses_psycopg3() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_unsupported_database_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unsupported database"):
        create_engine("mysql://u@h/db")
    with pytest.raises(ConfigError, match="not a valid database URL"):
        create_engine("::nonsense::")


def test_migrate_is_idempotent(engine: sa.Engine) -> None:
    migrate(engine)  # second run: nothing to do, no error
    with engine.connect() as conn:
        heads = conn.execute(sa.text("select version_num from alembic_version")).scalars().all()
    assert heads  # every package branch recorded its head


def test_sqlite_is_wal_with_single_writer(sqlite_url: str) -> None:
    eng = create_engine(sqlite_url)
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    with eng.begin() as conn:
        conn.exec_driver_sql("create table t (n integer)")
        conn.exec_driver_sql("insert into t values (0)")
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(50):
                with eng.begin() as conn:
                    n = conn.exec_driver_sql("select n from t").scalar_one()
                    conn.exec_driver_sql(f"update t set n = {n + 1}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with eng.connect() as conn:
        # read-modify-write under BEGIN IMMEDIATE never loses an update
        assert conn.exec_driver_sql("select n from t").scalar_one() == 200


def test_a_read_only_connection_neither_waits_for_nor_blocks_the_writer(engine: sa.Engine) -> None:
    """While a write transaction is open (uncommitted), a read_only connection reads the last
    committed state at once; on SQLite a plain ``engine.connect()`` would wait for the write lock."""
    with engine.begin() as conn:
        conn.exec_driver_sql("create table rt (n integer)")
        conn.exec_driver_sql("insert into rt values (1)")
    seen: list[int] = []
    writer = engine.connect()
    tx = writer.begin()  # on SQLite: BEGIN IMMEDIATE, the write lock is held from here
    try:
        writer.exec_driver_sql("update rt set n = 2")

        def read() -> None:
            with read_only(engine) as conn:
                seen.append(conn.exec_driver_sql("select n from rt").scalar_one())

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(10)  # the busy timeout is 30 s: a reader that waits for the lock fails here
        assert not reader.is_alive(), "the read waited for the writer"
        assert seen == [1]  # the committed state, not the writer's uncommitted update
        # and the writer is not held up by the reader's snapshot: it commits at once
        tx.commit()
    finally:
        writer.close()
    with read_only(engine) as conn:
        assert conn.exec_driver_sql("select n from rt").scalar_one() == 2


def test_postgres_pool_keeps_its_connections_under_load(pg_url: str) -> None:
    """More threads than connections: they wait for one, and no connection is opened and closed
    again per request (each would be a new PostgreSQL backend)."""
    eng = create_engine(pg_url, pool_size=4)
    pids: set[int] = set()
    lock = threading.Lock()

    def use() -> None:
        for _ in range(20):
            with eng.begin() as conn:
                pid = conn.execute(sa.text("select pg_backend_pid()")).scalar_one()
                conn.execute(sa.text("select pg_sleep(0.001)"))
            with lock:
                pids.add(pid)

    threads = [threading.Thread(target=use) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert 1 <= len(pids) <= 4, f"{len(pids)} backends served 240 transactions of a pool of 4"
    finally:
        eng.dispose()


def test_postgres_idle_connection_that_died_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection whose backend went away while idle (server restart, proxy timeout) is
    found dead by the idle ping and replaced: the caller's transaction succeeds."""
    from connector.store import _engine

    eng = create_engine(pg_url, pool_size=1)
    admin = create_engine(pg_url, pool_size=1)
    try:
        with eng.connect() as conn:
            old = conn.execute(sa.text("select pg_backend_pid()")).scalar_one()
        with admin.connect() as conn:
            conn.execute(sa.text("select pg_terminate_backend(:p)"), {"p": old})
            conn.commit()
        monkeypatch.setattr(_engine, "PING_AFTER_IDLE_S", 0.0)
        with eng.begin() as conn:
            new = conn.execute(sa.text("select pg_backend_pid()")).scalar_one()
        assert new != old
    finally:
        eng.dispose()
        admin.dispose()


def test_postgres_connection_in_steady_use_is_not_pinged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping round trip before each transaction while the connection is in use; one after it
    sat idle (what the server saw last on that backend tells)."""
    from connector.store import _engine

    eng = create_engine(pg_url, pool_size=1)
    admin = create_engine(pg_url, pool_size=1)

    def last_query(pid: int) -> str:
        with admin.connect() as conn:
            return str(
                conn.execute(
                    sa.text("select query from pg_stat_activity where pid = :p"), {"p": pid}
                ).scalar_one()
            )

    try:
        with eng.begin() as conn:
            pid = conn.execute(sa.text("select pg_backend_pid()")).scalar_one()
            conn.execute(sa.text("select 'marker'"))
        after_checkin = last_query(pid)
        with eng.connect():
            assert last_query(pid) == after_checkin  # checked out again at once: nothing sent
        monkeypatch.setattr(_engine, "PING_AFTER_IDLE_S", 0.0)
        with eng.connect():
            assert last_query(pid) == "ROLLBACK"  # idle "long enough": pinged (and rolled back)
    finally:
        eng.dispose()
        admin.dispose()


@pytest.mark.postgres
def test_postgres_read_only_is_one_round_trip_and_keeps_prepared_statements(
    pg_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL ``read_only`` is autocommit: a one-statement read is one round trip (no
    BEGIN, no ROLLBACK), and psycopg keeps the connection's prepared statements (it drops them
    all at a ROLLBACK). The connection goes back to the pool transactional as before."""
    eng = create_engine(pg_url, pool_size=1)  # one pooled connection: every block below uses it
    try:
        with eng.begin() as conn:
            conn.exec_driver_sql("create table ro (n integer)")
            conn.exec_driver_sql("insert into ro values (1)")
        with eng.connect() as conn:
            raw: Any = conn.connection.dbapi_connection
        for _ in range(6):  # psycopg prepares a statement at its sixth execution (threshold 5)
            with read_only(eng) as conn:
                assert conn.execute(sa.text("select n from ro")).scalar_one() == 1
        prepared = dict(raw._prepared._names)  # psycopg's record of what the server holds
        assert prepared, "psycopg kept no prepared statement (it drops them all at a ROLLBACK)"
        trace = tmp_path / "libpq.trace"
        with trace.open("w") as f:
            raw.pgconn.trace(f.fileno())
            with read_only(eng) as conn:
                assert conn.execute(sa.text("select n from ro")).scalar_one() == 1
            raw.pgconn.untrace()
        sent = [line.split("\t")[3] for line in trace.read_text().splitlines() if "\tF\t" in line]
        assert sent.count("Sync") + sent.count("Query") == 1, sent  # one request, one answer
        assert "Parse" not in sent, sent  # the prepared statement was used, not parsed again
        assert raw._prepared._names == prepared
        # back in the pool as it was: a plain connection's writes are in a transaction
        with eng.connect() as conn:
            conn.exec_driver_sql("insert into ro values (2)")
            conn.rollback()
        with read_only(eng) as conn:
            assert conn.execute(sa.text("select count(*) from ro")).scalar_one() == 1
    finally:
        eng.dispose()


@pytest.mark.postgres
def test_postgres_statements_are_prepared_at_their_second_execution(pg_url: str) -> None:
    """A pooled connection prepares a statement the second time it runs it (psycopg's default is
    the sixth, per connection: with a pool of 20 many hot statements were still parsed and
    planned on every run); a statement run once is not prepared."""
    eng = create_engine(pg_url, pool_size=1)
    try:
        with eng.connect() as conn:
            raw: Any = conn.connection.dbapi_connection
            conn.execute(sa.text("select 1 as once"))
            assert not raw._prepared._names
            for _ in range(2):
                conn.execute(sa.text("select 2 as twice"))
            assert len(raw._prepared._names) == 1
    finally:
        eng.dispose()


@pytest.mark.postgres
def test_postgres_autocommit_blocks_commit_each_statement_and_keep_half_the_pool_for_the_next(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``autocommit_tx``: each statement commits at once (another connection sees it before the
    block ends). Its connection stays checked out in autocommit mode for the next such block
    (decision 0414), but never more than half the pool: plain users always find connections,
    and those are transactional. One left inside an explicit transaction is discarded, one idle
    too long goes back to the pool transactional, and disposing of the engine closes them."""
    from connector.store import _engine

    eng = create_engine(pg_url, pool_size=2)  # keeps at most one
    admin = create_engine(pg_url, pool_size=1)

    def last_query(pid: int) -> str:
        with admin.connect() as conn:
            q = "select query from pg_stat_activity where pid = :p"
            return str(conn.execute(sa.text(q), {"p": pid}).scalar_one())

    def backends() -> set[int]:
        with admin.connect() as conn:
            rows = conn.execute(
                sa.text("select pid from pg_stat_activity where datname = current_database()")
            )
            own: Any = conn.connection.dbapi_connection
            return {int(r[0]) for r in rows} - {own.info.backend_pid}

    try:
        with eng.begin() as conn:
            conn.exec_driver_sql("create table ac (n integer)")
        with autocommit_tx(eng) as conn:
            raw: Any = conn.connection.dbapi_connection
            run(conn, sa.text("insert into ac values (1)"), {})
            with eng.connect() as other:
                assert other.exec_driver_sql("select count(*) from ac").scalar_one() == 1
        assert raw.autocommit is True  # kept for the next block, not back in the pool
        with autocommit_tx(eng) as conn:
            assert conn.connection.dbapi_connection is raw  # no pool check-out
        # the other pooled connection still serves plain users, transactional
        with eng.connect() as c1:
            assert c1.connection.dbapi_connection is not raw
            c1.exec_driver_sql("insert into ac values (2)")
            c1.rollback()
            # two blocks at once: the second checks one out of the pool (the last one, c1's,
            # once c1 is back), and only one of them is kept afterwards
        with read_only(eng) as r1, read_only(eng) as r2:
            pair = {id(r1.connection.dbapi_connection), id(r2.connection.dbapi_connection)}
            assert len(pair) == 2
        with eng.connect() as c1:  # the pool still has one for a plain user, transactional
            assert c1.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
            c1.exec_driver_sql("insert into ac values (3)")
            c1.rollback()
        with read_only(eng) as conn:
            assert conn.execute(sa.text("select count(*) from ac")).scalar_one() == 1
            conn.exec_driver_sql("BEGIN")  # left open: not kept, cannot switch back either
            left_open: Any = conn.connection.dbapi_connection
        assert left_open.closed
        with eng.connect() as c1, eng.connect() as c2:  # nothing kept: both free for plain use
            for c in (c1, c2):
                assert c.connection.dbapi_connection is not left_open
                assert c.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
        with read_only(eng) as conn:
            idle: Any = conn.connection.dbapi_connection
        idle_pid = idle.info.backend_pid
        with eng.connect() as hold:  # the pool's other connection, out of the way
            assert hold.connection.dbapi_connection is not idle
            monkeypatch.setattr(_engine, "PING_AFTER_IDLE_S", 0.0)
            with read_only(eng) as conn:
                # the kept one sat idle "too long": it went back to the pool transactional and
                # came out again through the pool's check-out, which pinged it in a transaction
                assert conn.connection.dbapi_connection is idle
                assert last_query(idle_pid) == "ROLLBACK"
            monkeypatch.setattr(_engine, "PING_AFTER_IDLE_S", 5.0)
        with read_only(eng) as conn:
            kept: Any = conn.connection.dbapi_connection
            pid = kept.info.backend_pid
        assert pid in backends()
        eng.dispose()
        assert kept.closed  # a kept connection is closed with the engine: its backend goes
        assert pid not in backends()
    finally:
        eng.dispose()
        admin.dispose()


@pytest.mark.postgres
def test_postgres_a_pool_of_one_keeps_no_autocommit_connection(pg_url: str) -> None:
    """With a pool of one, ``read_only`` gives its connection back each time (transactional):
    keeping it would leave nothing for anyone else."""
    eng = create_engine(pg_url, pool_size=1)
    try:
        with read_only(eng) as conn:
            raw: Any = conn.connection.dbapi_connection
        assert raw.autocommit is False
        with eng.connect() as conn:  # would wait 30 s for a kept connection
            assert conn.connection.dbapi_connection is raw
    finally:
        eng.dispose()


def test_every_packages_migrations_match_its_table_definitions(engine: sa.Engine) -> None:
    """What the code declares (columns, indexes, partial indexes) is what the migrations built,
    for every package's tables, on both backends."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import catalog  # noqa: F401  (each package registers its tables on the shared metadata)
    import connector.app  # noqa: F401
    import contracts  # noqa: F401
    import metering  # noqa: F401
    from connector.store import metadata

    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []


@pytest.mark.postgres
def test_postgres_long_statements_are_converted_once(pg_url: str) -> None:
    """psycopg parses a statement's placeholders once per text, but by default only for
    statements of up to 50 parameters; our one-statement writes have more, and were parsed again
    at every execution. With our engine their conversion is cached too."""
    from psycopg import _queries

    eng = create_engine(pg_url, pool_size=1)
    try:
        names = [f"p{i}" for i in range(60)]
        stmt = sa.text("select " + " + ".join(f"cast(:{n} as integer)" for n in names) + " as total")
        params = dict.fromkeys(names, 1)
        with eng.connect() as conn:
            assert conn.execute(stmt, params).scalar() == 60
            before = _queries._query2pg.cache_info().hits
            assert conn.execute(stmt, params).scalar() == 60
            assert _queries._query2pg.cache_info().hits == before + 1
    finally:
        eng.dispose()
