"""Write transactions: SQLite group commit and after-commit callbacks (decision 0403).

``write_tx(engine)`` is the way to write: on PostgreSQL a plain ``engine.begin()``; on SQLite
the threads of a process queue on a Python lock (not in SQLite's sleeping busy handler) and
share commits while others wait. ``on_commit(conn, fn)`` runs ``fn`` after the commit, in commit
order.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy.engine import Connection, Engine

from connector.errors import StoreError
from connector.store._engine import pg_autocommit

__all__ = ["autocommit_tx", "on_commit", "write_tx"]

log = logging.getLogger(__name__)


#: ``Connection.info`` key of the callbacks registered with :func:`on_commit`.
_AFTER_COMMIT = "dadam_after_commit"


def on_commit(conn: Connection, fn: Callable[[], None]) -> None:
    """Call ``fn`` once the transaction of ``conn`` (a :func:`write_tx`) has committed; not at all
    if it rolls back. Callbacks run in commit order, in the committing thread, before any body of
    that commit leaves ``write_tx``: what several threads publish from one group commit comes out
    in the order their bodies ran. Keep them short and never open a write transaction in one."""
    callbacks = conn.info.get(_AFTER_COMMIT)
    if callbacks is None:
        raise RuntimeError("on_commit() needs a connection from write_tx()")
    callbacks.append(fn)


def _run_callbacks(callbacks: list[Callable[[], None]]) -> None:
    for fn in callbacks:
        try:
            fn()
        except Exception:
            log.exception("after-commit callback failed")


@contextlib.contextmanager
def _collecting(conn: Connection, callbacks: list[Callable[[], None]]) -> Iterator[Connection]:
    """``conn`` with :func:`on_commit` registering into ``callbacks`` while the block runs."""
    conn.info[_AFTER_COMMIT] = callbacks
    try:
        yield conn
    finally:
        conn.info.pop(_AFTER_COMMIT, None)


@contextlib.contextmanager
def _plain_tx(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()`` with :func:`on_commit` callbacks (PostgreSQL)."""
    callbacks: list[Callable[[], None]] = []
    with engine.begin() as conn, _collecting(conn, callbacks):
        yield conn
    _run_callbacks(callbacks)


class _Batch:
    """One SQLite transaction shared by the write_tx bodies that ran in it."""

    __slots__ = ("callbacks", "conn", "done", "error", "members", "tx")

    def __init__(self, engine: Engine) -> None:
        self.conn = engine.connect()
        try:
            self.tx = self.conn.begin()  # BEGIN IMMEDIATE (see connector.store)
        except BaseException:
            self.conn.close()
            raise
        self.members = 0
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.callbacks: list[Callable[[], None]] = []
        self.conn.info[_AFTER_COMMIT] = self.callbacks


class _Savepoint:
    """A savepoint for one member of a batch, on the driver connection.

    Members run one after another, so one name serves all. SQLAlchemy's ``begin_nested()``
    costs about 60 us per SAVEPOINT/RELEASE pair (its nested-transaction bookkeeping), the
    driver's own statements about 1 us; the enclosing transaction stays SQLAlchemy's.
    """

    __slots__ = ("_raw",)
    NAME = "dadam_member"

    def __init__(self, conn: Connection) -> None:
        raw: Any = conn.connection.driver_connection
        self._raw = raw
        raw.execute(f"SAVEPOINT {self.NAME}")

    def release(self) -> None:
        self._raw.execute(f"RELEASE {self.NAME}")

    def rollback(self) -> None:
        self._raw.execute(f"ROLLBACK TO {self.NAME}")
        self._raw.execute(f"RELEASE {self.NAME}")


