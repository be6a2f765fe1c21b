"""Hot statements executed on the driver's cursor (decision 0406).

Why: SQLAlchemy Core spends about 20 us of CPU on every ``Connection.execute`` of a cached,
compiled statement (execution context, cache lookup, events, result set-up) where sqlite3 needs
1-3 us; a negotiation runs about 17 statements in each connector, and a yappi profile put
``Connection.execute`` at a fifth of a connector's CPU.

:func:`run` compiles a statement once per dialect (SQL text, parameter order, the bind and
result type processors SQLAlchemy would apply, the values of literal parameters) and executes it
on the connection's DBAPI cursor, inside the transaction SQLAlchemy manages. Driver errors are
raised as SQLAlchemy's ``DBAPIError`` subclasses, as ``Connection.execute`` raises them (a lost
connection also invalidates it, so the pool does not hand it out again). A statement that needs
more than this (expanding ``IN`` lists, Python-side column defaults not given, ``executemany``)
goes through ``Connection.execute`` unchanged, so :func:`run` is always safe to call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["DirectResult", "run"]


class DirectResult:
    """What :func:`run` returns: the rows (fetched at once) and the row count."""

    __slots__ = ("keys", "rowcount", "rows")

    def __init__(self, keys: Sequence[str], rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self.keys = keys
        self.rows = rows
        self.rowcount = rowcount

    def first(self) -> dict[str, Any] | None:
        """The first row as a dict (column name -> value), or None."""
        return dict(zip(self.keys, self.rows[0], strict=True)) if self.rows else None

    def one(self) -> dict[str, Any]:
        if len(self.rows) != 1:
            raise sa.exc.NoResultFound("no row") if not self.rows else sa.exc.MultipleResultsFound("rows")
        return dict(zip(self.keys, self.rows[0], strict=True))

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def all(self) -> list[dict[str, Any]]:
        return [dict(zip(self.keys, r, strict=True)) for r in self.rows]


class _Plan:
    __slots__ = ("binds", "defaults", "has_rows", "keys", "names", "results", "sql", "types")

    def __init__(
        self,
        sql: str,
        names: tuple[str, ...] | None,
        defaults: dict[str, Any],
        binds: dict[str, Callable[[Any], Any]],
        keys: tuple[str, ...],
        types: tuple[Any, ...],
    ) -> None:
        self.sql = sql
        self.names = names  # positional parameter order; None: the driver takes a dict
        self.defaults = defaults
        self.binds = binds
        self.keys = keys
        self.types = types  # the result columns' types (dialect implementations)
        #: result processors, set at the first execution (some need the driver's type codes)
        self.results: tuple[Callable[[Any], Any] | None, ...] | None = None
        self.has_rows = bool(keys)

    def processors(self, dialect: Any, cursor: Any) -> tuple[Callable[[Any], Any] | None, ...]:
        if self.results is None:
            # cursor.description only here: psycopg builds it anew on every access
            pairs = zip(self.types, cursor.description, strict=True)
            procs = tuple(t.result_processor(dialect, d[1]) for t, d in pairs)
            self.results = procs if any(procs) else ()
        return self.results


#: (statement id, dialect name, given parameter names) -> plan, or None: use Connection.execute.
_PLANS: dict[tuple[int, str, frozenset[str]], _Plan | None] = {}
#: statements are kept alive here so their id() is never reused by another object
_KEEP: dict[int, Any] = {}


def _result_columns(stmt: Any) -> list[Any]:
    if isinstance(stmt, sa.Select):
        return list(stmt.selected_columns)
    returning = getattr(stmt, "_returning", ())
    return list(stmt.exported_columns) if returning else []


def _plan(stmt: Any, conn: Connection, given: frozenset[str]) -> _Plan | None:
    dialect = conn.dialect
    compiled: Any = stmt.compile(dialect=dialect, column_keys=sorted(given))
    if compiled.literal_execute_params or compiled.post_compile_params or compiled.escaped_bind_names:
        return None  # expanding IN lists, renamed parameters: rendered per execution
    if any(c.key not in given for c in (*compiled.insert_prefetch, *compiled.update_prefetch)):
        return None  # a Python-side column default SQLAlchemy would compute
    binds: dict[str, Callable[[Any], Any]] = {}
    for name, bp in compiled.binds.items():
        proc = bp.type.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None:
            binds[name] = proc
    defaults = {k: v for k, v in compiled.params.items() if k not in given}
    keys: list[str] = []
    types: list[Any] = []
    for col in _result_columns(stmt):
        name = getattr(col, "name", None)
        if not isinstance(name, str) or name in keys:
            return None  # anonymous or repeated names: leave it to SQLAlchemy
        keys.append(name)
        types.append(col.type.dialect_impl(dialect))
    names = tuple(compiled.positiontup) if compiled.positional else None
    return _Plan(compiled.string, names, defaults, binds, tuple(keys), tuple(types))


def run(conn: Connection, stmt: Any, params: Mapping[str, Any]) -> DirectResult:
    """Execute ``stmt`` (built once, every varying value a bound parameter) with ``params``."""
    given = frozenset(params)
    key = (id(stmt), conn.dialect.name, given)
    try:
        plan = _PLANS[key]
    except KeyError:
        plan = _PLANS[key] = _plan(stmt, conn, given)
        _KEEP[id(stmt)] = stmt
    if plan is None:
        return _fallback(conn, stmt, params)
    if not conn.in_transaction():
        conn.begin()  # what Connection.execute's autobegin does (and the begin events with it)
    values = {**plan.defaults, **params} if plan.defaults else dict(params)
    for name, proc in plan.binds.items():
        if name in values:
            values[name] = proc(values[name])
    args: Any = tuple(values[n] for n in plan.names) if plan.names is not None else values
    cursor = _cursor(conn)
    try:
        cursor.execute(plan.sql, args)
        rows = cursor.fetchall() if plan.has_rows else []
    except conn.dialect.loaded_dbapi.Error as exc:
        _raise(conn, plan.sql, args, exc, cursor)
    procs = plan.processors(conn.dialect, cursor) if plan.has_rows else ()
    if procs:
        rows = [tuple(p(v) if p else v for p, v in zip(procs, r, strict=True)) for r in rows]
    return DirectResult(plan.keys, rows, cursor.rowcount)


def _cursor(conn: Connection) -> Any:
    """A cursor of the connection's DBAPI connection, made once and kept with it (the pool's
    per-connection ``info``): creating a psycopg cursor costs more than running a statement."""
    proxied = conn.connection
    raw = proxied.dbapi_connection
    kept = proxied.info.get(_CURSOR)
    if kept is not None and kept[0] is raw:
        return kept[1]
    cursor = raw.cursor()  # type: ignore[union-attr]
    proxied.info[_CURSOR] = (raw, cursor)
    return cursor


_CURSOR = "dadam_direct_cursor"


def _raise(conn: Connection, sql: str, args: Any, exc: Any, cursor: Any) -> None:
    """Raise ``exc`` as SQLAlchemy would from ``Connection.execute``."""
    dialect = conn.dialect
    disconnect = dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if disconnect:
        conn.invalidate(exc)
    raise sa.exc.DBAPIError.instance(
        sql, args, exc, dialect.loaded_dbapi.Error, connection_invalidated=disconnect, dialect=dialect
    ) from exc


def _fallback(conn: Connection, stmt: Any, params: Mapping[str, Any]) -> DirectResult:
    result = conn.execute(stmt, dict(params))
    if result.returns_rows:
        keys = tuple(result.keys())
        return DirectResult(keys, [tuple(r) for r in result], result.rowcount)
    return DirectResult((), [], result.rowcount)
