"""A TigerBeetle-shaped double-entry ledger over SQL (SQLite and PostgreSQL).

Accounts hold four balances (debits/credits, pending/posted) in integer minor units of their
``ledger`` (a currency such as ``EUR`` or a usage unit). Transfers are immutable, identified by a
client-supplied id, and move ``amount`` from a debit account to a credit account of the same ledger:

* a plain transfer posts at once;
* ``PENDING`` reserves (two-phase); ``POST_PENDING`` (full, or partial with a smaller amount)
  or ``VOID_PENDING`` with ``pending_id`` resolves it; a pending transfer whose ``timeout_s``
  passed is expired and can no longer be posted;
* ``LINKED`` chains a transfer with the next one in the batch: the chain succeeds or fails as one.

Every transfer gets a result code (:class:`Result`). Retrying an id that was created answers
``exists`` (or ``exists_with_different_<field>`` when the fields differ); an id that failed a
balance check stays failed (``id_already_failed``). Corrections are new transfers.

How a batch is applied (one database transaction, set-based): read the pending transfers it
refers to, lock every involved account in ascending id order (``FOR UPDATE`` on PostgreSQL; the
single SQLite writer otherwise), read which ids exist, apply the batch in memory, then write all
new transfers with one multi-row INSERT, all balances with one executemany UPDATE, and one audit
entry covering the batch. Locking in a fixed order means no deadlocks; locking each account once
per batch means a hot account costs one lock per batch, not per transfer.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine

from connector.errors import LedgerError, ValidationError
from connector.store import is_postgres
from metering._audit import append_audit, transfer_digest
from metering._tables import accounts, failed_ids, transfers

__all__ = [
    "Account",
    "AccountFlags",
    "Ledger",
    "Result",
    "Transfer",
    "TransferFlags",
]


class AccountFlags(enum.IntFlag):
    """Balance rules of an account (checked in the same transaction as the transfer)."""

    NONE = 0
    #: debits_pending + debits_posted may not exceed credits_posted (a prepaid balance).
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1
    #: credits_pending + credits_posted may not exceed debits_posted.
    CREDITS_MUST_NOT_EXCEED_DEBITS = 2


class TransferFlags(enum.IntFlag):
    NONE = 0
    PENDING = 1
    POST_PENDING = 2
    VOID_PENDING = 4
    LINKED = 8


class Result(enum.StrEnum):
    """The outcome of one transfer (or account) in a batch."""

    CREATED = "created"
    EXISTS = "exists"
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = "exists_with_different_debit_account_id"
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = "exists_with_different_credit_account_id"
    EXISTS_WITH_DIFFERENT_AMOUNT = "exists_with_different_amount"
    EXISTS_WITH_DIFFERENT_PENDING_ID = "exists_with_different_pending_id"
    EXISTS_WITH_DIFFERENT_CODE = "exists_with_different_code"
    EXISTS_WITH_DIFFERENT_FLAGS = "exists_with_different_flags"
    EXISTS_WITH_DIFFERENT_LEDGER = "exists_with_different_ledger"
    EXISTS_WITH_DIFFERENT_TIMEOUT = "exists_with_different_timeout"
    ID_ALREADY_FAILED = "id_already_failed"
    ID_MUST_NOT_BE_EMPTY = "id_must_not_be_empty"
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = "accounts_must_have_the_same_ledger"
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = "transfer_must_have_the_same_ledger_as_accounts"
    AMOUNT_MUST_NOT_BE_NEGATIVE = "amount_must_not_be_negative"
    AMOUNT_MUST_NOT_BE_ZERO = "amount_must_not_be_zero"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    PENDING_ID_MUST_BE_SET = "pending_id_must_be_set"
    PENDING_ID_MUST_NOT_BE_SET = "pending_id_must_not_be_set"
    PENDING_TRANSFER_NOT_FOUND = "pending_transfer_not_found"
    PENDING_TRANSFER_NOT_PENDING = "pending_transfer_not_pending"
    PENDING_TRANSFER_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_TRANSFER_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_TRANSFER_EXPIRED = "pending_transfer_expired"
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = "pending_transfer_has_different_amount"
    EXCEEDS_PENDING_TRANSFER_AMOUNT = "exceeds_pending_transfer_amount"
    EXCEEDS_CREDITS = "exceeds_credits"
    EXCEEDS_DEBITS = "exceeds_debits"
    LINKED_EVENT_FAILED = "linked_event_failed"
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
    #: accounts only
    ACCOUNT_EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"

    @property
    def ok(self) -> bool:
        return self in (Result.CREATED, Result.EXISTS)


#: Failures that depend on balances or time: the id is burnt (TigerBeetle's "transient" errors).
_TRANSIENT = {Result.EXCEEDS_CREDITS, Result.EXCEEDS_DEBITS, Result.PENDING_TRANSFER_EXPIRED}


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    ledger: str
    code: int = 0
    flags: AccountFlags = AccountFlags.NONE
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    user_data: str = ""

    @property
    def balance(self) -> int:
        """credits_posted - debits_posted (what a prepaid or revenue account holds)."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """credits_posted - debits_posted - debits_pending (what can still be reserved or spent)."""
        return self.credits_posted - self.debits_posted - self.debits_pending

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ledger": self.ledger,
            "code": self.code,
            "flags": int(self.flags),
            "debits_pending": self.debits_pending,
            "debits_posted": self.debits_posted,
            "credits_pending": self.credits_pending,
            "credits_posted": self.credits_posted,
            "balance": self.balance,
            "available": self.available,
            "user_data": self.user_data,
        }


@dataclass(frozen=True, slots=True)
class Transfer:
    id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    ledger: str
    code: int = 0
    flags: TransferFlags = TransferFlags.NONE
    pending_id: str | None = None
    #: seconds a PENDING transfer may wait to be posted (0: no timeout)
    timeout_s: int = 0
    user_data: str = ""
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "debit_account_id": self.debit_account_id,
            "credit_account_id": self.credit_account_id,
            "amount": self.amount,
            "ledger": self.ledger,
            "code": self.code,
            "flags": int(self.flags),
            "pending_id": self.pending_id,
            "timeout_s": self.timeout_s,
            "user_data": self.user_data,
        }


@dataclass
class _Bal:
    row: dict[str, Any]
    dirty: bool = False


@dataclass
class _Pending:
    transfer: dict[str, Any]
    status: str


@dataclass
class _State:
    accounts: dict[str, _Bal] = field(default_factory=dict)
    pendings: dict[str, _Pending] = field(default_factory=dict)
    existing: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


#: Pending transfers whose timeout passed at ``now``. The status is a literal, not a parameter,
#: so PostgreSQL's generic plans still match the partial index of pending transfers
#: (metering_0007) and the sweep never reads the whole, ever-growing table.
EXPIRY_CANDIDATES = (
    sa.select(transfers.c.id)
    .where(
        transfers.c.pending_status == sa.literal_column("'pending'"),
        transfers.c.timeout_s > sa.literal_column("0"),
    )
    .where(transfers.c.created_at + transfers.c.timeout_s < sa.bindparam("now"))
)


def _account_row(a: Account, now: float) -> dict[str, Any]:
    return {
        "id": a.id,
        "ledger": a.ledger,
        "code": a.code,
        "flags": int(a.flags),
        "debits_pending": 0,
        "debits_posted": 0,
        "credits_pending": 0,
        "credits_posted": 0,
        "user_data": a.user_data,
        "created_at": now,
    }


def _account(row: Any) -> Account:
    m = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
    return Account(
        id=m["id"],
        ledger=m["ledger"],
        code=m["code"],
        flags=AccountFlags(m["flags"]),
        debits_pending=m["debits_pending"],
        debits_posted=m["debits_posted"],
        credits_pending=m["credits_pending"],
        credits_posted=m["credits_posted"],
        user_data=m["user_data"],
    )


def _transfer(m: dict[str, Any]) -> Transfer:
    return Transfer(
        id=m["id"],
        debit_account_id=m["debit_account_id"],
        credit_account_id=m["credit_account_id"],
        amount=m["amount"],
        ledger=m["ledger"],
        code=m["code"],
        flags=TransferFlags(m["flags"]),
        pending_id=m["pending_id"],
        timeout_s=m["timeout_s"],
        user_data=m["user_data"],
        created_at=m["created_at"],
    )


_COMPARED = (
    ("debit_account_id", Result.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
    ("credit_account_id", Result.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
    ("amount", Result.EXISTS_WITH_DIFFERENT_AMOUNT),
    ("pending_id", Result.EXISTS_WITH_DIFFERENT_PENDING_ID),
    ("ledger", Result.EXISTS_WITH_DIFFERENT_LEDGER),
    ("code", Result.EXISTS_WITH_DIFFERENT_CODE),
    ("flags", Result.EXISTS_WITH_DIFFERENT_FLAGS),
    ("timeout_s", Result.EXISTS_WITH_DIFFERENT_TIMEOUT),
)


_LINKED = int(TransferFlags.LINKED)
_PENDING = int(TransferFlags.PENDING)
_POST = int(TransferFlags.POST_PENDING)
_VOID = int(TransferFlags.VOID_PENDING)
_DEBITS_LIMITED = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CREDITS_LIMITED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)

_INHERITED = frozenset({"debit_account_id", "credit_account_id", "amount", "ledger", "code"})


_TRANSFER_COLUMNS = [c.name for c in transfers.columns]


def _insert_transfers(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """New transfer rows: on PostgreSQL one ``COPY`` (no statement per row), elsewhere executemany."""
    if conn.dialect.name != "postgresql" or len(rows) < 50:
        conn.execute(transfers.insert(), rows)
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    columns = _TRANSFER_COLUMNS
    statement = f"COPY ledger_transfers ({', '.join(columns)}) FROM STDIN"
    import psycopg

    try:
        with raw.cursor() as cur, cur.copy(statement) as copy:  # same connection: same transaction
            for row in rows:
                copy.write_row([row.get(c) for c in columns])
    except psycopg.errors.IntegrityError as exc:  # a racing batch inserted the same new id: retried
        raise sa.exc.IntegrityError(statement, None, exc) from exc


_PG_BALANCES = sa.text(
    "UPDATE ledger_accounts SET debits_pending = v.a, debits_posted = v.b, credits_pending = v.c, "
    "credits_posted = v.d FROM unnest(CAST(:i AS text[]), CAST(:a AS bigint[]), CAST(:b AS bigint[]), "
    "CAST(:c AS bigint[]), CAST(:d AS bigint[])) AS v(i, a, b, c, d) WHERE ledger_accounts.id = v.i"
)


def _update_balances(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """All changed balances in one statement: on PostgreSQL ``UPDATE ... FROM unnest(arrays)``
    (five parameters, whatever the count), elsewhere ``UPDATE ... FROM (VALUES ...)`` per 500."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            _PG_BALANCES,
            {"i": [r["id"] for r in rows], "a": [r["debits_pending"] for r in rows],
             "b": [r["debits_posted"] for r in rows], "c": [r["credits_pending"] for r in rows],
             "d": [r["credits_posted"] for r in rows]},
        )  # fmt: skip
        return
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        params: dict[str, Any] = {}
        values = []
        for n, r in enumerate(chunk):
            values.append(f"(:i{n}, :a{n}, :b{n}, :c{n}, :d{n})")
            params |= {f"i{n}": r["id"], f"a{n}": r["debits_pending"], f"b{n}": r["debits_posted"],
                       f"c{n}": r["credits_pending"], f"d{n}": r["credits_posted"]}  # fmt: skip
        cast = "::bigint" if conn.dialect.name == "postgresql" else ""
        conn.execute(
            sa.text(
                "WITH v(i, a, b, c, d) AS (VALUES " + ", ".join(values) + ") "
                "UPDATE ledger_accounts SET debits_pending = v.a" + cast + ", debits_posted = v.b" + cast
                + ", credits_pending = v.c" + cast + ", credits_posted = v.d" + cast
                + " FROM v WHERE ledger_accounts.id = v.i"
            ),
            params,
        )  # fmt: skip