class _GroupWriter:
    """Group commit for one SQLite engine (see :func:`write_tx`)."""

    #: Most bodies per commit: bounds how long the first one waits for its commit.
    MAX_MEMBERS = 32

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()  # held while a body runs
        self.guard = threading.Lock()  # protects ``queued``
        self.queued = 0  # threads waiting for ``lock``
        self.batch: _Batch | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.guard:
            self.queued += 1
        self.lock.acquire()
        with self.guard:
            self.queued -= 1
        try:
            batch = self.batch
            if batch is None:
                batch = self.batch = _Batch(self.engine)
        except BaseException:
            self._end_locked(None)
            raise
        # The first body runs in the transaction itself; later ones in a savepoint each, so a
        # body that fails takes only its own changes back.
        try:
            savepoint = _Savepoint(batch.conn) if batch.members else None
        except BaseException:
            batch.error = StoreError("a shared SQLite transaction could not open a savepoint")
            self._end_locked(batch, commit=False)
            raise
        registered = len(batch.callbacks)
        try:
            yield batch.conn
            if savepoint is not None:
                savepoint.release()
        except BaseException:
            if savepoint is None:
                self._end_locked(batch, commit=False)  # nobody else is in it: roll it all back
                raise
            del batch.callbacks[registered:]  # its changes are gone: so are its callbacks
            try:
                savepoint.rollback()
            except BaseException:
                batch.error = StoreError("a transaction shared with a failed one could not continue")
                self._end_locked(batch, commit=False)
                raise
            self._maybe_commit(batch)
            raise
        batch.members += 1
        if not self._maybe_commit(batch):
            batch.done.wait()
        if batch.error is not None:
            raise batch.error

    def _maybe_commit(self, batch: _Batch) -> bool:
        """Commit now when nobody waits to join (or the batch is full), else leave the batch open
        for the next body. Releases the lock either way; True when this thread committed."""
        with self.guard:
            last = self.queued == 0 or batch.members >= self.MAX_MEMBERS
        if last:
            self._end_locked(batch, commit=True)
        else:
            self.lock.release()
        return last

    def _end_locked(self, batch: _Batch | None, *, commit: bool = True) -> None:
        """End ``batch`` (commit or roll back), wake its members, release the lock."""
        try:
            if batch is not None:
                self.batch = None
                try:
                    if commit and batch.error is None:
                        batch.tx.commit()
                        _run_callbacks(batch.callbacks)
                    else:
                        batch.tx.rollback()
                except BaseException as exc:
                    batch.error = batch.error or exc
                    with contextlib.suppress(Exception):
                        batch.tx.rollback()
                finally:
                    batch.conn.info.pop(_AFTER_COMMIT, None)
                    batch.conn.close()
                    batch.done.set()
        finally:
            self.lock.release()


_WRITERS: weakref.WeakKeyDictionary[Engine, _GroupWriter] = weakref.WeakKeyDictionary()
_WRITERS_GUARD = threading.Lock()


@contextlib.contextmanager
def autocommit_tx(engine: Engine) -> Iterator[Connection]:
    """PostgreSQL: a connection on which every statement commits on its own, for work whose
    writes are one statement; :func:`on_commit` callbacks run when the block ends without an
    exception (none if it raises)."""
    if engine.dialect.name != "postgresql":
        raise StoreError("autocommit_tx is for PostgreSQL")
    callbacks: list[Callable[[], None]] = []
    with pg_autocommit(engine) as conn, _collecting(conn, callbacks) as ac:
        yield ac
    _run_callbacks(callbacks)


def write_tx(engine: Engine) -> contextlib.AbstractContextManager[Connection]:
    """A write transaction: ``engine.begin()`` on PostgreSQL; on SQLite a group commit.

    SQLite allows one writer. Threads of this process queue on a Python lock (SQLite's own busy
    handler sleeps in steps of up to 100 ms) and, while others wait, share one transaction: each
    body runs alone under the lock (the first in the transaction itself, later ones in a
    savepoint each, so a failing body rolls back only its own changes and sees its exception),
    and the last body in line commits for all. ``write_tx`` returns only after the commit that
    holds its changes, so "acknowledge after commit" still holds; if that commit fails, every
    body in it gets the error. One commit for many bodies: the WAL pages shared by them are
    written once, and the lock changes hands once per batch instead of once per transaction.
    """
    if engine.dialect.name != "sqlite":
        return _plain_tx(engine)
    writer = _WRITERS.get(engine)
    if writer is None:
        with _WRITERS_GUARD:
            writer = _WRITERS.setdefault(engine, _GroupWriter(engine))
    return writer.transaction()
