"""Durable process framework shared by contract negotiation and transfer processes.

Why: a DSP process (negotiation, transfer) must survive crashes, run on several replicas and
never stay stuck silently. Everything that moves it forward is therefore a database row:

* **Process rows.** Each process kind owns one table built with :func:`process_table`, which adds
  the framework's columns (``id``, ``state``, ``state_since``, ``deadline``, ``pending``,
  ``version``, ``error_detail``, ``created_at``, ``updated_at``) to the kind's own columns.
  A handler that changes a process locks its row first (:func:`lock_process`,
  ``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has one writer anyway) and saves it with
  :func:`save_state` (which also sets the state timeout ``deadline``).
* **Outbox** (``dsp_outbox``). A message to the peer is *never* sent inside a request handler:
  the handler calls :func:`enqueue` in the same transaction as the state change, commits, answers
  the peer (the DSP ACK), and a :class:`Worker` sends the message afterwards. Messages of one
  process are delivered strictly in order (a row is only claimed when no older row of the same
  process is still pending). ``not_before`` delays a message (the TCK wants a short pause between
  consecutive scripted sends).
* **Claiming.** Workers claim due outbox rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` and a
  lease (``lease_owner``, ``lease_until``). A worker killed with ``kill -9`` loses its lease after
  ``lease_seconds`` and another worker sends the row again; the message keeps its ``@id`` so the
  peer's received-message dedupe turns the resend into a no-op.
* **Retries.** 5xx answers, timeouts and connection errors are retried with exponential backoff
  (:class:`RetryPolicy`); 4xx answers and exhausted retries call :meth:`ProcessHandler.on_failed`
  with a reason that says what happened (the kind moves the process to TERMINATED).
* **State timeouts.** :meth:`Worker.expire` finds non-terminal rows whose ``deadline`` passed and
  calls :meth:`ProcessHandler.on_timeout` (again in one transaction with the row locked).
* **Received-message dedupe** (``dsp_inbox``). :func:`record_received` stores the ``@id`` of every
  message received for a process with a digest of its body: ``"new"`` (apply it), ``"duplicate"``
  (same id and body: answer the same ACK, change nothing) or ``"conflict"`` (same id, other body:
  reject).

How to use it for a new process kind (the transfer process does exactly this)::

    transfers = process_table("tp_transfers", sa.Column("consumer_pid", ...), ...)

    class TransferHandler:                      # implements ProcessHandler
        kind = "transfer"
        table = transfers
        terminal_states = frozenset({COMPLETED, TERMINATED})
        def on_delivered(self, conn, process, message, status): ...   # e.g. STARTING -> STARTED
        def on_failed(self, conn, process, message, reason): ...      # -> TERMINATED, reason
        def on_timeout(self, conn, process): ...                      # -> TERMINATED, "timed out"

    worker = Worker(engine, [negotiation_handler, TransferHandler()], sender=HttpSender(client))
    worker.start()            # a daemon thread; worker.wake() after a commit sends at once
    ...
    with engine.begin() as conn:
        row = lock_process(conn, transfers, pid)
        save_state(conn, transfers, pid, STARTING, timeout_s=3600)
        enqueue(conn, "transfer", pid, url, body, audience=peer_did)
    worker.wake()

All callbacks run inside the transaction that holds the process row lock, so a state change and
the outbox rows it produces commit together or not at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from connector.errors import NotFoundError, StoreError
from connector.store import is_postgres, metadata, on_commit, pg_autocommit, read_only, run, write_tx

__all__ = [
    "AckTransition",
    "Delivery",
    "HttpSender",
    "OutboxMessage",
    "PollingThread",
    "ProcessHandler",
    "RetryPolicy",
    "Sender",
    "StaleWrite",
    "StateWrite",
    "Worker",
    "body_digest",
    "cached_statement",
    "cancel_pending",
    "enqueue",
    "enqueue_claimed",
    "inbox",
    "insert_locked_process",
    "insert_process",
    "is_postgres_conn",
    "lock_process",
    "on_commit",
    "outbox",
    "pending_outbox",
    "process_columns",
    "process_table",
    "record_received",
    "save_guarded",
    "save_state",
    "write_tx",
]

log = logging.getLogger("dadam.process")

outbox = sa.Table(
    "dsp_outbox",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("process_id", sa.String(200), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("message_type", sa.String(100), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("audience", sa.String(500), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("not_before", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(100), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("sent_at", sa.Float, nullable=True),
    sa.Index("ix_dsp_outbox_status_not_before", "status", "not_before"),
    sa.Index("ix_dsp_outbox_kind_process_id_seq", "kind", "process_id", "seq"),
)

inbox = sa.Table(
    "dsp_inbox",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("message_id", sa.String(500), primary_key=True),
    sa.Column("process_id", sa.String(200), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)


def process_columns() -> list[sa.Column[Any]]:
    """The framework's columns of a process table (fresh objects on every call)."""
    return [
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("state_since", sa.Float, nullable=False),
        #: When the current state times out (epoch seconds); NULL in terminal states.
        sa.Column("deadline", sa.Float, nullable=True),
        #: Waiting for a manual decision (still subject to the deadline).
        sa.Column("pending", sa.Boolean, nullable=False, default=False),
        sa.Column("version", sa.Integer, nullable=False, default=0),
        sa.Column("error_detail", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    ]


def process_table(
    name: str, *columns: sa.Column[Any] | sa.Index, meta: sa.MetaData | None = None
) -> sa.Table:
    """A process table ``name`` on the shared metadata (or ``meta``): framework columns plus ``columns``.

    An index on ``deadline`` is added so the timeout sweep does not scan the table. Remember to
    create the same table in your package's migration.
    """
    return sa.Table(
        name,
        metadata if meta is None else meta,
        *process_columns(),
        *columns,
        sa.Index(f"ix_{name}_deadline", "deadline"),
    )


def lock_process(conn: Connection, table: sa.Table, process_id: str) -> Mapping[Any, Any]:
    """The row of ``process_id``, locked until the transaction ends; NotFoundError if absent."""
    pg = is_postgres_conn(conn)

    def build() -> Any:
        stmt = sa.select(table).where(table.c.id == sa.bindparam("_pid"))
        return stmt.with_for_update() if pg else stmt

    stmt = cached_statement(("lock", table.name, id(table), pg), build)
    row = run(conn, stmt, {"_pid": process_id}).first()
    if row is None:
        raise NotFoundError(f"no process {process_id!r}", context={"table": table.name})
    return row


def is_postgres_conn(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


#: Statements of the hot paths, built once with bound parameters: building a Core statement and
#: its cache key costs several times more CPU than executing it (bench/negotiation.py profile).
_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def cached_statement(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """The statement cached under ``key``, built by ``build()`` on first use. The statement must
    take every varying value as a bound parameter (``sa.bindparam``), never a literal."""
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build()
    return stmt


def insert_process(
    conn: Connection,
    table: sa.Table,
    process_id: str,
    state: int,
    *,
    timeout_s: float | None,
    now: float | None = None,
    **values: Any,
) -> None:
    """Insert a new process row of ``table`` in ``state``: the framework's columns are set here
    (deadline ``timeout_s`` from now), ``values`` are the table's own columns."""
    stmt = cached_statement(("insert_process", table.name, id(table)), lambda: sa.insert(table))
    run(conn, stmt, _process_values(process_id, state, timeout_s, now, values))


def insert_locked_process(
    conn: Connection,
    table: sa.Table,
    process_id: str,
    state: int,
    *,
    timeout_s: float | None,
    now: float | None = None,
    **values: Any,
) -> Mapping[Any, Any]:
    """:func:`insert_process`, returning the row as stored, locked until the transaction ends
    (what :func:`lock_process` would read next, in the same round trip where the database has
    ``INSERT ... RETURNING``: a row this transaction inserted is not visible to, nor lockable by,
    any other transaction before the commit)."""
    params = _process_values(process_id, state, timeout_s, now, values)
    if not conn.dialect.insert_returning:
        run(
            conn,
            cached_statement(("insert_process", table.name, id(table)), lambda: sa.insert(table)),
            params,
        )
        return lock_process(conn, table, process_id)
    stmt = cached_statement(
        ("insert_process_returning", table.name, id(table)), lambda: sa.insert(table).returning(*table.c)
    )
    return run(conn, stmt, params).one()


def new_process_row(
    table: sa.Table, process_id: str, state: int, *, timeout_s: float | None, now: float, **values: Any
) -> dict[str, Any]:
    """The row :func:`insert_process` would store, every column present (not written): for a
    new row held back and written with its first change (``StateWrite.insert``)."""
    row: dict[str, Any] = dict.fromkeys(table.c.keys())
    row.update(_process_values(process_id, state, timeout_s, now, values))
    return row


def _process_values(
    process_id: str, state: int, timeout_s: float | None, now: float | None, values: Mapping[str, Any]
) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {
        "id": process_id,
        "state": int(state),
        "state_since": now,
        "deadline": None if timeout_s is None else now + timeout_s,
        "pending": False,
        "version": 0,
        "created_at": now,
        "updated_at": now,
        **values,
    }


def save_state(
    conn: Connection,
    table: sa.Table,
    process_id: str,
    state: int,
    *,
    timeout_s: float | None,
    now: float | None = None,
    error_detail: str | None = None,
    clear_error: bool = False,
    pending: bool = False,
    **values: Any,
) -> None:
    """Set ``state`` (and other columns) of a locked process row; restart its state timeout.

    ``timeout_s=None`` clears the deadline (terminal states). ``error_detail`` replaces the
    stored detail; ``clear_error=True`` (without one) empties it.
    """
    upd = _state_values(state, timeout_s, now, error_detail, clear_error, pending, values)
    stmt = _save_statement(table, tuple(sorted(upd)))
    res = run(conn, stmt, {"_upid": process_id, **{f"v_{n}": v for n, v in upd.items()}})
    if res.rowcount != 1:
        raise StoreError(
            f"process {process_id!r} vanished while it was locked", context={"table": table.name}
        )


def _state_values(
    state: int,
    timeout_s: float | None,
    now: float | None,
    error_detail: str | None,
    clear_error: bool,
    pending: bool,
    values: Mapping[str, Any],
) -> dict[str, Any]:
    now = time.time() if now is None else now
    upd: dict[str, Any] = {
        "state": int(state),
        "state_since": now,
        "deadline": None if timeout_s is None else now + timeout_s,
        "pending": pending,
        "updated_at": now,
        **values,
    }
    if error_detail is not None or clear_error:
        upd["error_detail"] = error_detail
    return upd


def _save_statement(table: sa.Table, names: tuple[str, ...]) -> Any:
    """``UPDATE table SET <names> = :v_<name>, version = version + 1 WHERE id = :_upid``."""

    def build() -> Any:
        return (
            sa.update(table)
            .where(table.c.id == sa.bindparam("_upid"))
            .values({**{n: sa.bindparam(f"v_{n}") for n in names}, "version": table.c.version + 1})
        )

    return cached_statement(("save_state", table.name, id(table), names), build)


@dataclass(frozen=True, slots=True)
class StateWrite:
    """A :func:`save_state` call not made yet: ``kwargs`` are its keyword arguments (``state``
    included). :func:`enqueue_claimed` makes it in the statement that adds the message, where
    the database allows (PostgreSQL: one round trip fewer)."""

    table: sa.Table
    process_id: str
    kwargs: dict[str, Any]
    #: Optimistic (PostgreSQL, row read without a lock): write only if the row still has this
    #: version, and record the received message ``(kind, message_id, digest)`` with it; if the
    #: row changed or the message id was seen before, nothing is written and :class:`StaleWrite`
    #: is raised.
    expect_version: int | None = None
    received: tuple[str, str, str] | None = None
    #: The row is new (PostgreSQL): its column values as first created (``version`` included);
    #: ``kwargs`` apply on top and the row is INSERTed, with ``received`` recorded first when
    #: given. ``absent``: insert only if no row of the table has all these column values.
    #: Nothing written (the message id was seen, or such a row exists): :class:`StaleWrite`.
    insert: Mapping[str, Any] | None = None
    absent: Mapping[str, Any] | None = None
    #: With ``insert``: insert only if a row of this table has these column values too (e.g.
    #: the catalog still at the revision the decision was made on).
    require: tuple[sa.Table, Mapping[str, Any]] | None = None
    #: With ``expect_version``: an outbox message of this process whose delivery (a 2xx) the
    #: worker held back (:meth:`Worker.take_held`): ``(message id, lease owner)``. The write
    #: marks it sent, as the delivery's own record would have (if it is still pending and ours).
    acked: tuple[str, str] | None = None
    #: With ``expect_version``: the caller's token id to add to its replay table by the same
    #: statement, ``(table, claim)`` (a :class:`~connector.identity.ReplayClaim` whose id is not
    #: recorded yet). It is added only if the row has the version and the message id is new,
    #: and the write applies only if the id was new there; ``claim.settle(True)`` after the write.
    #: Otherwise nothing is written (:class:`StaleWrite`) and the locking path records the id,
    #: which tells a replay from a message that came too late (decision 0411).
    #: With ``insert`` (a new row, which has no lock to order two copies of one message): the id
    #: is added if the message id is not in the inbox yet, and the row only if the id was new.
    #: The statement also says whether it added the id, so the id is settled as spent by us
    #: (``claim.settle(True)``) even when the row was not written (a concurrent copy of the
    #: message won, or a condition failed); the locking path then does not count it as a replay
    #: (decision 0413).
    token: tuple[sa.Table, Any] | None = None


class StaleWrite(Exception):
    """An optimistic :class:`StateWrite` found the row changed, or its message already recorded:
    nothing was written. The caller redoes the work the locking way."""


def save_guarded(conn: Connection, state: StateWrite) -> None:
    """PostgreSQL, one statement: an optimistic :class:`StateWrite` (or a new row's
    ``insert``) without a message to add. Raises :class:`StaleWrite` when it did not apply."""
    write, params = _guarded_write(state)
    tok = _INSERT_TOKENS.get(id(write))
    if tok is not None:  # a new row with a token id: the statement reports both outcomes
        stmt = cached_statement(
            ("save_guarded_report", id(write)), lambda: _reporting(write.returning(state.table.c.id), tok)
        )
        _settle_reported(state, run(conn, stmt, params).one())
        return
    stmt = cached_statement(("save_guarded", id(write)), lambda: write.returning(state.table.c.id))
    if run(conn, stmt, params).first() is None:
        raise StaleWrite(state.process_id)
    _token_recorded(state)


def _token_recorded(state: StateWrite) -> None:
    """A guarded write applied: the token id it carried is in the replay table (committed with
    it: guarded writes are their own transaction)."""
    if state.token is not None:
        state.token[1].settle(True)


#: id(guarded INSERT with a token id) -> its ``tok`` CTE, for :func:`_reporting`
_INSERT_TOKENS: dict[int, Any] = {}


def _reporting(write: Any, tok: Any) -> Any:
    """``write`` (a statement with ``RETURNING``, the new row's guarded INSERT somewhere in it)
    as a CTE, under a ``SELECT`` that always returns one row: ``_applied`` (``write`` returned a
    row), ``_first`` (its first returned column, or NULL) and ``_fresh`` (the ``tok`` CTE added
    the token id). A data-modifying CTE runs whether or not the SELECT reads it."""
    done = write.cte("done")
    first = done.c[0]
    return sa.select(
        sa.exists(sa.select(first)).label("_applied"),
        sa.select(first).scalar_subquery().label("_first"),
        sa.exists(sa.select(tok.c.token_key)).label("_fresh"),
    )


def _settle_reported(state: StateWrite, row: Mapping[str, Any]) -> None:
    """After a :func:`_reporting` statement: a token id the statement added is spent by us,
    whether or not the row was written; StaleWrite if it was not. An id it did not add (seen
    before, or the message id was) is left to the locking path, which tells a replay from a
    resend."""
    assert state.token is not None
    if row["_fresh"]:
        state.token[1].settle(True)
    if not row["_applied"]:
        raise StaleWrite(state.process_id)


def _guarded_write(state: StateWrite) -> tuple[Any, dict[str, Any]]:
    """The UPDATE (or, for a new row, INSERT) of a guarded :class:`StateWrite` and its
    parameters, cached by shape."""
    t = state.table
    if state.insert is not None:
        values = {**state.insert, **_state_write_values(state.kwargs), "version": state.insert["version"] + 1}
        names = tuple(sorted(values))
        absent = tuple(sorted(state.absent or ()))
        received = state.received is not None
        req_table, req_values = state.require or (None, {})
        required = tuple(sorted(req_values))
        if state.token is not None and not received:
            # the token id's CTE is tied to the received message (its id must be new)
            raise StoreError("a new row's token id goes with a received message (StateWrite.received)")
        tok_table = state.token[0] if state.token is not None else None
        stmt = cached_statement(
            (
                "insert_guarded",
                t.name,
                id(t),
                names,
                absent,
                received,
                id(req_table),
                required,
                id(tok_table),
            ),
            lambda: _guarded_insert(t, names, absent, received, (req_table, required), tok_table),
        )
        params = {f"v_{n}": v for n, v in values.items()}
        params.update({f"_a_{n}": v for n, v in (state.absent or {}).items()})
        params.update({f"_r_{n}": v for n, v in req_values.items()})
        if state.received is not None:
            params.update(_received_params(state.process_id, state.received))
        if tok_table is not None and state.token is not None:
            claim = state.token[1]
            params.update(_tkey=claim.key, _texp=claim.expires_at)
        return stmt, params
    upd = _state_write_values(state.kwargs)
    names = tuple(sorted(upd))
    acked = state.acked is not None
    token = state.token[0] if state.token is not None else None
    stmt = cached_statement(
        ("guarded_update", t.name, id(t), names, acked, None if token is None else id(token)),
        lambda: _guarded_update(t, names, acked, token),
    )
    params = _guarded_params(state, upd)
    if state.acked is not None:
        params.update(_ack_id=state.acked[0], _ack_owner=state.acked[1], _ack_now=time.time())
    if state.token is not None:
        claim = state.token[1]
        params.update(_tkey=claim.key, _texp=claim.expires_at)
    return stmt, params


def _bound(name: str, column: sa.Column[Any]) -> Any:
    """A parameter for ``column`` in a SELECT list, with an explicit cast: PostgreSQL types a
    bare parameter there (or in a CASE) as text."""
    return sa.cast(sa.bindparam(name, type_=column.type), column.type)


def _inbox_seen(process_id: Any, where: Any = None) -> Any:
    """CTE ``seen``: the received message's inbox row (``:_ikind``, ``:_imid``, ``:_idigest``,
    ``:_inow``) for ``process_id``, inserted if ``where`` (if given) holds and the id is new
    (``ON CONFLICT DO NOTHING``); it returns the process id only then."""
    from sqlalchemy.dialects import postgresql

    c = inbox.c
    values = sa.select(
        _bound("_ikind", c.kind),
        _bound("_imid", c.message_id),
        process_id,
        _bound("_idigest", c.digest),
        _bound("_inow", c.received_at),
    )
    return (
        postgresql.insert(inbox)
        .from_select(
            ["kind", "message_id", "process_id", "digest", "received_at"],
            values if where is None else values.where(where),
        )
        .on_conflict_do_nothing()
        .returning(c.process_id)
        .cte("seen")
    )


def _token_cte(token: sa.Table, *where: Any) -> Any:
    """CTE ``tok``: add the token id ``:_tkey`` (expiring ``:_texp``) to the replay table
    ``token`` if ``where`` holds and the received message's id (``:_ikind``, ``:_imid``) is not
    in the inbox (``ON CONFLICT DO NOTHING``); it returns the id only if it was added."""
    from sqlalchemy.dialects import postgresql

    known = sa.select(inbox.c.message_id).where(
        inbox.c.kind == sa.bindparam("_ikind", type_=inbox.c.kind.type),
        inbox.c.message_id == sa.bindparam("_imid", type_=inbox.c.message_id.type),
    )
    return (
        postgresql.insert(token)
        .from_select(
            ["token_key", "expires_at"],
            sa.select(_bound("_tkey", token.c.token_key), _bound("_texp", token.c.expires_at)).where(
                *where, ~sa.exists(known)
            ),
        )
        .on_conflict_do_nothing()
        .returning(token.c.token_key)
        .cte("tok")
    )


def _guarded_update(
    table: sa.Table, names: tuple[str, ...], acked: bool = False, token: sa.Table | None = None
) -> Any:
    """``UPDATE`` of the row ``_upid`` that happens only if a CTE locked it with version
    ``_expect`` and the received message's inbox row was new (``INSERT ... ON CONFLICT DO
    NOTHING`` over the locked row). With ``acked``, the same condition marks the outbox row
    ``_ack_id`` sent if it is still pending and leased to ``_ack_owner``. With ``token`` (a
    replay table), the token id ``_tkey`` (expiring ``_texp``) is added first, over the locked
    row and only if the message id is not in the inbox, and the rest needs it to be new."""
    locked = (
        sa.select(table.c.id)
        .where(table.c.id == sa.bindparam("_upid"), table.c.version == sa.bindparam("_expect"))
        .with_for_update()
        .cte("locked")
    )
    fresh = None
    if token is not None:
        # The row lock orders two writes to one negotiation: the second then finds the version
        # changed and adds nothing. A message id seen before adds no token id either, so the
        # locking path still answers a resend (with a fresh token) as a duplicate.
        tok = _token_cte(token, sa.exists(sa.select(locked.c.id)))
        fresh = sa.exists(sa.select(tok.c.token_key))
    seen = _inbox_seen(locked.c.id, fresh)
    stmt = (
        sa.update(table)
        .where(table.c.id.in_(sa.select(seen.c.process_id)))
        .values({**{n: sa.bindparam(f"v_{n}") for n in names}, "version": table.c.version + 1})
    )
    if not acked:
        return stmt
    sent = _outbox_sent_if_ours("_ack", sa.exists(sa.select(seen.c.process_id))).cte("sent")
    return stmt.add_cte(sent)


def _guarded_insert(
    table: sa.Table,
    names: tuple[str, ...],
    absent: tuple[str, ...],
    received: bool,
    require: tuple[sa.Table | None, tuple[str, ...]] = (None, ()),
    token: sa.Table | None = None,
) -> Any:
    """``INSERT`` of a new row (columns ``names`` from ``:v_<name>``) that happens only if no
    row has the ``absent`` column values (``:_a_<name>``), if a row of the ``require`` table
    has its column values (``:_r_<name>``) and, with ``received``, only if the received
    message's inbox row (process id ``:_upid``) was new. With ``token`` (a replay table, and
    ``received``): the token id is added first (:func:`_token_cte`), and the rest only if it
    was new; the ``tok`` CTE is kept in ``_INSERT_TOKENS`` for :func:`_reporting`."""
    cond: Any = sa.true()
    tok = _token_cte(token) if token is not None and received else None
    if tok is not None:
        cond = sa.exists(sa.select(tok.c.token_key))
    if absent:
        cond = sa.and_(
            cond,
            ~sa.exists(sa.select(table.c.id).where(*(table.c[n] == sa.bindparam(f"_a_{n}") for n in absent))),
        )
    req_table, required = require
    if req_table is not None:
        cond = sa.and_(
            cond,
            sa.exists(
                sa.select(sa.literal(1))
                .select_from(req_table)
                .where(
                    *(req_table.c[n] == sa.bindparam(f"_r_{n}", type_=req_table.c[n].type) for n in required)
                )
            ),
        )
    if received:
        seen = _inbox_seen(_bound("_upid", inbox.c.process_id), cond)
        cond = sa.exists(sa.select(seen.c.process_id))
    stmt = sa.insert(table).from_select(
        list(names), sa.select(*(_bound(f"v_{n}", table.c[n]) for n in names)).where(cond)
    )
    if tok is not None:
        _INSERT_TOKENS[id(stmt)] = tok
    return stmt


def _received_params(process_id: str, received: tuple[str, str, str]) -> dict[str, Any]:
    kind, message_id, digest = received
    return {
        "_upid": process_id,
        "_ikind": kind,
        "_imid": message_id,
        "_idigest": digest,
        "_inow": time.time(),
    }


def _guarded_params(state: StateWrite, upd: Mapping[str, Any]) -> dict[str, Any]:
    assert state.expect_version is not None and state.received is not None
    return {
        **_received_params(state.process_id, state.received),
        "_expect": state.expect_version,
        **{f"v_{n}": v for n, v in upd.items()},
    }


def enqueue(
    conn: Connection,
    kind: str,
    process_id: str,
    url: str,
    body: Mapping[str, Any],
    *,
    audience: str | None = None,
    delay_s: float = 0.0,
    message_id: str | None = None,
) -> str:
    """Add a message for the peer to the outbox, in the caller's transaction. Returns its id.

    The id is also the message's ``@id`` when the body has none, so a resend after a crash is
    recognisable by the peer.
    """
    return _enqueue(conn, kind, process_id, url, body, audience, delay_s, message_id, None, 0.0, None)[0].id


def enqueue_claimed(
    conn: Connection,
    worker: Worker,
    kind: str,
    process_id: str,
    url: str,
    body: Mapping[str, Any],
    *,
    audience: str | None = None,
    on_ack: AckTransition | None = None,
    state: StateWrite | None = None,
) -> OutboxMessage | None:
    """Like :func:`enqueue`, but already leased to ``worker`` so it can be sent right after the
    commit with :meth:`Worker.dispatch` (no claim round trip, no poll delay). Returns None (and
    leaves the row to the normal claim) when an older message of the process is still pending,
    so per-process order holds. If this process dies before sending, the lease expires and any
    worker sends the row (and records it the normal way: ``on_ack`` lives only in this message).
    ``state``: the process row's state change that goes with the message (stored first).
    """
    msg, older = _enqueue(
        conn, kind, process_id, url, body, audience, 0.0, None, worker.owner, worker.lease_s, state
    )
    if older:
        if len(worker._queued_behind) > 10_000:  # entries whose older message another worker sent
            worker._queued_behind.clear()
        worker._queued_behind.add((kind, process_id))
        return None
    return msg if on_ack is None else dataclasses.replace(msg, on_ack=on_ack)


def _enqueue(
    conn: Connection,
    kind: str,
    process_id: str,
    url: str,
    body: Mapping[str, Any],
    audience: str | None,
    delay_s: float,
    message_id: str | None,
    owner: str | None,
    lease_s: float,
    state: StateWrite | None,
) -> tuple[OutboxMessage, bool]:
    now = time.time()
    mid = message_id or str(body.get("@id") or f"urn:uuid:{uuid.uuid4()}")
    payload = dict(body)
    payload.setdefault("@id", mid)
    # One round trip: the next sequence number of the process and whether an older message is
    # still pending (then the new row is not leased, so per-process order holds) are computed by
    # the INSERT ... SELECT itself. The caller holds the process row's lock.
    stmt = cached_statement(("outbox_add",), _outbox_insert)
    moved: dict[str, Any] = {}
    guarded = state is not None and (state.expect_version is not None or state.insert is not None)
    tok = None
    if state is not None and guarded:  # optimistic or a new row (PostgreSQL)
        write, moved = _guarded_write(state)
        tok = _INSERT_TOKENS.get(id(write))
        if tok is not None:  # a new row with a token id: the statement reports both outcomes
            stmt = cached_statement(
                ("outbox_add_guarded_report", id(write)), lambda: _reporting(_outbox_insert(write), tok)
            )
        else:
            stmt = cached_statement(("outbox_add_guarded", id(write)), lambda: _outbox_insert(write))
    elif state is not None:
        if conn.dialect.name == "postgresql":  # one statement: UPDATE in a CTE, then INSERT
            upd = _state_write_values(state.kwargs)
            names = tuple(sorted(upd))
            stmt = cached_statement(
                ("outbox_add_moved", state.table.name, id(state.table), names),
                lambda: _outbox_insert(_save_statement(state.table, names)),
            )
            moved = {"_upid": state.process_id, **{f"v_{n}": v for n, v in upd.items()}}
        else:
            save_state(conn, state.table, state.process_id, **state.kwargs)
    result = run(
        conn,
        stmt,
        {
            **moved,
            "_id": mid,
            "_kind": kind,
            "_pid": process_id,
            "_type": str(body.get("@type", "")),
            "_url": url,
            "_body": orjson.dumps(payload).decode(),
            "_audience": audience,
            "_not_before": now + delay_s,
            "_owner": owner,
            "_lease_until": now + lease_s if owner is not None else None,
            "_now": now,
            "_acked": state.acked[0] if state is not None and state.acked is not None else "",
        },
    )
    if tok is not None:
        assert state is not None
        report = result.one()
        _settle_reported(state, report)  # StaleWrite if nothing was written
        rows: list[dict[str, Any]] = [{"lease_owner": report["_first"]}]
    else:
        rows = result.all()
        if len(rows) != 1:  # only with ``state``: the UPDATE found no row, so nothing was added
            assert state is not None
            if guarded:
                raise StaleWrite(state.process_id)
            raise StoreError(
                f"process {state.process_id!r} vanished while it was locked",
                context={"table": state.table.name},
            )
        if state is not None:
            _token_recorded(state)
    row = rows[0]
    older = owner is not None and row["lease_owner"] is None
    msg = OutboxMessage(
        id=mid,
        kind=kind,
        process_id=process_id,
        message_type=str(body.get("@type", "")),
        url=url,
        body=payload,
        audience=audience,
        attempts=0,
    )
    return msg, older


_STATE_ARGS = ("state", "timeout_s", "now", "error_detail", "clear_error", "pending")


def _state_write_values(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The columns a ``save_state(**kwargs)`` call sets (version aside)."""
    return _state_values(
        kwargs["state"],
        kwargs["timeout_s"],
        kwargs.get("now"),
        kwargs.get("error_detail"),
        kwargs.get("clear_error", False),
        kwargs.get("pending", False),
        {k: v for k, v in kwargs.items() if k not in _STATE_ARGS},
    )


def _outbox_insert(moved: Any = None) -> Any:
    """``INSERT INTO dsp_outbox ... SELECT`` over the process's earlier rows: seq = last + 1, and
    the lease (owner, until) only when none of them is still pending. ``moved``: an UPDATE of the
    process row run first in a CTE; the row is added only if that UPDATE found its row."""
    earlier = sa.and_(outbox.c.kind == sa.bindparam("_kind"), outbox.c.process_id == sa.bindparam("_pid"))
    # ``_acked``: a message the same statement marks sent (StateWrite.acked; else ''): all parts
    # of a statement see the rows as they were before it, so it still reads as pending here
    any_pending = (
        sa.func.count().filter(outbox.c.status == "pending", outbox.c.id != sa.bindparam("_acked")) > 0
    )
    c = outbox.c

    values = {
        "id": _bound("_id", c.id),
        "kind": _bound("_kind", c.kind),
        "process_id": _bound("_pid", c.process_id),
        "seq": sa.func.coalesce(sa.func.max(c.seq), 0) + 1,
        "message_type": _bound("_type", c.message_type),
        "url": _bound("_url", c.url),
        "body": _bound("_body", c.body),
        "audience": _bound("_audience", c.audience),
        "status": sa.literal("pending", c.status.type),
        "attempts": sa.literal(0, c.attempts.type),
        "not_before": _bound("_not_before", c.not_before),
        "lease_owner": sa.case((any_pending, sa.null()), else_=_bound("_owner", c.lease_owner)),
        "lease_until": sa.case((any_pending, sa.null()), else_=_bound("_lease_until", c.lease_until)),
        "created_at": _bound("_now", c.created_at),
    }
    select = sa.select(*(v.label(k) for k, v in values.items())).where(earlier)
    if moved is None:
        return sa.insert(outbox).from_select(list(values), select).returning(c.lease_owner)
    moved_cte = moved.returning(moved.table.c.id).cte("moved")  # its own CTEs are hoisted
    select = select.having(sa.exists(sa.select(moved_cte.c.id)))
    return sa.insert(outbox).from_select(list(values), select).add_cte(moved_cte).returning(c.lease_owner)


def pending_outbox(conn: Connection, kind: str, process_id: str) -> list[RowMapping]:
    """Undelivered outbox rows of a process, oldest first (for diagnostics and tests)."""
    return list(
        conn.execute(
            sa.select(outbox)
            .where(outbox.c.kind == kind, outbox.c.process_id == process_id, outbox.c.status == "pending")
            .order_by(outbox.c.seq)
        ).mappings()
    )


def body_digest(body: Mapping[str, Any]) -> str:
    """A stable digest of a JSON body (sorted keys) for received-message dedupe."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def record_received(
    conn: Connection, kind: str, process_id: str, message_id: str | None, digest: str
) -> Literal["new", "duplicate", "conflict"]:
    """Remember a received message id (call with the process row locked).

    Messages without an id cannot be deduplicated and are always ``"new"`` (the state machine
    then rejects a replay as an invalid transition).
    """
    if not message_id:
        return "new"
    values = {"kind": kind, "message_id": message_id, "process_id": process_id, "digest": digest,
              "received_at": time.time()}  # fmt: skip
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):  # one round trip when the id is new
        add = cached_statement(("inbox_add_new", dialect), lambda: _insert_new(dialect))
        if run(conn, add, values).first() is not None:
            return "new"
    find = cached_statement(
        ("inbox_find",),
        lambda: sa.select(inbox.c.digest, inbox.c.process_id).where(
            inbox.c.kind == sa.bindparam("_kind"), inbox.c.message_id == sa.bindparam("_mid")
        ),
    )
    row = conn.execute(find, {"_kind": kind, "_mid": message_id}).first()
    if row is not None:
        return "duplicate" if (row.digest == digest and row.process_id == process_id) else "conflict"
    conn.execute(cached_statement(("inbox_add",), lambda: sa.insert(inbox)), values)
    return "new"


def _insert_new(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING`` into the inbox (no row: the id was seen)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(inbox).on_conflict_do_nothing().returning(inbox.c.message_id)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(inbox).on_conflict_do_nothing().returning(inbox.c.message_id)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A claimed outbox row, as handed to the sender and the handler callbacks."""

    id: str
    kind: str
    process_id: str
    message_type: str
    url: str
    body: dict[str, Any]
    audience: str | None
    attempts: int
    #: What a 2xx answer does to the process, decided when the message was enqueued (see
    #: :class:`AckTransition`); None: the handler's ``on_delivered`` decides, with the row locked.
    on_ack: AckTransition | None = None


@dataclass(frozen=True, slots=True)
class AckTransition:
    """The state change a 2xx answer makes, decided by the handler when it enqueued the message.

    It holds only while the process row is exactly as the enqueueing transaction left it
    (``version``): then the worker records the delivery and the new ``state`` (deadline
    ``timeout_s`` from then; None for a terminal state) in one statement on PostgreSQL (two on
    SQLite), instead of a transaction that locks the row and calls ``on_delivered`` (5 round
    trips on PostgreSQL, and the handler's Python work). ``fill`` =
    (column, key): the column takes the ACK body's string under ``key`` (the consumer learns the
    provider's pid from the first ACK); without that string the normal path runs. If the row
    changed meanwhile, or the message is no longer leased to this worker, nothing is written and
    the normal path runs. The handler's optional ``after_ack(row)`` then gets the row as stored.
    """

    table: sa.Table
    version: int
    state: int
    timeout_s: float | None
    fill: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """What happened when a message was sent: ``ok`` (2xx), or why not and whether to retry."""

    ok: bool
    status: int | None
    retryable: bool
    detail: str
    response_json: Any = None


class Sender(Protocol):
    """Sends one outbox message to the peer. Must not raise: report failures in the Delivery."""

    def send(self, message: OutboxMessage) -> Delivery: ...


class HttpSender:
    """POSTs outbox messages with httpx. ``auth_for(audience)`` supplies the DSP token auth.

    2xx is success; 5xx, timeouts and connection errors are retryable; 4xx is final (the peer
    rejected the message and will keep rejecting it).
    """

    def __init__(
        self,
        client: httpx.Client,
        auth_for: Callable[[str | None], httpx.Auth | None] | None = None,
    ) -> None:
        self.client = client
        self.auth_for = auth_for

    def send(self, message: OutboxMessage) -> Delivery:
        auth = self.auth_for(message.audience) if self.auth_for else None
        try:
            resp = self.client.post(
                message.url,
                content=orjson.dumps(message.body),
                headers={"content-type": "application/json"},
                auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            return Delivery(
                False, None, True, f"timeout sending {message.message_type} to {message.url}: {exc!r}"
            )
        except httpx.HTTPError as exc:
            return Delivery(False, None, True, f"cannot reach {message.url}: {exc!r}")
        except Exception as exc:  # a broken auth provider must not kill the worker
            return Delivery(False, None, False, f"sending {message.message_type} failed: {exc!r}")
        if 200 <= resp.status_code < 300:
            try:
                data = resp.json() if resp.content else None
            except ValueError:
                data = None
            return Delivery(True, resp.status_code, False, "ok", data)
        text = resp.text[:500]
        if resp.status_code >= 500 or resp.status_code == 429:
            return Delivery(
                False,
                resp.status_code,
                True,
                f"peer answered {resp.status_code} to {message.message_type}: {text}",
            )
        return Delivery(
            False,
            resp.status_code,
            False,
            f"peer rejected {message.message_type} with {resp.status_code}: {text}",
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: attempt n (1-based) failed -> wait ``base_s * 2**(n-1)``, capped."""

    limit: int = 7
    base_s: float = 0.5
    max_delay_s: float = 60.0

    def delay(self, attempts: int) -> float:
        return float(min(self.max_delay_s, self.base_s * (2 ** max(0, attempts - 1))))


class ProcessHandler(Protocol):
    """What a process kind tells the worker. Every callback runs with the process row locked."""

    kind: str
    table: sa.Table
    terminal_states: frozenset[int]

    def on_delivered(
        self, conn: Connection, process: Mapping[Any, Any], message: OutboxMessage, delivery: Delivery
    ) -> None:
        """The peer acknowledged ``message`` (2xx): enter the state the message leads to."""

    def on_failed(
        self, conn: Connection, process: Mapping[Any, Any], message: OutboxMessage, reason: str
    ) -> None:
        """``message`` cannot be delivered (4xx, or retries exhausted): usually -> TERMINATED."""

    def on_timeout(self, conn: Connection, process: Mapping[Any, Any]) -> None:
        """The process stayed in its state past ``deadline``: usually -> TERMINATED."""

    # Optional: ``after_commit(committed: bool) -> None`` is called after each callback's
    # transaction ended (e.g. to dispatch messages enqueued with enqueue_claimed).
    # Optional: ``after_ack(row) -> None`` is called with the process row as stored after the
    # worker recorded a delivery through the message's AckTransition (committed; no callback ran).


#: While a poller finds nothing, its wait doubles from ``poll_s`` up to this many times it.
IDLE_BACKOFF = 5


class PollingThread:
    """Runs ``step()`` (returns how much it did) in a daemon thread until :meth:`stop`: again at
    once while it finds work, else after a wait or a :meth:`wake`. The wait is ``poll_s`` after
    work was found and doubles with every look that finds nothing, up to ``poll_s *``
    :data:`IDLE_BACKOFF`: an idle replica looks about once a second instead of five times
    (work this process adds wakes it at once; another replica's is found within that second).
    A failing step is logged and never ends the loop (EDC's "stuck" lesson); the next try waits
    ``error_wait_s``."""

    def __init__(
        self, step: Callable[[], int], name: str, poll_s: float, *, error_wait_s: float = 0.0
    ) -> None:
        self.step = step
        self.name = name
        self.poll_s = poll_s
        self.idle_max_s = poll_s * IDLE_BACKOFF
        self.error_wait_s = error_wait_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Look for work now."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        wait = self.poll_s
        while not self._stop.is_set():
            try:
                did = self.step()
            except Exception:
                log.exception("%s: iteration failed; retrying", self.name)
                did = 0
                self._stop.wait(self.error_wait_s)
            if did:
                wait = self.poll_s
            elif not self._stop.is_set():
                # woken: there is work, and more may follow soon; else wait longer next time
                wait = self.poll_s if self._wake.wait(wait) else min(wait * 2, self.idle_max_s)
                self._wake.clear()


class Worker:
    """Delivers outbox messages and expires timed-out processes, on any number of replicas.

    ``run_once()`` does one iteration and returns how much it did (tests call it directly);
    ``start()`` runs iterations in a daemon thread until ``stop()``, sleeping ``poll_s`` when idle
    or until ``wake()``. Claimed messages of one batch are sent concurrently (``concurrency``).
    """

    def __init__(
        self,
        engine: Engine,
        handlers: Iterable[ProcessHandler],
        sender: Sender,
        *,
        owner: str | None = None,
        retry: RetryPolicy | None = None,
        lease_s: float = 30.0,
        batch_size: int = 20,
        poll_s: float = 0.2,
        concurrency: int = 8,
        hold_acks_s: float = 0.0,
    ) -> None:
        self.engine = engine
        #: How long a delivery with an :class:`AckTransition` into a non-terminal state, of a
        #: handler that opts in (``coalesce_acks``), waits before it is recorded: the peer's next
        #: message usually comes first and records it with its own write (:meth:`take_held`).
        #: 0: at once.
        self.hold_acks_s = hold_acks_s
        self._held: dict[tuple[str, str], tuple[OutboxMessage, Delivery, float]] = {}
        #: Messages being sent now, of handlers that coalesce, by process (at most one each
        #: whose outcome is open) and the ids a received message's write marked sent meanwhile.
        self._in_flight: dict[tuple[str, str], str] = {}
        self._settled: set[str] = set()
        self._held_cond = threading.Condition()
        self._flusher: threading.Thread | None = None
        self._stopping = False
        self.handlers = {h.kind: h for h in handlers}
        self.sender = sender
        self.owner = owner or f"w-{uuid.uuid4().hex[:12]}"
        self.retry = retry or RetryPolicy()
        self.lease_s = lease_s
        self.batch_size = batch_size
        self.poll_s = poll_s
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dsp-send")
        self._poller = PollingThread(
            self._poll_step, f"dsp-worker-{self.owner}", poll_s, error_wait_s=min(1.0, poll_s * 5)
        )
        #: when the polling thread next sweeps for timeouts (time.monotonic())
        self._next_sweep = 0.0
        self._postgres = is_postgres(engine)
        #: Processes with a message that :func:`enqueue_claimed` left to the claim because an older
        #: one was still pending: recording that older one's outcome wakes the worker.
        self._queued_behind: set[tuple[str, str]] = set()

    # -- lifecycle ----------------------------------------------------------------------------
    def wake(self) -> None:
        """Look for work now (call after committing an outbox row)."""
        self._poller.wake()

    def start(self) -> None:
        self._poller.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._poller.stop(timeout)
        self._pool.shutdown(wait=True, cancel_futures=False)
        with self._held_cond:
            self._stopping = True
            self._held_cond.notify_all()
            flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.join(timeout)
        self._flush_held(everything=True)

    # -- held deliveries ----------------------------------------------------------------------
    def take_held(self, kind: str, process_id: str) -> tuple[OutboxMessage, Delivery] | None:
        """The delivery of ``process_id`` held back for recording, if any; the caller now
        records it with its own write (``StateWrite.acked``) or, if that write does not happen,
        with :meth:`record_held`."""
        with self._held_cond:
            item = self._held.pop((kind, process_id), None)
        return None if item is None else (item[0], item[1])

    def record_held(self, item: tuple[OutboxMessage, Delivery]) -> None:
        """Record a delivery taken with :meth:`take_held` the usual way (at once)."""
        self._record_now(*item)

    def recorded_with(self, kind: str, process_id: str) -> None:
        """A write recorded a held delivery of ``process_id`` (``StateWrite.acked``): a message
        queued behind it can be claimed now."""
        self._release_queued(kind, process_id)

    def in_flight(self, kind: str, process_id: str) -> str | None:
        """The id of the message of ``process_id`` being sent right now, if any (handlers that
        coalesce, with ``hold_acks_s``). A message the peer sent after it shows the peer has it:
        the write that takes that message may mark it sent (``StateWrite.acked``), then
        :meth:`settle`."""
        with self._held_cond:
            return self._in_flight.get((kind, process_id))

    def settle(self, kind: str, process_id: str, message_id: str) -> None:
        """A write marked the in-flight ``message_id`` sent: its outcome, when it comes, is not
        recorded again (the state it would have recorded was passed by that write)."""
        with self._held_cond:
            if len(self._settled) > 10_000:  # ids whose send ended before they were settled
                self._settled.clear()
            self._settled.add(message_id)
        self._release_queued(kind, process_id)

    def _was_settled(self, message_id: str) -> bool:
        with self._held_cond:
            if message_id in self._settled:
                self._settled.discard(message_id)
                return True
            return False

    def _hold(self, message: OutboxMessage, delivery: Delivery) -> bool:
        handler = self.handlers.get(message.kind)
        if (
            self.hold_acks_s <= 0
            or message.on_ack is None
            or not delivery.ok
            or not getattr(handler, "coalesce_acks", False)
            # nothing follows an ACK into a terminal state, and others may wait for that state
            # (a transfer needs the provider's negotiation FINALIZED): recorded at once
            or message.on_ack.state in getattr(handler, "terminal_states", ())
        ):
            return False
        key = (message.kind, message.process_id)
        with self._held_cond:
            if self._stopping:
                return False
            earlier = self._held.pop(key, None)
            self._held[key] = (message, delivery, time.monotonic() + self.hold_acks_s)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="dsp-ack-flush", daemon=True)
                self._flusher.start()
            self._held_cond.notify_all()
        if earlier is not None:  # never more than one per process; keep the older one's record
            self._record_now(earlier[0], earlier[1])
        return True

    def _flush_loop(self) -> None:
        while True:
            with self._held_cond:
                if self._stopping:
                    return
                due = min((d for _, _, d in self._held.values()), default=None)
                wait = None if due is None else due - time.monotonic()
                if wait is None or wait > 0:
                    self._held_cond.wait(wait)
                    continue
            self._flush_held()

    def _flush_held(self, *, everything: bool = False) -> None:
        now = time.monotonic()
        with self._held_cond:
            keys = [k for k, (_, _, d) in self._held.items() if everything or d <= now]
            items = [self._held.pop(k) for k in keys]
        for message, delivery, _ in items:
            if self._settled and self._was_settled(message.id):
                continue
            try:
                self._record_now(message, delivery)
            except Exception:
                log.exception(
                    "recording delivery of %s failed; the lease will expire and it is resent", message.id
                )

    # -- one iteration ------------------------------------------------------------------------
    def run_once(self) -> int:
        return self.deliver() + self.expire()

    def _poll_step(self) -> int:
        """The polling thread's iteration: deliver whenever woken, but sweep for timeouts at most
        every ``poll_s`` (under load the worker is woken many times a second, and deadlines are
        seconds apart); a sweep that filled its batch sweeps again at once."""
        did = self.deliver()
        now = time.monotonic()
        if now >= self._next_sweep:
            expired = self.expire()
            self._next_sweep = now if expired >= self.batch_size else now + self.poll_s
            did += expired
        return did

    def _claim(self) -> list[OutboxMessage]:
        now = time.time()
        pg = self._postgres

        def build() -> Any:
            o2 = outbox.alias("older")
            older_pending = (
                sa.select(o2.c.id)
                .where(
                    o2.c.kind == outbox.c.kind,
                    o2.c.process_id == outbox.c.process_id,
                    o2.c.seq < outbox.c.seq,
                    o2.c.status == "pending",
                )
                .exists()
            )
            stmt = (
                sa.select(outbox)
                .where(
                    outbox.c.status == "pending",
                    outbox.c.not_before <= sa.bindparam("_now"),
                    sa.or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < sa.bindparam("_now")),
                    ~older_pending,
                )
                .order_by(outbox.c.not_before)
                .limit(sa.bindparam("_limit", type_=sa.Integer))
            )
            return stmt.with_for_update(skip_locked=True, of=outbox) if pg else stmt

        find = cached_statement(("claim", pg), build)
        lease = cached_statement(
            ("claim_lease",),
            lambda: (
                sa.update(outbox)
                .where(outbox.c.id.in_(sa.bindparam("_ids", expanding=True)))
                .values(lease_owner=sa.bindparam("_owner"), lease_until=sa.bindparam("_until"))
            ),
        )
        with write_tx(self.engine) as conn:
            rows = list(conn.execute(find, {"_now": now, "_limit": self.batch_size}).mappings())
            if not rows:
                return []
            conn.execute(
                lease, {"_ids": [r["id"] for r in rows], "_owner": self.owner, "_until": now + self.lease_s}
            )
        return [
            OutboxMessage(
                id=r["id"],
                kind=r["kind"],
                process_id=r["process_id"],
                message_type=r["message_type"],
                url=r["url"],
                body=orjson.loads(r["body"]),
                audience=r["audience"],
                attempts=r["attempts"],
            )
            for r in rows
        ]

    def dispatch(self, messages: Iterable[OutboxMessage]) -> None:
        """Send messages leased to this worker by :func:`enqueue_claimed` now, concurrently.
        Call after the transaction that enqueued them has committed."""
        for m in messages:
            try:
                self._pool.submit(self._send_one, m)
            except RuntimeError:  # pool shut down: the lease expires and a worker sends it
                return

    def deliver(self) -> int:
        """Claim due outbox messages, send them, record the outcome. Returns how many were sent."""
        messages = self._claim()
        if not messages:
            return 0
        results = list(self._pool.map(self._send_one, messages))
        return sum(1 for r in results if r)

    def _send_one(self, message: OutboxMessage) -> bool:
        key = (message.kind, message.process_id)
        tracked = self.hold_acks_s > 0 and getattr(self.handlers.get(message.kind), "coalesce_acks", False)
        if tracked:
            with self._held_cond:
                self._in_flight[key] = message.id
        try:
            delivery = self.sender.send(message)
        except Exception as exc:
            delivery = Delivery(False, None, False, f"sender crashed: {exc!r}")
        finally:
            if tracked:
                with self._held_cond:
                    if self._in_flight.get(key) == message.id:
                        del self._in_flight[key]
        try:
            self._record(message, delivery)
        except Exception:
            log.exception(
                "recording delivery of %s failed; the lease will expire and it is resent", message.id
            )
        return True

    def _record(self, message: OutboxMessage, delivery: Delivery) -> None:
        if self._settled and self._was_settled(message.id):
            return  # a received message's write recorded it (settle), whatever happened here
        if not self._hold(message, delivery):
            self._record_now(message, delivery)

    def _record_now(self, message: OutboxMessage, delivery: Delivery) -> None:
        handler = self.handlers.get(message.kind)
        if not self._record_ack(handler, message, delivery):
            try:
                self._record_tx(handler, message, delivery)
            except BaseException:
                _after_commit(handler, False)
                raise
            _after_commit(handler, True)
        self._release_queued(message.kind, message.process_id)

    def _release_queued(self, kind: str, process_id: str) -> None:
        key = (kind, process_id)
        if key in self._queued_behind:
            # A later message of this process waits for the claim, which skips it while this one
            # was pending: claim it now, not at the next poll.
            self._queued_behind.discard(key)
            self.wake()

    def _record_ack(self, handler: ProcessHandler | None, message: OutboxMessage, delivery: Delivery) -> bool:
        """The short path of :class:`AckTransition`. True: recorded."""
        ack = message.on_ack
        if ack is None or not delivery.ok or handler is None:
            return False
        now = time.time()
        params: dict[str, Any] = {
            "_id": message.id,
            "_owner": self.owner,
            "_now": now,
            "_pid": message.process_id,
            "_version": ack.version,
            "_state": ack.state,
            "_deadline": None if ack.timeout_s is None else now + ack.timeout_s,
        }
        if ack.fill is not None:
            answer = delivery.response_json
            value = answer.get(ack.fill[1]) if isinstance(answer, dict) else None
            if not (isinstance(value, str) and value):
                return False
            params["_fill"] = value
        fill = None if ack.fill is None else ack.fill[0]
        pg = self._postgres
        stmt = cached_statement(
            ("ack_transition", ack.table.name, id(ack.table), fill, pg),
            lambda: _ack_statement(ack.table, fill, pg),
        )
        if pg:  # one statement, its own transaction
            with pg_autocommit(self.engine) as conn:
                row = run(conn, stmt, params).first()
        else:
            # SQLite: two statements in the process's group-committed writer (which holds the
            # database's write lock: nothing changes between them), no row lock read, no handler.
            with write_tx(self.engine) as conn:
                row = run(conn, stmt, params).first()
                if row is not None:
                    run(
                        conn,
                        cached_statement(("outbox_sent_if_ours",), _outbox_sent_if_ours),
                        {"_id": message.id, "_owner": self.owner, "_now": now},
                    )
        if row is None:
            return False  # the row moved on, or the lease is gone: the locking path decides
        hook = getattr(handler, "after_ack", None)
        if hook is not None:
            try:
                hook(row)
            except Exception:
                log.exception("after_ack of %s %s failed", message.kind, message.process_id)
        return True

    def _record_tx(self, handler: ProcessHandler | None, message: OutboxMessage, delivery: Delivery) -> None:
        now = time.time()
        with write_tx(self.engine) as conn:
            # Lock order everywhere: process row, then outbox row.
            process = None
            if handler is not None:
                try:
                    process = lock_process(conn, handler.table, message.process_id)
                except NotFoundError:
                    process = None
            if delivery.ok and conn.dialect.update_returning:
                # One round trip: mark the row sent only if it is still ours and pending (else
                # someone took over after our lease expired, and their outcome counts).
                sent = run(
                    conn,
                    cached_statement(("outbox_sent_if_ours",), _outbox_sent_if_ours),
                    {"_id": message.id, "_owner": self.owner, "_now": now},
                ).first()
                if sent is not None and handler is not None and process is not None:
                    handler.on_delivered(conn, process, message, delivery)
                return
            current = (
                conn.execute(
                    cached_statement(
                        ("outbox_current",),
                        lambda: sa.select(
                            outbox.c.status, outbox.c.lease_owner, outbox.c.attempts, outbox.c.seq
                        ).where(outbox.c.id == sa.bindparam("_id")),
                    ),
                    {"_id": message.id},
                )
                .mappings()
                .first()
            )
            if current is None or current["status"] != "pending" or current["lease_owner"] != self.owner:
                return  # someone else took over after our lease expired; their outcome counts
            attempts = current["attempts"] + 1
            if delivery.ok:
                conn.execute(
                    cached_statement(
                        ("outbox_sent",),
                        lambda: (
                            sa.update(outbox)
                            .where(outbox.c.id == sa.bindparam("_id"))
                            .values(
                                status="sent",
                                attempts=sa.bindparam("_attempts"),
                                sent_at=sa.bindparam("_now"),
                                lease_owner=None,
                                lease_until=None,
                            )
                        ),
                    ),
                    {"_id": message.id, "_attempts": attempts, "_now": now},
                )
                if handler is not None and process is not None:
                    handler.on_delivered(conn, process, message, delivery)
                return
            final = (not delivery.retryable) or attempts >= self.retry.limit
            if not final:
                conn.execute(
                    sa.update(outbox)
                    .where(outbox.c.id == message.id)
                    .values(
                        attempts=attempts,
                        not_before=now + self.retry.delay(attempts),
                        last_error=delivery.detail,
                        lease_owner=None,
                        lease_until=None,
                    )
                )
                return
            reason = delivery.detail
            if delivery.retryable:
                reason = f"gave up after {attempts} attempts: {delivery.detail}"
            conn.execute(
                sa.update(outbox)
                .where(outbox.c.id == message.id)
                .values(
                    status="failed", attempts=attempts, last_error=reason, lease_owner=None, lease_until=None
                )
            )
            # Later messages of the same process must not go out after a failed one.
            conn.execute(
                sa.update(outbox)
                .where(
                    outbox.c.kind == message.kind,
                    outbox.c.process_id == message.process_id,
                    outbox.c.status == "pending",
                    outbox.c.seq > current["seq"],
                )
                .values(status="cancelled", last_error=f"cancelled: earlier message {message.id} failed")
            )
            if handler is not None and process is not None:
                handler.on_failed(conn, process, message, reason)

    def expire(self) -> int:
        """Time out processes past their deadline. Returns how many were handled."""
        now = time.time()
        count = 0
        for handler in self.handlers.values():
            t = handler.table
            terminal = tuple(sorted(int(x) for x in handler.terminal_states))
            pg = self._postgres

            def build(t: sa.Table = t, terminal: tuple[int, ...] = terminal, pg: bool = pg) -> Any:
                stmt = (
                    sa.select(t)
                    .where(
                        t.c.deadline.is_not(None),
                        t.c.deadline < sa.bindparam("_now"),
                        t.c.state.not_in(terminal),
                    )
                    .order_by(t.c.deadline)
                    .limit(sa.bindparam("_limit", type_=sa.Integer))
                )
                return stmt.with_for_update(skip_locked=True) if pg else stmt

            def build_probe(t: sa.Table = t, terminal: tuple[int, ...] = terminal) -> Any:
                return (
                    sa.select(t.c.id)
                    .where(
                        t.c.deadline.is_not(None),
                        t.c.deadline < sa.bindparam("_now"),
                        t.c.state.not_in(terminal),
                    )
                    .limit(1)
                )

            # Nearly always nothing is due: find that out with one read (no write transaction:
            # no BEGIN and COMMIT on PostgreSQL, no write lock on SQLite).
            probe = cached_statement(("expire-probe", t.name, id(t), terminal), build_probe)
            with read_only(self.engine) as conn:
                due = run(conn, probe, {"_now": now}).rows
            if not due:
                continue
            stmt = cached_statement(("expire", t.name, id(t), terminal, pg), build)
            try:
                with write_tx(self.engine) as conn:
                    for row in conn.execute(stmt, {"_now": now, "_limit": self.batch_size}).mappings().all():
                        handler.on_timeout(conn, row)
                        count += 1
            except BaseException:
                _after_commit(handler, False)
                raise
            _after_commit(handler, True)
        return count


def _outbox_sent_if_ours(prefix: str = "", *conditions: Any) -> Any:
    """``UPDATE dsp_outbox SET status = 'sent', attempts = attempts + 1, ...`` where the row
    ``:<prefix>id`` is still pending and leased to ``:<prefix>owner`` (and ``conditions`` hold),
    ``RETURNING`` its id (no row: not ours any more). ``:<prefix>now`` is the time sent."""
    return (
        sa.update(outbox)
        .where(
            outbox.c.id == sa.bindparam(f"{prefix}_id"),
            outbox.c.status == "pending",
            outbox.c.lease_owner == sa.bindparam(f"{prefix}_owner"),
            *conditions,
        )
        .values(
            status="sent",
            attempts=outbox.c.attempts + 1,
            sent_at=sa.bindparam(f"{prefix}_now"),
            lease_owner=None,
            lease_until=None,
        )
        .returning(outbox.c.id)
    )


def _ack_statement(table: sa.Table, fill: str | None, pg: bool) -> Any:
    """PostgreSQL: one atomic statement: lock the process row if it still has ``_version``; only
    then mark the outbox row sent if it is still pending and ours; only then store the new
    state. Either all of it happens or nothing (no row returned).

    SQLite (no UPDATE in a CTE): store the new state if the row has ``_version`` and the outbox
    row is pending and ours; the caller then marks the outbox row sent in the same transaction.
    """
    values: dict[str, Any] = {
        "state": sa.bindparam("_state", type_=table.c.state.type),
        "state_since": sa.bindparam("_now"),
        "deadline": sa.bindparam("_deadline", type_=table.c.deadline.type),
        "pending": False,
        "updated_at": sa.bindparam("_now"),
        "version": table.c.version + 1,
    }
    if fill is not None:
        values[fill] = sa.bindparam("_fill", type_=table.c[fill].type)
    if not pg:
        ours = sa.select(outbox.c.id).where(
            outbox.c.id == sa.bindparam("_id"),
            outbox.c.status == "pending",
            outbox.c.lease_owner == sa.bindparam("_owner"),
        )
        return (
            sa.update(table)
            .where(
                table.c.id == sa.bindparam("_pid"),
                table.c.version == sa.bindparam("_version"),
                sa.exists(ours),
            )
            .values(values)
            .returning(*table.c)
        )
    p = (
        sa.select(table.c.id)
        .where(table.c.id == sa.bindparam("_pid"), table.c.version == sa.bindparam("_version"))
        .with_for_update()
        .cte("unchanged")
    )
    sent = _outbox_sent_if_ours("", sa.exists(sa.select(p.c.id))).cte("sent")
    return (
        sa.update(table)
        .where(table.c.id == sa.bindparam("_pid"), sa.exists(sa.select(sent.c.id)))
        .values(values)
        .returning(*table.c)
    )


def _after_commit(handler: ProcessHandler | None, committed: bool) -> None:
    """Call the handler's optional ``after_commit(committed)`` hook (to send or publish what its
    callbacks prepared only once their transaction is durable)."""
    hook = getattr(handler, "after_commit", None)
    if hook is not None:
        hook(committed)


def cancel_pending(conn: Connection, kind: str, process_id: str, reason: str) -> int:
    """Cancel every undelivered outbox message of a process (e.g. after it was TERMINATED)."""
    res = conn.execute(
        sa.update(outbox)
        .where(outbox.c.kind == kind, outbox.c.process_id == process_id, outbox.c.status == "pending")
        .values(status="cancelled", last_error=reason)
    )
    return int(res.rowcount or 0)
