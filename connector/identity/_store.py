"""Identity tables: the token replay store shared by all replicas, and the partner directory."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.errors import NotFoundError, TokenError, ValidationError
from connector.store import is_postgres, metadata, pg_autocommit, read_only, run, write_tx

log = logging.getLogger("dadam.identity")

__all__ = [
    "MemoryReplayStore",
    "PartnerDirectory",
    "ReplayClaim",
    "ReplayStore",
    "SqlReplayStore",
    "partners_table",
    "token_replay_table",
]

token_replay_table = sa.Table(
    "dsp_token_replay",
    metadata,
    sa.Column("token_key", sa.String(512), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
)

partners_table = sa.Table(
    "partners",
    metadata,
    sa.Column("did", sa.String(512), primary_key=True),
    sa.Column("claims", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


class ReplayStore(Protocol):
    """Remembers token ids until they expire; ``add`` is False when the id was seen before."""

    def add(self, issuer: str, jti: str, expires_at: int) -> bool: ...


def replay_key(issuer: str, jti: str) -> str:
    """The stored key of a token id."""
    return f"{issuer}|{jti}"[:512]


class ReplayClaim:
    """A verified token whose id is not in the replay store yet: whoever serves the request
    records it before acting on it, with :meth:`record` or, where the store's table can be
    written in a statement the request makes anyway, with that statement and then
    :meth:`settle` (decision 0409). Until then the token counts as unused."""

    __slots__ = ("expires_at", "issuer", "jti", "recorded", "store")

    def __init__(self, store: ReplayStore, issuer: str, jti: str, expires_at: int) -> None:
        self.store = store
        self.issuer = issuer
        self.jti = jti
        self.expires_at = expires_at
        self.recorded = False

    @property
    def key(self) -> str:
        return replay_key(self.issuer, self.jti)

    def record(self) -> None:
        """Add the id to the store (once); TokenError if it was there: a replay."""
        if not self.recorded:
            self.settle(self.store.add(self.issuer, self.jti, self.expires_at))

    def settle(self, fresh: bool) -> None:
        """The id was added by another statement (``fresh``: it was new there)."""
        self.recorded = True
        if isinstance(self.store, SqlReplayStore):
            self.store.added_elsewhere()
        if not fresh:
            raise TokenError(f"token {self.jti} was already used (replay)")

    def table_for(self, engine: Engine) -> sa.Table | None:
        """The replay table, when the id can be inserted into it on ``engine`` by a statement of
        the request's own (the store keeps its ids in that database); else None."""
        if isinstance(self.store, SqlReplayStore) and self.store.engine is engine and not self.recorded:
            return token_replay_table
        return None


class MemoryReplayStore:
    """Process-local replay store (tests and single-process use)."""

    #: entries kept before expired ones are dropped
    PRUNE_AT = 10_000

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._prune_at = self.PRUNE_AT

    def add(self, issuer: str, jti: str, expires_at: int) -> bool:
        now = int(time.time())
        key = f"{issuer}|{jti}"
        with self._lock:
            if len(self._seen) > self._prune_at:
                self._seen = {k: v for k, v in self._seen.items() if v >= now}
                # unexpired entries must stay: if most are, prune again only when the map has
                # doubled, so each add costs O(1) amortised (it was O(n) once past the mark)
                self._prune_at = max(self.PRUNE_AT, 2 * len(self._seen))
            if key in self._seen and self._seen[key] >= now:
                return False
            self._seen[key] = expires_at
            return True


#: one per received DSP message: prebuilt for connector.store.run (decision 0406)
_REPLAY_ADD = token_replay_table.insert()


