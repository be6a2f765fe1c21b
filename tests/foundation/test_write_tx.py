"""SQLite group commit in ``write_tx``: bodies that queue share one commit, each body's failure
stays its own, and nobody leaves ``write_tx`` before the commit that holds its changes."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector.store import _tx, create_engine, on_commit, write_tx
from connector.store._tx import _WRITERS

META = sa.MetaData()
ITEM = sa.Table("item", META, sa.Column("name", sa.Text, primary_key=True))
PARENT = sa.Table("parent", META, sa.Column("id", sa.Integer, primary_key=True))
CHILD = sa.Table(
    "child",
    META,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "parent_id",
        sa.Integer,
        sa.ForeignKey("parent.id", deferrable=True, initially="DEFERRED"),
        nullable=False,
    ),
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = create_engine(f"sqlite:///{(tmp_path / 'g.db').as_posix()}")
    META.create_all(eng)
    try:
        yield eng
    finally:
        eng.dispose()


def _commits(engine: sa.Engine) -> list[int]:
    seen: list[int] = []
    sa.event.listen(engine, "commit", lambda _conn: seen.append(1))
    return seen


def _names(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(ITEM.c.name)).scalars())


class _Queued:
    """Runs ``first`` inside write_tx and holds it there until ``others`` queue behind it."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.holding = threading.Event()
        self.release = threading.Event()
        self.outcome: dict[str, str] = {}
        self.visible_after: dict[str, bool] = {}
        self.announced: list[str] = []
        #: the order the bodies ran in (under the writer's lock: the queued threads take it in
        #: whatever order the OS wakes them, not in the order they queued)
        self.ran: list[str] = []

    def body(self, name: str, *, hold: bool = False, fail: bool = False, orphan: bool = False) -> None:
        try:
            with write_tx(self.engine) as conn:
                self.ran.append(name)
                conn.execute(sa.insert(ITEM).values(name=name))
                on_commit(conn, lambda: self.announced.append(name))
                if orphan:  # checked only at COMMIT (deferred foreign key)
                    conn.execute(sa.insert(CHILD).values(id=1, parent_id=999))
                if hold:
                    self.holding.set()
                    assert self.release.wait(10)
                if fail:
                    raise RuntimeError(f"{name} failed")
            self.outcome[name] = "ok"
            self.visible_after[name] = name in _names(self.engine)
        except Exception as exc:
            self.outcome[name] = f"{type(exc).__name__}: {exc}"

    def run(self, first: str, others: dict[str, dict[str, bool]]) -> None:
        t0 = threading.Thread(target=self.body, args=(first,), kwargs={"hold": True})
        t0.start()
        assert self.holding.wait(10)
        threads = [threading.Thread(target=self.body, args=(n,), kwargs=kw) for n, kw in others.items()]
        for t in threads:
            t.start()
        writer = _WRITERS[self.engine]
        deadline = time.monotonic() + 10
        while writer.queued < len(others):  # all of them wait for the lock
            assert time.monotonic() < deadline, "the other bodies never queued"
            time.sleep(0.001)
        self.release.set()
        for t in [t0, *threads]:
            t.join(10)


def test_queued_bodies_share_one_commit_and_a_failing_body_loses_only_its_changes(
    engine: sa.Engine,
) -> None:
    commits = _commits(engine)
    q = _Queued(engine)
    q.run("a", {"b": {}, "c": {"fail": True}, "d": {}})
    assert q.outcome == {"a": "ok", "b": "ok", "c": "RuntimeError: c failed", "d": "ok"}
    assert _names(engine) == {"a", "b", "d"}
    assert len(commits) == 1
    # each body's changes were committed before its write_tx returned
    assert q.visible_after == {"a": True, "b": True, "d": True}
    # on_commit callbacks: in the order the bodies ran, none for the failed body
    assert sorted(q.ran) == ["a", "b", "c", "d"]
    assert q.announced == [n for n in q.ran if n != "c"]


def test_a_failing_first_body_alone_rolls_back_and_the_next_transaction_works(engine: sa.Engine) -> None:
    def failing() -> None:
        with write_tx(engine) as conn:
            conn.execute(sa.insert(ITEM).values(name="gone"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing()
    with write_tx(engine) as conn:
        conn.execute(sa.insert(ITEM).values(name="kept"))
    assert _names(engine) == {"kept"}


def test_when_the_shared_commit_fails_every_body_in_it_gets_the_error(engine: sa.Engine) -> None:
    q = _Queued(engine)
    q.run("a", {"b": {}, "c": {"orphan": True}})
    assert set(q.outcome) == {"a", "b", "c"}
    assert all("IntegrityError" in v for v in q.outcome.values()), q.outcome
    assert _names(engine) == set()
    assert q.announced == []
    with write_tx(engine) as conn:  # the writer recovered
        conn.execute(sa.insert(ITEM).values(name="after"))
    assert _names(engine) == {"after"}


def test_postgres_write_tx_is_a_plain_transaction_with_on_commit(pg_url: str) -> None:
    eng = create_engine(pg_url)
    META.create_all(eng)
    seen: list[tuple[str, set[str]]] = []
    try:
        with write_tx(eng) as conn:
            conn.execute(sa.insert(ITEM).values(name="x"))
            on_commit(conn, lambda: seen.append(("x", _names(eng))))
            assert seen == []
        assert seen == [("x", {"x"})]  # after the commit: the row is visible to others

        def failing() -> None:
            with write_tx(eng) as conn:
                on_commit(conn, lambda: seen.append(("y", set())))
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            failing()
        assert [n for n, _ in seen] == ["x"]
        assert eng not in _WRITERS
        with eng.connect() as conn, pytest.raises(RuntimeError, match="write_tx"):
            on_commit(conn, lambda: None)  # a plain connection: nothing would ever call it
    finally:
        eng.dispose()


def test_a_savepoint_that_cannot_open_fails_the_batch_and_frees_the_writer(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer lock is released whatever fails, so the next writer is not stuck behind it."""
    q = _Queued(engine)

    def broken(self: Any, conn: sa.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(_tx._Savepoint, "__init__", broken)
    q.run("a", {"b": {}})
    assert q.outcome["a"].startswith("StoreError"), q.outcome
    assert "OperationalError" in q.outcome["b"], q.outcome
    monkeypatch.undo()
    with write_tx(engine) as conn:
        conn.execute(sa.insert(ITEM).values(name="after"))
    assert _names(engine) == {"after"}
