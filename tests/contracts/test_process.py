"""The durable process framework: outbox delivery order, retries, final failure, leases, timeouts, dedupe."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from connector.errors import StoreError
from contracts._process import (
    AckTransition,
    Delivery,
    HttpSender,
    OutboxMessage,
    PollingThread,
    RetryPolicy,
    StaleWrite,
    StateWrite,
    Worker,
    body_digest,
    enqueue,
    enqueue_claimed,
    inbox,
    lock_process,
    outbox,
    pending_outbox,
    process_table,
    record_received,
    save_guarded,
    save_state,
)

META = sa.MetaData()
TOY = process_table("toy_process", sa.Column("note", sa.Text, nullable=True), meta=META)
SENDING, SENT, FAILED, TIMED_OUT = 1, 2, 3, 4


class ToyHandler:
    kind = "toy"
    table = TOY
    terminal_states = frozenset({FAILED, TIMED_OUT})

    def on_delivered(
        self, conn: Connection, process: Mapping[Any, Any], message: OutboxMessage, delivery: Delivery
    ) -> None:
        save_state(conn, TOY, process["id"], SENT, timeout_s=60, note=f"acked {message.message_type}")

    def on_failed(
        self, conn: Connection, process: Mapping[Any, Any], message: OutboxMessage, reason: str
    ) -> None:
        save_state(conn, TOY, process["id"], FAILED, timeout_s=None, error_detail=reason)

    def on_timeout(self, conn: Connection, process: Mapping[Any, Any]) -> None:
        save_state(conn, TOY, process["id"], TIMED_OUT, timeout_s=None, error_detail="timed out")


@pytest.fixture
def toy_engine(engine: sa.Engine) -> sa.Engine:
    META.create_all(engine)
    return engine


def _new(conn: Connection, pid: str, *, timeout_s: float = 60) -> None:
    now = time.time()
    conn.execute(
        sa.insert(TOY).values(
            id=pid,
            state=SENDING,
            state_since=now,
            deadline=now + timeout_s,
            pending=False,
            version=0,
            created_at=now,
            updated_at=now,
        )
    )


def _worker(
    engine: sa.Engine, handler: Any, responses: list[int], seen: list[dict[str, Any]], **kw: Any
) -> Worker:
    def reply(request: httpx.Request) -> httpx.Response:
        import json

        seen.append({"url": str(request.url), "body": json.loads(request.content)})
        status = responses.pop(0) if responses else 200
        return httpx.Response(status, json={"ok": status})

    client = httpx.Client(transport=httpx.MockTransport(reply))
    return Worker(engine, [handler], HttpSender(client), retry=RetryPolicy(limit=3, base_s=0.0), **kw)


def _state(engine: sa.Engine, pid: str) -> Mapping[Any, Any]:
    with engine.connect() as conn:
        return conn.execute(sa.select(TOY).where(TOY.c.id == pid)).mappings().one()


def test_messages_of_one_process_go_out_in_order_and_ack_changes_state(toy_engine: sa.Engine) -> None:
    seen: list[dict[str, Any]] = []
    with toy_engine.begin() as conn:
        _new(conn, "p1")
        enqueue(conn, "toy", "p1", "http://peer/a", {"@type": "First"})
        enqueue(conn, "toy", "p1", "http://peer/b", {"@type": "Second"})
    w = _worker(toy_engine, ToyHandler(), [], seen)
    assert w.run_once() == 1  # the second waits until the first is delivered
    assert w.run_once() == 1
    assert [s["url"] for s in seen] == ["http://peer/a", "http://peer/b"]
    assert all(s["body"]["@id"] for s in seen)
    row = _state(toy_engine, "p1")
    assert row["state"] == SENT and row["note"] == "acked Second"


def test_a_claimed_message_is_leased_only_when_nothing_older_is_pending(toy_engine: sa.Engine) -> None:
    """enqueue_claimed leases the new row to the worker (sent right after commit) only when no
    older message of the same process waits; sequence numbers count up per process."""
    w = _worker(toy_engine, ToyHandler(), [], [])
    with toy_engine.begin() as conn:
        _new(conn, "p10")
        _new(conn, "p11")
        first = enqueue_claimed(conn, w, "toy", "p10", "http://peer/a", {"@type": "First"})
        second = enqueue_claimed(conn, w, "toy", "p10", "http://peer/b", {"@type": "Second"})
        other = enqueue_claimed(conn, w, "toy", "p11", "http://peer/c", {"@type": "Other"})
    assert first is not None and first.body["@id"] == first.id and first.message_type == "First"
    assert second is None  # left to the normal claim: the first must go out before it
    assert other is not None  # another process's queue is independent
    with toy_engine.connect() as conn:
        rows = conn.execute(
            sa.select(outbox.c.process_id, outbox.c.seq, outbox.c.lease_owner, outbox.c.message_type)
            .where(outbox.c.process_id.in_(["p10", "p11"]))
            .order_by(outbox.c.process_id, outbox.c.seq)
        ).all()
    assert [(r.process_id, r.seq, r.lease_owner is not None, r.message_type) for r in rows] == [
        ("p10", 1, True, "First"),
        ("p10", 2, False, "Second"),
        ("p11", 1, True, "Other"),
    ]


def test_5xx_is_retried_then_delivered(toy_engine: sa.Engine) -> None:
    seen: list[dict[str, Any]] = []
    with toy_engine.begin() as conn:
        _new(conn, "p2")
        enqueue(conn, "toy", "p2", "http://peer/x", {"@type": "M"})
    w = _worker(toy_engine, ToyHandler(), [503, 502], seen)
    for _ in range(3):
        w.run_once()
    assert len(seen) == 3
    assert len({s["body"]["@id"] for s in seen}) == 1, "a resend keeps the message id"
    assert _state(toy_engine, "p2")["state"] == SENT


def test_retries_exhausted_fail_with_reason(toy_engine: sa.Engine) -> None:
    seen: list[dict[str, Any]] = []
    with toy_engine.begin() as conn:
        _new(conn, "p3")
        enqueue(conn, "toy", "p3", "http://peer/x", {"@type": "M"})
        enqueue(conn, "toy", "p3", "http://peer/y", {"@type": "N"})
    w = _worker(toy_engine, ToyHandler(), [503, 503, 503, 503], seen)
    for _ in range(5):
        w.run_once()
    row = _state(toy_engine, "p3")
    assert row["state"] == FAILED
    assert "gave up after 3 attempts" in row["error_detail"] and "503" in row["error_detail"]
    assert [s["url"] for s in seen] == ["http://peer/x"] * 3, "later messages are cancelled, not sent"
    with toy_engine.connect() as conn:
        assert pending_outbox(conn, "toy", "p3") == []


def test_4xx_fails_at_once(toy_engine: sa.Engine) -> None:
    seen: list[dict[str, Any]] = []
    with toy_engine.begin() as conn:
        _new(conn, "p4")
        enqueue(conn, "toy", "p4", "http://peer/x", {"@type": "M"})
    w = _worker(toy_engine, ToyHandler(), [400], seen)
    w.run_once()
    row = _state(toy_engine, "p4")
    assert row["state"] == FAILED and "rejected M with 400" in row["error_detail"]


def test_unreachable_peer_is_retried_then_fails(toy_engine: sa.Engine) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with toy_engine.begin() as conn:
        _new(conn, "p5")
        enqueue(conn, "toy", "p5", "http://peer/x", {"@type": "M"})
    w = Worker(
        toy_engine,
        [ToyHandler()],
        HttpSender(httpx.Client(transport=httpx.MockTransport(boom))),
        retry=RetryPolicy(limit=2, base_s=0.0),
    )
    w.run_once()
    w.run_once()
    row = _state(toy_engine, "p5")
    assert row["state"] == FAILED and "cannot reach" in row["error_detail"]


def test_expired_lease_is_taken_over(toy_engine: sa.Engine) -> None:
    seen: list[dict[str, Any]] = []
    with toy_engine.begin() as conn:
        _new(conn, "p6")
        enqueue(conn, "toy", "p6", "http://peer/x", {"@type": "M"})
        # A worker that died holding the lease.
        conn.execute(sa.update(outbox).values(lease_owner="dead", lease_until=time.time() + 0.2))
    w = _worker(toy_engine, ToyHandler(), [], seen)
    assert w.run_once() == 0, "a live lease is respected"
    time.sleep(0.25)
    assert w.run_once() == 1
    assert _state(toy_engine, "p6")["state"] == SENT


def test_a_delivery_counts_only_while_the_message_is_still_ours(toy_engine: sa.Engine) -> None:
    with toy_engine.begin() as conn:
        _new(conn, "p9")
        enqueue(conn, "toy", "p9", "http://peer/x", {"@type": "M"})
    w = _worker(toy_engine, ToyHandler(), [], [])
    [msg] = w._claim()
    with toy_engine.begin() as conn:  # our lease expired meanwhile and another worker took the row
        conn.execute(sa.update(outbox).values(lease_owner="other", lease_until=time.time() + 30))
    w._record(msg, Delivery(True, 200, False, "ok"))

    def outbox_row() -> Any:
        with toy_engine.connect() as conn:
            return conn.execute(
                sa.select(outbox.c.status, outbox.c.attempts, outbox.c.lease_owner, outbox.c.sent_at)
            ).one()

    row = outbox_row()
    assert (row.status, row.attempts, row.lease_owner, row.sent_at) == ("pending", 0, "other", None)
    assert _state(toy_engine, "p9")["state"] == SENDING, "the other worker's outcome counts"
    with toy_engine.begin() as conn:  # ours again
        conn.execute(sa.update(outbox).values(lease_owner=w.owner))
    w._record(msg, Delivery(True, 200, False, "ok"))
    row = outbox_row()
    assert (row.status, row.attempts, row.lease_owner) == ("sent", 1, None)
    assert row.sent_at is not None
    assert _state(toy_engine, "p9")["state"] == SENT


def test_a_message_queued_behind_an_older_one_leaves_once_that_one_is_recorded(toy_engine: sa.Engine) -> None:
    seen: list[dict[str, Any]] = []
    w = _worker(toy_engine, ToyHandler(), [], seen, poll_s=30.0)
    w.start()
    try:
        time.sleep(0.2)  # the first (idle) poll is over; the next one is 30 s away
        with toy_engine.begin() as conn:
            _new(conn, "p10")
            first = enqueue_claimed(conn, w, "toy", "p10", "http://peer/a", {"@type": "A"})
            second = enqueue_claimed(conn, w, "toy", "p10", "http://peer/b", {"@type": "B"})
        assert first is not None
        assert second is None, "left to the claim: the older message is still pending"
        w.dispatch([first])
        deadline = time.time() + 5
        while len(seen) < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert [s["url"] for s in seen] == ["http://peer/a", "http://peer/b"], "not at the next poll"
    finally:
        w.stop()


class AckHandler(ToyHandler):
    """ToyHandler that records which path recorded a delivery."""

    def __init__(self) -> None:
        self.acked_rows: list[Mapping[Any, Any]] = []
        self.delivered: list[str] = []

    def on_delivered(
        self, conn: Connection, process: Mapping[Any, Any], message: OutboxMessage, delivery: Delivery
    ) -> None:
        self.delivered.append(message.id)
        super().on_delivered(conn, process, message, delivery)

    def after_ack(self, row: Mapping[Any, Any]) -> None:
        self.acked_rows.append(row)


def _claimed_with_ack(
    engine: sa.Engine, w: Worker, pid: str, fill: tuple[str, str] | None = None
) -> OutboxMessage:
    with engine.begin() as conn:
        _new(conn, pid)
        msg = enqueue_claimed(
            conn,
            w,
            "toy",
            pid,
            "http://peer/x",
            {"@type": "M"},
            on_ack=AckTransition(TOY, version=0, state=SENT, timeout_s=60.0, fill=fill),
        )
    assert msg is not None and msg.on_ack is not None
    return msg


def _outbox_of(engine: sa.Engine, pid: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(outbox.c.status, outbox.c.attempts, outbox.c.lease_owner, outbox.c.sent_at).where(
                outbox.c.process_id == pid
            )
        ).one()


def test_an_ack_transition_records_the_delivery_without_the_locking_path(
    toy_engine: sa.Engine, tmp_path: Any
) -> None:
    """A message enqueued with an AckTransition: its 2xx moves the process to the state decided
    at enqueue time, without on_delivered. On PostgreSQL that is one statement (one round trip,
    no BEGIN/COMMIT)."""
    handler = AckHandler()
    w = _worker(toy_engine, handler, [], [])
    msg = _claimed_with_ack(toy_engine, w, "a1")
    pg = toy_engine.dialect.name == "postgresql"
    if pg:
        with toy_engine.connect() as conn:
            raw: Any = conn.connection.dbapi_connection
        trace = tmp_path / "libpq.trace"
        with trace.open("w") as f:
            raw.pgconn.trace(f.fileno())
            w._record(msg, Delivery(True, 200, False, "ok"))
            raw.pgconn.untrace()
        sent = [line.split("\t")[3] for line in trace.read_text().splitlines() if "\tF\t" in line]
        assert sent.count("Sync") + sent.count("Query") == 1, sent
    else:
        w._record(msg, Delivery(True, 200, False, "ok"))
    assert handler.delivered == [] and [r["id"] for r in handler.acked_rows] == ["a1"]
    assert handler.acked_rows[0]["state"] == SENT and handler.acked_rows[0]["version"] == 1
    row = _state(toy_engine, "a1")
    assert (row["state"], row["version"]) == (SENT, 1)
    assert row["deadline"] == pytest.approx(time.time() + 60, abs=5)
    out = _outbox_of(toy_engine, "a1")
    assert (out.status, out.attempts, out.lease_owner) == ("sent", 1, None) and out.sent_at is not None


def test_an_ack_transition_is_not_applied_to_a_row_that_changed(toy_engine: sa.Engine) -> None:
    """Something changed the process after the message was enqueued (another message arrived,
    an operator terminated it): the precomputed state no longer holds, on_delivered decides."""
    handler = AckHandler()
    w = _worker(toy_engine, handler, [], [])
    msg = _claimed_with_ack(toy_engine, w, "a2")
    with toy_engine.begin() as conn:
        lock_process(conn, TOY, "a2")
        save_state(conn, TOY, "a2", FAILED, timeout_s=None, error_detail="terminated meanwhile")
    w._record(msg, Delivery(True, 200, False, "ok"))
    assert handler.acked_rows == [] and handler.delivered == [msg.id]
    assert _outbox_of(toy_engine, "a2").status == "sent"


def test_an_ack_transition_counts_only_while_the_message_is_still_ours(toy_engine: sa.Engine) -> None:
    handler = AckHandler()
    w = _worker(toy_engine, handler, [], [])
    msg = _claimed_with_ack(toy_engine, w, "a3")
    with toy_engine.begin() as conn:  # our lease expired and another worker took the row
        conn.execute(sa.update(outbox).values(lease_owner="other", lease_until=time.time() + 30))
    w._record(msg, Delivery(True, 200, False, "ok"))
    assert handler.acked_rows == [] and handler.delivered == []
    out = _outbox_of(toy_engine, "a3")
    assert (out.status, out.attempts, out.lease_owner) == ("pending", 0, "other")
    row = _state(toy_engine, "a3")
    assert (row["state"], row["version"]) == (SENDING, 0), "the other worker's outcome counts"


def test_an_ack_transition_fills_a_column_from_the_ack_body(toy_engine: sa.Engine) -> None:
    handler = AckHandler()
    w = _worker(toy_engine, handler, [], [])
    msg = _claimed_with_ack(toy_engine, w, "a4", fill=("note", "peerPid"))
    w._record(msg, Delivery(True, 200, False, "ok", response_json={"peerPid": "urn:peer:1"}))
    row = _state(toy_engine, "a4")
    assert row["state"] == SENT
    assert row["note"] == "urn:peer:1" and handler.delivered == []
    # no such string in the ACK: on_delivered decides (here: the toy's own note)
    msg = _claimed_with_ack(toy_engine, w, "a5", fill=("note", "peerPid"))
    w._record(msg, Delivery(True, 200, False, "ok", response_json={"other": 1}))
    assert handler.delivered[-1] == msg.id and _state(toy_engine, "a5")["note"] == "acked M"


def test_a_failed_delivery_ignores_the_ack_transition(toy_engine: sa.Engine) -> None:
    handler = AckHandler()
    w = _worker(toy_engine, handler, [], [])
    msg = _claimed_with_ack(toy_engine, w, "a6")
    w._record(msg, Delivery(False, 400, False, "HTTP 400: no"))
    assert handler.acked_rows == []
    row = _state(toy_engine, "a6")
    assert row["state"] == FAILED and "400" in row["error_detail"]


def test_a_state_change_is_stored_with_its_message(toy_engine: sa.Engine) -> None:
    """enqueue_claimed(state=...) stores the process's new state and the message together (one
    statement on PostgreSQL); a process row that is gone adds no message and says so."""
    w = _worker(toy_engine, ToyHandler(), [], [])
    with toy_engine.begin() as conn:
        _new(conn, "s1")
        lock_process(conn, TOY, "s1")
        msg = enqueue_claimed(
            conn,
            w,
            "toy",
            "s1",
            "http://peer/x",
            {"@type": "M"},
            state=StateWrite(TOY, "s1", {"state": SENT, "timeout_s": None, "note": "with the message"}),
        )
    assert msg is not None
    row = _state(toy_engine, "s1")
    assert (row["state"], row["version"], row["note"], row["deadline"]) == (SENT, 1, "with the message", None)
    assert _outbox_of(toy_engine, "s1").status == "pending"
    with pytest.raises(StoreError, match="vanished"), toy_engine.begin() as conn:
        enqueue_claimed(
            conn,
            w,
            "toy",
            "gone",
            "http://peer/x",
            {"@type": "M"},
            state=StateWrite(TOY, "gone", {"state": SENT, "timeout_s": 60.0}),
        )
    with toy_engine.connect() as conn:
        assert conn.execute(sa.select(outbox.c.id).where(outbox.c.process_id == "gone")).all() == []


@pytest.mark.postgres
def test_an_optimistic_write_applies_only_to_the_version_read_and_a_new_message(pg_url: str) -> None:
    """The optimistic receive (PostgreSQL) writes once: the state, the received message's id
    and the reply, only if the row still has the version it read and the id is new; otherwise
    nothing at all is written (StaleWrite) and the locking path takes over."""
    from connector.store import autocommit_tx, create_engine, migrate

    engine = create_engine(pg_url)
    try:
        migrate(engine)
        META.create_all(engine)
        w = _worker(engine, ToyHandler(), [], [])
        with engine.begin() as conn:
            _new(conn, "o1")

        def guarded(version: int, mid: str, note: str) -> StateWrite:
            return StateWrite(
                TOY,
                "o1",
                {"state": SENT, "timeout_s": 60.0, "note": note},
                expect_version=version,
                received=("toy", mid, "digest-" + mid),
            )

        def snapshot() -> tuple[Any, ...]:
            with engine.connect() as conn:
                row = conn.execute(sa.select(TOY.c.state, TOY.c.version, TOY.c.note)).one()
                ids = conn.execute(sa.select(inbox.c.message_id).order_by(inbox.c.message_id)).scalars().all()
                sent = conn.execute(sa.select(outbox.c.message_type).order_by(outbox.c.seq)).scalars().all()
            return tuple(row), ids, sent

        with autocommit_tx(engine) as conn:
            msg = enqueue_claimed(
                conn, w, "toy", "o1", "http://peer/x", {"@type": "Reply"}, state=guarded(0, "m1", "one")
            )
        assert msg is not None
        assert snapshot() == ((SENT, 1, "one"), ["m1"], ["Reply"])
        # the version read is stale: nothing is written
        with pytest.raises(StaleWrite), autocommit_tx(engine) as conn:
            enqueue_claimed(
                conn, w, "toy", "o1", "http://peer/x", {"@type": "Late"}, state=guarded(0, "m2", "two")
            )
        assert snapshot() == ((SENT, 1, "one"), ["m1"], ["Reply"])
        # the message id was recorded before (a resend): nothing is written
        with pytest.raises(StaleWrite), autocommit_tx(engine) as conn:
            save_guarded(conn, guarded(1, "m1", "again"))
        assert snapshot() == ((SENT, 1, "one"), ["m1"], ["Reply"])
        # right version, new id, no reply: state and id only
        with autocommit_tx(engine) as conn:
            save_guarded(conn, guarded(1, "m3", "three"))
        assert snapshot() == ((SENT, 2, "three"), ["m1", "m3"], ["Reply"])
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_an_optimistic_write_with_a_token_id_records_it_only_when_it_applies(pg_url: str) -> None:
    """With ``StateWrite.token`` the same statement adds the caller's token id to the replay
    table: only if the row has the version read and the message id is new, and the write
    applies only if the token id was new (a replay). Otherwise nothing at all is written, so
    the locking path can tell a replay from a resend or a late message (decision 0411)."""
    from connector.identity import ReplayClaim, SqlReplayStore
    from connector.identity._store import replay_key, token_replay_table
    from connector.store import autocommit_tx, create_engine, migrate

    engine = create_engine(pg_url)
    try:
        migrate(engine)
        META.create_all(engine)
        store = SqlReplayStore(engine)
        with engine.begin() as conn:
            _new(conn, "t1")
        expires = int(time.time()) + 300

        def guarded(version: int, mid: str, jti: str) -> tuple[StateWrite, ReplayClaim]:
            claim = ReplayClaim(store, "did:web:peer", jti, expires)
            state = StateWrite(
                TOY,
                "t1",
                {"state": SENT, "timeout_s": 60.0, "note": mid},
                expect_version=version,
                received=("toy", mid, "digest-" + mid),
                token=(token_replay_table, claim),
            )
            return state, claim

        def snapshot() -> tuple[Any, ...]:
            with engine.connect() as conn:
                row = conn.execute(sa.select(TOY.c.version, TOY.c.note).where(TOY.c.id == "t1")).one()
                ids = conn.execute(sa.select(inbox.c.message_id).order_by(inbox.c.message_id)).scalars().all()
                tokens = conn.execute(sa.select(token_replay_table.c.token_key)).scalars().all()
            return tuple(row), ids, sorted(tokens)

        def key(jti: str) -> str:
            return replay_key("did:web:peer", jti)

        state, claim = guarded(0, "m1", "a")
        with autocommit_tx(engine) as conn:
            save_guarded(conn, state)
        assert claim.recorded
        assert snapshot() == ((1, "m1"), ["m1"], [key("a")])
        # a spent token id on a new message at the right version: nothing, the id not taken
        state, claim = guarded(1, "m2", "a")
        with pytest.raises(StaleWrite), autocommit_tx(engine) as conn:
            save_guarded(conn, state)
        assert not claim.recorded and snapshot() == ((1, "m1"), ["m1"], [key("a")])
        # a message id seen before, with a fresh token: nothing, the token not spent
        state, claim = guarded(1, "m1", "b")
        with pytest.raises(StaleWrite), autocommit_tx(engine) as conn:
            save_guarded(conn, state)
        assert not claim.recorded and snapshot() == ((1, "m1"), ["m1"], [key("a")])
        # a stale version, with a fresh token: nothing, the token not spent
        state, claim = guarded(0, "m3", "c")
        with pytest.raises(StaleWrite), autocommit_tx(engine) as conn:
            save_guarded(conn, state)
        assert not claim.recorded and snapshot() == ((1, "m1"), ["m1"], [key("a")])
        # all right: state, message id and token id together
        state, claim = guarded(1, "m2", "d")
        with autocommit_tx(engine) as conn:
            save_guarded(conn, state)
        assert claim.recorded and snapshot() == ((2, "m2"), ["m1", "m2"], [key("a"), key("d")])
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_new_rows_write_with_a_token_id_reports_the_id_it_added_even_when_a_copy_won(pg_url: str) -> None:
    """A new row's guarded INSERT with ``StateWrite.token`` (the provider's initial request,
    decision 0413) adds the token id first and the row only if the id was new. A new row has
    no lock: two copies of one message (the same message id, two tokens) can run at once, and
    the second then adds its token id but, once the first commits, not the row. The statement
    says so, and the id is settled as spent by that request, so the locking path answers it as
    a resend instead of refusing it as a replay. A spent id writes nothing and is not settled."""
    import threading

    from connector.identity import ReplayClaim, SqlReplayStore
    from connector.identity._store import replay_key, token_replay_table
    from connector.store import autocommit_tx, create_engine, migrate
    from contracts._process import new_process_row

    engine = create_engine(pg_url)
    try:
        migrate(engine)
        META.create_all(engine)
        store = SqlReplayStore(engine)
        expires = int(time.time()) + 300

        def write(pid: str, mid: str, jti: str) -> tuple[StateWrite, ReplayClaim]:
            claim = ReplayClaim(store, "did:web:peer", jti, expires)
            row = new_process_row(TOY, pid, SENDING, timeout_s=60.0, now=time.time())
            state = StateWrite(
                TOY,
                pid,
                {"state": SENT, "timeout_s": 60.0, "note": mid},
                received=("toy", mid, "digest-" + mid),
                insert=row,
                token=(token_replay_table, claim),
            )
            return state, claim

        def snapshot() -> tuple[Any, ...]:
            with engine.connect() as conn:
                rows = conn.execute(sa.select(TOY.c.id, TOY.c.note).order_by(TOY.c.id)).all()
                ids = conn.execute(sa.select(inbox.c.message_id).order_by(inbox.c.message_id)).scalars().all()
                tokens = conn.execute(sa.select(token_replay_table.c.token_key)).scalars().all()
            return [tuple(r) for r in rows], ids, sorted(tokens)

        def key(jti: str) -> str:
            return replay_key("did:web:peer", jti)

        state, claim = write("n1", "m1", "a")
        with autocommit_tx(engine) as conn:
            save_guarded(conn, state)
        assert claim.recorded and snapshot() == ([("n1", "m1")], ["m1"], [key("a")])
        # a spent token id: nothing written, the id not settled (the locking path refuses it)
        state, claim = write("n2", "m2", "a")
        with pytest.raises(StaleWrite), autocommit_tx(engine) as conn:
            save_guarded(conn, state)
        assert not claim.recorded and snapshot() == ([("n1", "m1")], ["m1"], [key("a")])
        # a message id seen before, with a fresh token: nothing at all, the token not spent
        state, claim = write("n3", "m1", "b")
        with pytest.raises(StaleWrite), autocommit_tx(engine) as conn:
            save_guarded(conn, state)
        assert not claim.recorded and snapshot() == ([("n1", "m1")], ["m1"], [key("a")])
        # two copies of message m4 at once: the first holds its transaction open while the
        # second runs (it waits on the first's inbox row), then commits
        first, first_claim = write("n4", "m4", "c")
        second, second_claim = write("n5", "m4", "d")
        outcome: list[BaseException | None] = []
        with engine.connect() as conn_a:
            save_guarded(conn_a, first)  # in conn_a's open transaction

            def run_second() -> None:
                try:
                    with autocommit_tx(engine) as conn_b:
                        save_guarded(conn_b, second)
                    outcome.append(None)
                except BaseException as exc:  # handed to the test
                    outcome.append(exc)

            t = threading.Thread(target=run_second)
            t.start()
            t.join(0.5)
            assert t.is_alive(), "the second copy should wait for the first's inbox row"
            conn_a.commit()
            t.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], StaleWrite)
        assert first_claim.recorded and second_claim.recorded  # spent by its own request
        assert snapshot() == ([("n1", "m1"), ("n4", "m4")], ["m1", "m4"], [key("a"), key("c"), key("d")])
        # a token id without a received message to tie it to: refused, nothing settled
        loose, loose_claim = write("n6", "m6", "e")
        loose = dataclasses.replace(loose, received=None)
        with pytest.raises(StoreError, match="received message"), autocommit_tx(engine) as conn:
            save_guarded(conn, loose)
        assert not loose_claim.recorded and len(snapshot()[0]) == 2
    finally:
        engine.dispose()


class CoalescingHandler(AckHandler):
    coalesce_acks = True


def test_a_held_delivery_is_recorded_after_the_hold_or_when_the_worker_stops(toy_engine: sa.Engine) -> None:
    """With hold_acks_s, a 2xx of a coalescing handler's message is recorded after the hold (if
    no received message recorded it first), and at once when the worker stops: nothing lost."""
    handler = CoalescingHandler()
    w = _worker(toy_engine, handler, [], [], hold_acks_s=0.3)
    msg = _claimed_with_ack(toy_engine, w, "h1")
    w._record(msg, Delivery(True, 200, False, "ok"))
    assert _state(toy_engine, "h1")["state"] == SENDING and _outbox_of(toy_engine, "h1").status == "pending"
    deadline = time.time() + 5
    # the flusher thread commits, then calls the handler's after_ack hook: wait for both
    while not handler.acked_rows and time.time() < deadline:
        time.sleep(0.02)
    assert (_state(toy_engine, "h1")["state"], _outbox_of(toy_engine, "h1").status) == (SENT, "sent")
    assert [r["id"] for r in handler.acked_rows] == ["h1"]
    msg = _claimed_with_ack(toy_engine, w, "h2")
    w._record(msg, Delivery(True, 200, False, "ok"))
    w.stop()
    assert (_state(toy_engine, "h2")["state"], _outbox_of(toy_engine, "h2").status) == (SENT, "sent")


def test_an_ack_into_a_terminal_state_is_never_held(toy_engine: sa.Engine) -> None:
    """Nothing follows it, and others wait for that state (a transfer needs the provider's
    negotiation FINALIZED): recorded at once, whatever the hold."""
    handler = CoalescingHandler()
    w = _worker(toy_engine, handler, [], [], hold_acks_s=30.0)
    with toy_engine.begin() as conn:
        _new(conn, "t1")
        msg = enqueue_claimed(
            conn, w, "toy", "t1", "http://peer/x", {"@type": "Last"},
            on_ack=AckTransition(TOY, version=0, state=TIMED_OUT, timeout_s=None),
        )  # fmt: skip
    assert msg is not None
    w._record(msg, Delivery(True, 200, False, "ok"))
    assert w.take_held("toy", "t1") is None
    assert (_state(toy_engine, "t1")["state"], _outbox_of(toy_engine, "t1").status) == (TIMED_OUT, "sent")
    w.stop()


@pytest.mark.postgres
def test_a_received_message_records_our_held_or_in_flight_delivery(pg_url: str) -> None:
    """The peer's next message shows it has ours. Its write marks ours sent (StateWrite.acked),
    and the reply it adds is leased at once: not queued behind ours. The outcome of ours, held
    or arriving later, is then not recorded a second time."""
    from connector.store import autocommit_tx, create_engine, migrate

    engine = create_engine(pg_url)
    try:
        migrate(engine)
        META.create_all(engine)
        handler = CoalescingHandler()
        w = _worker(engine, handler, [], [], hold_acks_s=30.0)

        def reply(pid: str, version: int, mid: str, acked: str) -> OutboxMessage | None:
            state = StateWrite(
                TOY,
                pid,
                {"state": SENT, "timeout_s": 60.0, "note": "answered"},
                expect_version=version,
                received=("toy", mid, "d-" + mid),
                acked=(acked, w.owner),
            )
            with autocommit_tx(engine) as conn:
                return enqueue_claimed(conn, w, "toy", pid, "http://peer/x", {"@type": "Reply"}, state=state)

        def outbox_rows(pid: str) -> list[tuple[str, str, Any]]:
            with engine.connect() as conn:
                q = sa.select(outbox.c.message_type, outbox.c.status, outbox.c.lease_owner)
                rows = conn.execute(q.where(outbox.c.process_id == pid).order_by(outbox.c.seq)).all()
            return [tuple(r) for r in rows]

        # held: its 2xx came first
        first = _claimed_with_ack(engine, w, "c1")
        w._record(first, Delivery(True, 200, False, "ok"))
        held = w.take_held("toy", "c1")
        assert held is not None and held[0].id == first.id and w.take_held("toy", "c1") is None
        assert reply("c1", 0, "peer-1", first.id) is not None  # leased: dispatchable at once
        assert outbox_rows("c1") == [("M", "sent", None), ("Reply", "pending", w.owner)]
        assert (_state(engine, "c1")["state"], _state(engine, "c1")["version"]) == (SENT, 1)
        # in flight: the peer's message came before our 2xx
        second = _claimed_with_ack(engine, w, "c2")
        assert reply("c2", 0, "peer-2", second.id) is not None
        w.settle("toy", "c2", second.id)
        w._record(second, Delivery(True, 200, False, "ok"))  # its outcome: already recorded
        assert outbox_rows("c2") == [("M", "sent", None), ("Reply", "pending", w.owner)]
        assert _state(engine, "c2")["version"] == 1 and handler.acked_rows == [] and handler.delivered == []
        # a write that does not apply (stale version) marks nothing sent
        third = _claimed_with_ack(engine, w, "c3")
        with pytest.raises(StaleWrite):
            reply("c3", 7, "peer-3", third.id)
        assert outbox_rows("c3") == [("M", "pending", w.owner)]
        w.stop()
    finally:
        engine.dispose()


def test_the_peers_messages_mean_the_same_in_an_ing_state_as_after_its_ack() -> None:
    """Why a received message may record our unrecorded delivery with its own write: every
    message the peer may send after ours is taken the same way in our "-ING" state as in the
    state our delivery's ACK leads to."""
    from contracts._negotiation_states import _ING_TO_ED, Event, Role, State, handle

    checked = 0
    for role in Role:
        for ing, ed in _ING_TO_ED.items():
            if ing in (State.INITIAL, State.TERMINATING):
                continue
            for event in (e for e in Event if e.name.startswith("RECV")):
                try:
                    after_ack = handle(role, ed, event).state
                except Exception:
                    continue
                assert handle(role, ing, event).state == after_ack, (role, ing, event)
                checked += 1
    assert checked > 10


