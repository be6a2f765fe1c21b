"""Engine factory and migration runner (see the package docstring)."""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.errors import ConfigError, StoreError

__all__ = [
    "MIGRATION_PACKAGES",
    "create_engine",
    "dialect_name",
    "is_postgres",
    "metadata",
    "migrate",
    "normalize_url",
    "pg_autocommit",
    "read_only",
]

#: Execution option of a connection opened by :func:`read_only`.
_READ_ONLY = "dadam_read_only"

#: Naming convention so constraint names are stable across SQLite and PostgreSQL migrations.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Packages that own a ``migrations/`` folder with an alembic branch, in dependency order.
MIGRATION_PACKAGES: tuple[str, ...] = ("connector", "catalog", "contracts", "metering")


def normalize_url(url: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` to the psycopg 3 driver; leave others alone."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def dialect_name(engine: Engine) -> str:
    return engine.dialect.name


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _sqlite_setup(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        if conn.get_execution_options().get(_READ_ONLY):
            # A read: a deferred transaction reads a WAL snapshot, neither waiting for the writer
            # nor holding it up.
            conn.exec_driver_sql("BEGIN")
            return
        # One writer at a time, taken at BEGIN: no SQLITE_BUSY on lock upgrade mid-transaction.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


#: A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
PING_AFTER_IDLE_S = 5.0


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection on checkout only when it sat idle for a while.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: one more round trip per transaction
    (about a third of the statements of a negotiation). A connection in steady use is known to be
    alive; one that sat idle (the server restarted, a proxy dropped it) is pinged, and a dead one
    is replaced before anyone uses it. A connection that dies while in use fails that
    transaction as before, and SQLAlchemy then drops the rest of the pool.
    """

    @sa.event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["dadam_idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("dadam_idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT 1")
            if dbapi_conn.info.transaction_status != 0:  # psycopg: IDLE
                dbapi_conn.rollback()
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise sa.exc.DisconnectionError(f"pooled connection is dead: {exc}") from exc


@contextlib.contextmanager
def read_only(engine: Engine) -> Iterator[sa.Connection]:
    """A connection for reads only (``engine.connect()`` otherwise takes SQLite's write lock).

    On SQLite its transaction is a deferred ``BEGIN``: it reads a consistent snapshot without
    waiting for a writer or making one wait. Do not write through it: on SQLite a deferred
    transaction that reads and then writes can fail with SQLITE_BUSY.

    On PostgreSQL it runs in autocommit mode (reads never wait for writers there): each
    statement is its own transaction, as each statement of a READ COMMITTED transaction has its
    own snapshot anyway. That saves the ``BEGIN`` and ``ROLLBACK`` round trips, and keeps
    psycopg's prepared statements: psycopg drops all of a connection's at every ``ROLLBACK``,
    and the pollers' reads ended in one several times a second, so about half of ``dadam
    serve``'s statements were parsed and planned anew each time (statement log, 300
    negotiations). A write through it would commit at once: do not write through it.
    """
    if engine.dialect.name == "postgresql":
        with pg_autocommit(engine) as conn:
            yield conn
        return
    with engine.connect() as conn:
        yield conn.execution_options(**{_READ_ONLY: True})


class _Kept:
    """Idle PostgreSQL connections :func:`pg_autocommit` keeps checked out, in autocommit mode,
    for its next use (decision 0414): at most ``cap``, so the rest of the pool stays free."""

    __slots__ = ("cap", "conns", "lock", "pid")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.pid = os.getpid()
        #: (connection, time it was put here); pops are atomic, appends go through :meth:`keep`
        self.conns: collections.deque[tuple[sa.Connection, float]] = collections.deque()
        self.lock = threading.Lock()

    def keep(self, conn: sa.Connection) -> bool:
        """Keep ``conn`` unless ``cap`` are kept already."""
        with self.lock:
            if len(self.conns) >= self.cap:
                return False
            self.conns.append((conn, time.monotonic()))
            return True

    def drain(self) -> None:
        """Close every kept connection (the engine was disposed); in a forked child, only forget
        them (their sockets are the parent's)."""
        forked = os.getpid() != self.pid
        while True:
            try:
                conn, _since = self.conns.popleft()
            except IndexError:
                return
            if not forked:
                with contextlib.suppress(Exception):
                    conn.invalidate()  # closes the driver's connection now


_KEPT = "dadam_kept_autocommit"


def _kept(engine: Engine) -> _Kept | None:
    kept: _Kept | None = engine.__dict__.get(_KEPT)
    return kept


def _keep_autocommit_connections(engine: Engine, pool_size: int) -> None:
    cap = pool_size // 2
    if cap < 1:
        return
    kept = _Kept(cap)
    engine.__dict__[_KEPT] = kept

    @sa.event.listens_for(engine, "engine_disposed")
    def _on_dispose(_engine: Engine) -> None:
        kept.drain()


@contextlib.contextmanager
def pg_autocommit(engine: Engine) -> Iterator[sa.Connection]:
    """A PostgreSQL connection with the driver in autocommit mode.

    The driver's own switch is an attribute (no round trip). SQLAlchemy's
    ``execution_options(isolation_level="AUTOCOMMIT")`` does the same through its connection
    characteristics and resets them at check-in: about 25 us per use, and the hot paths use a
    connection like this several times per negotiation. SQLAlchemy's own begin/commit/rollback
    on such a connection are no-ops in the driver.

    An engine made by :func:`create_engine` keeps up to half its pool of such connections
    checked out between uses (decision 0414): a pool check-out and check-in, with their lock
    hand-offs, cost more than the statement run in between. A kept connection idle for
    :data:`PING_AFTER_IDLE_S` goes back to the pool (whose check-out pings it); one that broke,
    or that is left inside a transaction (someone ran an explicit ``BEGIN``), is not kept. A
    connection that goes back to the pool is switched back to transactional mode first, or
    invalidated if it cannot be, so the pool never hands out one in the wrong mode. Disposing of
    the engine closes the kept ones.
    """
    kept = _kept(engine)
    conn: sa.Connection | None = None
    if kept is not None:
        try:
            conn, since = kept.conns.pop()
        except IndexError:
            pass
        else:
            if conn.invalidated or time.monotonic() - since >= PING_AFTER_IDLE_S:
                _give_back(conn)
                conn = None
    if conn is None:
        conn = engine.connect()
        conn.connection.driver_connection.autocommit = True  # type: ignore[union-attr]
    try:
        yield conn
    finally:
        if kept is None or not _keepable(conn) or not kept.keep(conn):
            _give_back(conn)


def _keepable(conn: sa.Connection) -> bool:
    """Whether ``conn`` can be kept for the next :func:`pg_autocommit`: alive, no transaction
    open in the driver, SQLAlchemy's (a no-op there) ended."""
    if conn.invalidated or conn.closed:
        return False
    try:
        if conn.connection.driver_connection.info.transaction_status != 0:  # type: ignore[union-attr]
            return False  # psycopg: not IDLE
        if conn.in_transaction():
            conn.rollback()  # SQLAlchemy's own: the driver has nothing to roll back
    except Exception:
        return False
    return True


def _give_back(conn: sa.Connection) -> None:
    """Back to the pool in transactional mode, or invalidated if it cannot switch back."""
    if not conn.invalidated:
        try:
            raw: Any = conn.connection.driver_connection
            raw.autocommit = False
        except Exception:
            with contextlib.suppress(Exception):
                conn.invalidate()
    conn.close()


def create_engine(url: str, *, pool_size: int = 20, echo: bool = False) -> Engine:
    """An engine for ``url`` (SQLite file or PostgreSQL), configured for dadam's access patterns."""
    url = normalize_url(url)
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"DADAM_DATABASE_URL is not a valid database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_setup(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        engine = sa.create_engine(
            url,
            echo=echo,
            # A fixed pool: a thread that finds every connection busy waits for one (up to 30 s).
            # With overflow, connections beyond pool_size were closed again at check-in, so under
            # load the pool opened and closed about 20 connections a second, each a new
            # PostgreSQL backend (fork, authentication, catalog caches) costing server CPU.
            pool_size=pool_size,
            max_overflow=0,
            # psycopg prepares a statement on a connection at its 6th execution there by default;
            # with 20 pooled connections and a dozen variants of the state UPDATE, a fifth of a
            # negotiation's statements were still parsed and planned anew (statement log, 300
            # negotiations on dadam serve). Here: at the 2nd (a one-off statement is not).
            connect_args={"prepare_threshold": 1},
        )
        _ping_when_idle(engine)
        _keep_autocommit_connections(engine, pool_size)
        _cache_long_statements()
        return engine
    raise ConfigError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://")


#: What psycopg's query conversion cache takes (see :func:`_cache_long_statements`).
PSYCOPG_CACHED_STATEMENT_LENGTH = 16_384
PSYCOPG_CACHED_STATEMENT_PARAMS = 200


def _cache_long_statements() -> None:
    """Let psycopg cache the conversion of our longest statements too.

    psycopg turns ``%(name)s`` placeholders into ``$n`` (parsing the SQL text) once per
    statement text, in an LRU cache, but only for statements up to 4,096 bytes and 50
    parameters: the rest are parsed again at every execution. The provider's one-statement
    reaction to an initial request (a new row with all its columns, the message id, the catalog
    guard and the reply) has 53 parameters, and that parse was 3 % of the provider's CPU
    (py-spy, ``bench/negotiation.py --stack serve``). Our statements are built once, so they
    are few and the cache (128 entries) holds them. The limits are module constants of a
    private psycopg module: if a psycopg version drops them, nothing is changed.
    """
    try:
        from psycopg import _queries
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return
    if getattr(_queries, "MAX_CACHED_STATEMENT_LENGTH", None) is not None:
        _queries.MAX_CACHED_STATEMENT_LENGTH = max(
            _queries.MAX_CACHED_STATEMENT_LENGTH, PSYCOPG_CACHED_STATEMENT_LENGTH
        )
    if getattr(_queries, "MAX_CACHED_STATEMENT_PARAMS", None) is not None:
        _queries.MAX_CACHED_STATEMENT_PARAMS = max(
            _queries.MAX_CACHED_STATEMENT_PARAMS, PSYCOPG_CACHED_STATEMENT_PARAMS
        )


def _version_locations() -> list[str]:
    locations = []
    for pkg in MIGRATION_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / "migrations"
        if folder.is_dir() and any(folder.glob("*.py")):
            locations.append(str(folder))
    return locations


def migrate(engine: Engine, target: str = "heads") -> None:
    """Upgrade the schema to ``target`` (every package's head by default). Safe to call on every start."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("version_locations", " ".join(_version_locations()))
    cfg.set_main_option("path_separator", "space")
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, target)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"database migration failed: {exc}") from exc