class Ledger:
    """The ledger on ``engine``. Thread-safe; one instance per process is enough."""

    def __init__(self, engine: Engine, *, clock: Any = time.time) -> None:
        self.engine = engine
        self._pg = is_postgres(engine)
        self._clock = clock

    # ------------------------------------------------------------------ accounts
    def create_accounts(self, new: Sequence[Account]) -> list[Result]:
        """Create accounts; an existing id with the same ledger/code/flags answers ``exists``."""
        now = self._clock()
        results: list[Result] = []
        with self.engine.begin() as conn:
            ids = [a.id for a in new]
            found = {r.id: r for r in conn.execute(sa.select(accounts).where(accounts.c.id.in_(ids)))}
            rows = []
            for a in new:
                if not a.id:
                    results.append(Result.ID_MUST_NOT_BE_EMPTY)
                elif a.id in found:
                    r = found[a.id]
                    same = (r.ledger, r.code, r.flags) == (a.ledger, a.code, int(a.flags))
                    results.append(Result.EXISTS if same else Result.ACCOUNT_EXISTS_WITH_DIFFERENT_FIELDS)
                else:
                    rows.append(_account_row(a, now))
                    found[a.id] = sa.Row  # type: ignore[assignment]  # marks duplicates within the batch
                    results.append(Result.CREATED)
            if rows:
                conn.execute(accounts.insert(), rows)
                append_audit(conn, "accounts", {"accounts": sorted(rows, key=lambda r: r["id"])}, now=now)
        return results

    def account(self, account_id: str) -> Account:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).first()
        if row is None:
            raise LedgerError(f"no account {account_id!r}", code="account_not_found")
        return _account(row)

    def accounts(self, *, ledger: str | None = None, offset: int = 0, limit: int = 100) -> list[Account]:
        stmt = sa.select(accounts).order_by(accounts.c.id).offset(offset).limit(limit)
        if ledger is not None:
            stmt = stmt.where(accounts.c.ledger == ledger)
        with self.engine.connect() as conn:
            return [_account(r) for r in conn.execute(stmt)]

    def transfers(
        self, *, account_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> list[Transfer]:
        stmt = (
            sa.select(transfers).order_by(transfers.c.created_at, transfers.c.id).offset(offset).limit(limit)
        )
        if account_id is not None:
            stmt = stmt.where(
                sa.or_(
                    transfers.c.debit_account_id == account_id, transfers.c.credit_account_id == account_id
                )
            )
        with self.engine.connect() as conn:
            return [_transfer(dict(r._mapping)) for r in conn.execute(stmt)]

    def transfer(self, transfer_id: str) -> Transfer | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(transfers).where(transfers.c.id == transfer_id)).first()
        return _transfer(dict(row._mapping)) if row is not None else None

    # ------------------------------------------------------------------ transfers
    def create_transfer(self, t: Transfer) -> Result:
        """One transfer (a batch of one)."""
        return self.create_transfers([t])[0]

    def create_transfers(self, batch: Sequence[Transfer]) -> list[Result]:
        """Apply ``batch`` atomically (per linked chain) and return one result per transfer."""
        if not batch:
            return []
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    return self._apply(conn, list(batch))
            except sa.exc.IntegrityError:
                # Two batches without a common account raced on the same new id: the retry sees it.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def create_transfers_in(self, conn: Connection, batch: Sequence[Transfer]) -> list[Result]:
        """Like :meth:`create_transfers` inside the caller's transaction (e.g. with usage events)."""
        return self._apply(conn, list(batch))

    def _in(self, column: Any, values: Any) -> Any:
        """``column IN values``; on PostgreSQL ``= ANY(array)``: one parameter instead of thousands
        (psycopg parses every placeholder of a query it has not cached)."""
        values = list(values)
        if self._pg:
            return column == sa.any_(sa.bindparam(None, values, type_=ARRAY(sa.String)))
        return column.in_(values)

    def _load(self, conn: Connection, batch: list[Transfer]) -> _State:
        st = _State()
        if self._pg:
            # psycopg prepares a statement after five executions, and PostgreSQL may then keep a
            # generic plan made while the tables were nearly empty: a sequential scan for
            # ``id = ANY(array)``, and batches 3-4x slower once the tables grew. Custom plans for
            # this transaction only (everywhere, they cost the negotiations 25 % more server CPU).
            conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
        pending_ids = {t.pending_id for t in batch if t.pending_id}
        account_ids = {t.debit_account_id for t in batch} | {t.credit_account_id for t in batch}
        if pending_ids:
            for r in conn.execute(sa.select(transfers).where(self._in(transfers.c.id, pending_ids))):
                account_ids |= {r.debit_account_id, r.credit_account_id}
        lock = sa.select(accounts).where(self._in(accounts.c.id, sorted(account_ids))).order_by(accounts.c.id)
        if self._pg:
            lock = lock.with_for_update()
        for r in conn.execute(lock):
            st.accounts[r.id] = _Bal(dict(r._mapping))
        # Read after the locks: whatever touched these accounts before us is committed and visible.
        if pending_ids:
            for r in conn.execute(sa.select(transfers).where(self._in(transfers.c.id, pending_ids))):
                st.pendings[r.id] = _Pending(dict(r._mapping), r.pending_status)
        ids = [t.id for t in batch]
        for r in conn.execute(sa.select(transfers).where(self._in(transfers.c.id, ids))):
            st.existing[r.id] = dict(r._mapping)
        for r in conn.execute(sa.select(failed_ids).where(self._in(failed_ids.c.id, ids))):
            st.failed[r.id] = r.result
        return st

    def _apply(self, conn: Connection, batch: list[Transfer]) -> list[Result]:
        now = self._clock()
        st = self._load(conn, batch)
        results: list[Result | None] = [None] * len(batch)
        new_rows: list[dict[str, Any]] = []
        new_failed: list[dict[str, Any]] = []
        status_updates: dict[str, str] = {}
        i = 0
        while i < len(batch):
            # a chain: consecutive LINKED transfers plus the first one without LINKED
            j = i
            while j < len(batch) and int(batch[j].flags) & _LINKED:
                j += 1
            chain = list(range(i, min(j + 1, len(batch))))
            open_chain = j >= len(batch)
            linked = len(chain) > 1
            if linked:  # only a real chain needs an undo point: a lone transfer mutates nothing on failure
                snapshot = {k: dict(v.row) for k, v in st.accounts.items()}
                dirty = {k for k, v in st.accounts.items() if v.dirty}
                pend_snapshot = {k: v.status for k, v in st.pendings.items()}
                mark = (len(new_rows), dict(status_updates), dict(st.existing))
            failed_at: int | None = None
            failure: Result | None = None
            for k in chain:
                if open_chain and k == chain[-1]:
                    failure, failed_at = Result.LINKED_EVENT_CHAIN_OPEN, k
                    break
                res = self._one(st, batch[k], now, new_rows, status_updates)
                results[k] = res
                if not res.ok:
                    failure, failed_at = res, k
                    break
            if failed_at is not None and not linked:
                results[failed_at] = failure
            elif failed_at is not None:
                # undo the chain
                for key, row in snapshot.items():
                    st.accounts[key].row = row
                    st.accounts[key].dirty = key in dirty
                for key, status in pend_snapshot.items():
                    st.pendings[key].status = status
                del new_rows[mark[0] :]
                status_updates.clear()
                status_updates.update(mark[1])
                st.existing = mark[2]
                for k in chain:
                    results[k] = failure if k == failed_at else Result.LINKED_EVENT_FAILED
            if failure in _TRANSIENT and failed_at is not None:
                new_failed.append({"id": batch[failed_at].id, "result": str(failure)})
                st.failed[batch[failed_at].id] = str(failure)
            i = chain[-1] + 1
        if new_rows:
            _insert_transfers(conn, new_rows)
        for tid, status in status_updates.items():
            conn.execute(transfers.update().where(transfers.c.id == tid).values(pending_status=status))
        changed = [b.row for b in st.accounts.values() if b.dirty]
        if changed:
            _update_balances(conn, changed)
        if new_failed:
            conn.execute(failed_ids.insert(), new_failed)
        if new_rows or status_updates:
            append_audit(
                conn,
                "transfers",
                {
                    "transfers": [[r["id"], transfer_digest(r)] for r in new_rows],
                    "resolved": sorted(status_updates.items()),
                },
                now=now,
            )
        return [r if r is not None else Result.LINKED_EVENT_FAILED for r in results]

    def _one(
        self,
        st: _State,
        t: Transfer,
        now: float,
        new_rows: list[dict[str, Any]],
        status_updates: dict[str, str],
    ) -> Result:
        # plain ints: IntFlag arithmetic costs more than the rest of this check per transfer
        flags_i = int(t.flags) & ~_LINKED
        if not t.id:
            return Result.ID_MUST_NOT_BE_EMPTY
        if t.id in st.failed:
            return Result.ID_ALREADY_FAILED
        if t.id in st.existing:
            have = st.existing[t.id]
            want = t.to_dict()
            # a post or void may leave accounts, ledger, code and amount empty ("those of the pending
            # transfer"); the stored row holds the inherited values, so a retry compares only what it set
            resolves = bool(flags_i & (_POST | _VOID))
            for key, res in _COMPARED:
                if resolves and key in _INHERITED and not want[key]:
                    continue
                if key == "flags":
                    if int(have["flags"]) != int(t.flags):
                        return res
                elif have[key] != want[key]:
                    return res
            return Result.EXISTS
        if t.amount < 0:
            return Result.AMOUNT_MUST_NOT_BE_NEGATIVE
        two_phase = flags_i & (_POST | _VOID)
        if bin(flags_i & (_PENDING | _POST | _VOID)).count("1") > 1:
            return Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if two_phase:
            return self._resolve(st, t, TransferFlags(flags_i), now, new_rows, status_updates)
        if t.pending_id:
            return Result.PENDING_ID_MUST_NOT_BE_SET
        if t.amount == 0:
            return Result.AMOUNT_MUST_NOT_BE_ZERO
        if t.debit_account_id == t.credit_account_id:
            return Result.ACCOUNTS_MUST_BE_DIFFERENT
        dr, cr = st.accounts.get(t.debit_account_id), st.accounts.get(t.credit_account_id)
        if dr is None:
            return Result.DEBIT_ACCOUNT_NOT_FOUND
        if cr is None:
            return Result.CREDIT_ACCOUNT_NOT_FOUND
        if dr.row["ledger"] != cr.row["ledger"]:
            return Result.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if t.ledger != dr.row["ledger"]:
            return Result.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
        pending = bool(flags_i & _PENDING)
        d, c = dr.row, cr.row
        if d["flags"] & _DEBITS_LIMITED and (
            d["debits_pending"] + d["debits_posted"] + t.amount > d["credits_posted"]
        ):
            return Result.EXCEEDS_CREDITS
        if c["flags"] & _CREDITS_LIMITED and (
            c["credits_pending"] + c["credits_posted"] + t.amount > c["debits_posted"]
        ):
            return Result.EXCEEDS_DEBITS
        if pending:
            d["debits_pending"] += t.amount
            c["credits_pending"] += t.amount
        else:
            d["debits_posted"] += t.amount
            c["credits_posted"] += t.amount
        dr.dirty = cr.dirty = True
        row = {
            **t.to_dict(),
            "flags": int(t.flags),
            "created_at": now,
            "pending_status": "pending" if pending else "",
        }
        new_rows.append(row)
        st.existing[t.id] = row
        if pending:
            st.pendings[t.id] = _Pending(row, "pending")
        return Result.CREATED

    def _resolve(
        self,
        st: _State,
        t: Transfer,
        flags: TransferFlags,
        now: float,
        new_rows: list[dict[str, Any]],
        status_updates: dict[str, str],
    ) -> Result:
        if not t.pending_id:
            return Result.PENDING_ID_MUST_BE_SET
        p = st.pendings.get(t.pending_id)
        if p is None:
            return Result.PENDING_TRANSFER_NOT_FOUND
        if p.status == "posted":
            return Result.PENDING_TRANSFER_ALREADY_POSTED
        if p.status == "voided":
            return Result.PENDING_TRANSFER_ALREADY_VOIDED
        if p.status == "expired":
            return Result.PENDING_TRANSFER_EXPIRED
        if p.status != "pending":
            return Result.PENDING_TRANSFER_NOT_PENDING
        pt = p.transfer
        if pt["timeout_s"] and now > pt["created_at"] + pt["timeout_s"]:
            return Result.PENDING_TRANSFER_EXPIRED
        full = pt["amount"]
        amount = t.amount or full  # 0 means "the full pending amount"
        if amount > full:
            return Result.EXCEEDS_PENDING_TRANSFER_AMOUNT
        if flags & TransferFlags.VOID_PENDING and t.amount not in (0, full):
            return Result.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        d = st.accounts[pt["debit_account_id"]].row
        c = st.accounts[pt["credit_account_id"]].row
        d["debits_pending"] -= full
        c["credits_pending"] -= full
        posted = bool(flags & TransferFlags.POST_PENDING)
        if posted:
            d["debits_posted"] += amount
            c["credits_posted"] += amount
        st.accounts[pt["debit_account_id"]].dirty = st.accounts[pt["credit_account_id"]].dirty = True
        p.status = "posted" if posted else "voided"
        status_updates[t.pending_id] = p.status
        row = {
            **t.to_dict(),
            "debit_account_id": pt["debit_account_id"],
            "credit_account_id": pt["credit_account_id"],
            "ledger": pt["ledger"],
            "amount": amount if posted else full,
            "flags": int(t.flags),
            "created_at": now,
            "pending_status": "",
        }
        new_rows.append(row)
        st.existing[t.id] = row
        return Result.CREATED

    def expire_pending(self) -> int:
        """Void (as ``expired``) every pending transfer whose timeout passed; returns how many."""
        now = self._clock()
        with self.engine.begin() as conn:
            due = conn.execute(EXPIRY_CANDIDATES, {"now": now}).all()
            if not due:
                return 0
            st = self._load(conn, [Transfer(id=f"expire:{r.id}", debit_account_id="", credit_account_id="",
                                             amount=0, ledger="", pending_id=r.id) for r in due])  # fmt: skip
            for tid, p in st.pendings.items():
                if p.status != "pending":
                    continue
                pt = p.transfer
                st.accounts[pt["debit_account_id"]].row["debits_pending"] -= pt["amount"]
                st.accounts[pt["credit_account_id"]].row["credits_pending"] -= pt["amount"]
                for key in (pt["debit_account_id"], pt["credit_account_id"]):
                    r = st.accounts[key].row
                    conn.execute(
                        accounts.update()
                        .where(accounts.c.id == key)
                        .values(debits_pending=r["debits_pending"], credits_pending=r["credits_pending"])
                    )
                conn.execute(transfers.update().where(transfers.c.id == tid).values(pending_status="expired"))
            append_audit(conn, "expired", {"expired": sorted(st.pendings)}, now=now)
            return len(st.pendings)

    # ------------------------------------------------------------------ invariants
    def check_invariants(self) -> list[str]:
        """Every problem found: per ledger balances sum to zero; every balance equals its transfers."""
        problems: list[str] = []
        with self.engine.connect() as conn:
            rows = {r.id: dict(r._mapping) for r in conn.execute(sa.select(accounts))}
            expect = {
                k: {"debits_pending": 0, "debits_posted": 0, "credits_pending": 0, "credits_posted": 0}
                for k in rows
            }
            for t in conn.execute(sa.select(transfers)):
                f = TransferFlags(t.flags)
                if f & TransferFlags.PENDING:
                    if t.pending_status == "pending":
                        expect[t.debit_account_id]["debits_pending"] += t.amount
                        expect[t.credit_account_id]["credits_pending"] += t.amount
                elif f & TransferFlags.VOID_PENDING:
                    continue
                else:  # plain or POST_PENDING
                    expect[t.debit_account_id]["debits_posted"] += t.amount
                    expect[t.credit_account_id]["credits_posted"] += t.amount
        totals: dict[str, int] = {}
        for aid, row in rows.items():
            for key, value in expect[aid].items():
                if row[key] != value:
                    problems.append(f"account {aid}: {key} is {row[key]}, its transfers say {value}")
            totals[row["ledger"]] = (
                totals.get(row["ledger"], 0) + row["debits_posted"] - row["credits_posted"]
            )
            if row["flags"] & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS and (
                row["debits_posted"] + row["debits_pending"] > row["credits_posted"]
            ):
                problems.append(f"account {aid}: overdrawn although debits must not exceed credits")
        for ledger, total in sorted(totals.items()):
            if total != 0:
                problems.append(f"ledger {ledger}: posted debits and credits differ by {total}")
        return problems


def new_transfers(items: Iterable[dict[str, Any]]) -> list[Transfer]:
    """Transfers from JSON objects (management API, CLI); names every invalid field."""
    out = []
    problems = []
    for n, item in enumerate(items):
        try:
            out.append(
                Transfer(
                    id=str(item["id"]),
                    debit_account_id=str(item.get("debit_account_id", "")),
                    credit_account_id=str(item.get("credit_account_id", "")),
                    amount=int(item.get("amount", 0)),
                    ledger=str(item.get("ledger", "")),
                    code=int(item.get("code", 0)),
                    flags=TransferFlags(int(item.get("flags", 0))),
                    pending_id=item.get("pending_id"),
                    timeout_s=int(item.get("timeout_s", 0)),
                    user_data=str(item.get("user_data", "")),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"[{n}]: {exc.__class__.__name__}: {exc}")
    if problems:
        raise ValidationError("invalid transfers", errors=problems)
    return out