def test_state_timeout(toy_engine: sa.Engine) -> None:
    with toy_engine.begin() as conn:
        _new(conn, "p7", timeout_s=-1)
    w = _worker(toy_engine, ToyHandler(), [], [])
    assert w.expire() == 1
    row = _state(toy_engine, "p7")
    assert row["state"] == TIMED_OUT and row["deadline"] is None
    assert w.expire() == 0


def test_a_sweep_with_nothing_due_does_not_wait_for_a_writer(toy_engine: sa.Engine) -> None:
    """Finding that nothing timed out is one read: no write transaction (on SQLite it would queue
    behind a long write; on PostgreSQL it would add BEGIN and COMMIT to every sweep). Once a
    deadline passed, the sweep expires the process as before."""
    import threading

    from connector.store import write_tx

    with toy_engine.begin() as conn:
        _new(conn, "p10")
    w = _worker(toy_engine, ToyHandler(), [], [])
    holding, release = threading.Event(), threading.Event()

    def long_writer() -> None:
        with write_tx(toy_engine) as conn:
            conn.execute(sa.update(TOY).where(TOY.c.id == "p10").values(note="busy"))
            holding.set()
            release.wait(10)

    t = threading.Thread(target=long_writer)
    t.start()
    try:
        assert holding.wait(5)
        t0 = time.monotonic()
        assert w.expire() == 0
        assert time.monotonic() - t0 < 2.0  # not blocked until the writer's 10 s are up
    finally:
        release.set()
        t.join()
    with toy_engine.begin() as conn:
        conn.execute(sa.update(TOY).where(TOY.c.id == "p10").values(deadline=time.time() - 1))
    assert w.expire() == 1 and _state(toy_engine, "p10")["state"] == TIMED_OUT