class SqlReplayStore:
    """Replay store in the database: N replicas sharing PostgreSQL reject a token used on any of them."""

    def __init__(self, engine: Engine, *, prune_every: int = 500) -> None:
        self._engine = engine
        self._prune_every = prune_every
        self._count = 0
        self._pruning = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self._engine

    def added_elsewhere(self) -> None:
        """An id was added by a statement of the caller's (:class:`ReplayClaim`): count it for
        the pruning of expired ids. Called after that statement's commit, maybe while a write
        transaction is still open (SQLite's group commit runs commit callbacks under its lock):
        the pruning then runs in a thread of its own."""
        self._count += 1
        if self._count % self._prune_every == 0 and self._pruning.acquire(blocking=False):
            threading.Thread(target=self._prune_in_background, name="dadam-replay-prune", daemon=True).start()

    def _prune_in_background(self) -> None:
        try:
            with write_tx(self._engine) as conn:
                conn.execute(
                    token_replay_table.delete().where(token_replay_table.c.expires_at < int(time.time()))
                )
        except Exception:  # the next one tries again; nothing depends on it but the table's size
            log.exception("pruning expired token ids failed")
        finally:
            self._pruning.release()

    def add(self, issuer: str, jti: str, expires_at: int) -> bool:
        key = replay_key(issuer, jti)
        self._count += 1
        # PostgreSQL: autocommit, one round trip per statement and no BEGIN or COMMIT (this runs
        # for every DSP message received). SQLite: the process's group-committed writer.
        tx = pg_autocommit(self._engine) if is_postgres(self._engine) else write_tx(self._engine)
        try:
            with tx as conn:
                if self._count % self._prune_every == 0:
                    conn.execute(
                        token_replay_table.delete().where(token_replay_table.c.expires_at < int(time.time()))
                    )
                run(conn, _REPLAY_ADD, {"token_key": key, "expires_at": expires_at})
        except sa.exc.IntegrityError:
            return False
        return True


_CLAIM_LISTS = ("memberships", "framework_agreements", "credentials", "bpn_groups", "groups")
_CLAIM_STRINGS = ("bpn", "region", "name", "purpose")


def _check_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    problems = []
    out: dict[str, Any] = {}
    for key, value in claims.items():
        if key in _CLAIM_LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{key}: must be a list of strings")
            else:
                out[key] = sorted(set(value))
        elif key in _CLAIM_STRINGS:
            if not isinstance(value, str):
                problems.append(f"{key}: must be a string")
            else:
                out[key] = value
        else:
            problems.append(f"{key}: unknown claim (known: {', '.join(_CLAIM_STRINGS + _CLAIM_LISTS)})")
    if problems:
        raise ValidationError("invalid partner claims", errors=problems)
    return out


class PartnerDirectory:
    """What this operator has verified about partners, by DID (BPNL, memberships, agreements ...).

    The claims are attached to every authenticated DSP caller and are what access and usage
    policies are evaluated against. Unknown DIDs have no claims (so constrained policies deny).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            if self._cache is None:
                with read_only(self._engine) as conn:
                    rows = conn.execute(sa.select(partners_table.c.did, partners_table.c.claims)).all()
                self._cache = {r.did: json.loads(r.claims) for r in rows}
            return self._cache

    def claims_for(self, did: str) -> dict[str, Any]:
        return dict(self._load().get(did, {}))

    def put(self, did: str, claims: Mapping[str, Any]) -> dict[str, Any]:
        checked = _check_claims(claims)
        if not did.startswith("did:"):
            raise ValidationError("invalid partner", errors=[f"did: not a DID: {did!r}"])
        now = datetime.now(UTC)
        with self._engine.begin() as conn:
            updated = conn.execute(
                partners_table.update()
                .where(partners_table.c.did == did)
                .values(claims=json.dumps(checked), updated_at=now)
            ).rowcount
            if not updated:
                conn.execute(
                    partners_table.insert().values(did=did, claims=json.dumps(checked), updated_at=now)
                )
        with self._lock:
            self._cache = None
        return checked

    def delete(self, did: str) -> None:
        with self._engine.begin() as conn:
            if not conn.execute(partners_table.delete().where(partners_table.c.did == did)).rowcount:
                raise NotFoundError(f"no partner {did}")
        with self._lock:
            self._cache = None

    def all(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._load().items()}