def test_the_polling_thread_sweeps_for_timeouts_at_most_every_poll_s(toy_engine: sa.Engine) -> None:
    """Under load the worker is woken many times a second: each wake delivers, but timeouts are
    swept at most every poll_s, except right after a sweep that filled its batch."""
    w = _worker(toy_engine, ToyHandler(), [], [], poll_s=0.3, batch_size=2)
    sweeps: list[int] = []
    results = [0, 2, 1]

    def expire() -> int:
        sweeps.append(1)
        return results.pop(0) if results else 0

    w.expire = expire  # type: ignore[method-assign]
    for _ in range(20):
        w._poll_step()
    assert len(sweeps) == 1
    time.sleep(0.35)
    w._poll_step()  # a full batch (2): more may be due
    w._poll_step()  # so at once again
    w._poll_step()  # that one was not full: wait
    assert len(sweeps) == 3


def test_received_message_dedupe(toy_engine: sa.Engine) -> None:
    with toy_engine.begin() as conn:
        _new(conn, "p8")
        lock_process(conn, TOY, "p8")
        d = body_digest({"a": 1, "b": 2})
        assert record_received(conn, "toy", "p8", "m1", d) == "new"
        assert record_received(conn, "toy", "p8", "m1", body_digest({"b": 2, "a": 1})) == "duplicate"
        assert record_received(conn, "toy", "p8", "m1", body_digest({"a": 2})) == "conflict"
        assert record_received(conn, "toy", "p8", None, d) == "new"


def test_background_worker_wakes_up(toy_engine: sa.Engine) -> None:
    seen: list[dict[str, Any]] = []
    w = _worker(toy_engine, ToyHandler(), [], seen, poll_s=30)
    w.start()
    try:
        with toy_engine.begin() as conn:
            _new(conn, "p9")
            enqueue(conn, "toy", "p9", "http://peer/x", {"@type": "M"})
        w.wake()
        deadline = time.time() + 5
        while time.time() < deadline and _state(toy_engine, "p9")["state"] != SENT:
            time.sleep(0.02)
    finally:
        w.stop()
    assert _state(toy_engine, "p9")["state"] == SENT


def test_an_idle_poller_looks_less_often_and_a_wake_brings_it_back_at_once() -> None:
    """Finding nothing, the wait doubles from poll_s up to 5 times it (an idle replica's load on
    the database); a wake() runs the step at once and starts again from poll_s."""
    looks: list[float] = []

    def step() -> int:
        looks.append(time.monotonic())
        return 0

    poller = PollingThread(step, "test-poller", poll_s=0.02)
    poller.start()
    try:
        time.sleep(1.0)
        idle = len(looks)
        # 1 s at a steady 20 ms would be ~50 looks; doubling to 100 ms makes it ~13
        assert 5 <= idle <= 25, looks
        gaps = [b - a for a, b in zip(looks[-4:], looks[-3:], strict=False)]
        assert all(g >= 0.08 for g in gaps), gaps
        before = len(looks)
        t0 = time.monotonic()
        poller.wake()
        deadline = t0 + 2
        while len(looks) == before and time.monotonic() < deadline:
            time.sleep(0.001)
        assert looks[before] - t0 < 0.05  # at once, not after the long wait
    finally:
        poller.stop()
