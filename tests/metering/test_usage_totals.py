"""An agreement's running usage totals (what enforcement reads instead of summing its history)
always equal the sum over its stored successful events: retries and conflicts add nothing, failed
events add nothing, and databases that had events before the totals existed are backfilled."""

from __future__ import annotations

import random
import threading

import sqlalchemy as sa

from connector.store import create_engine, migrate
from metering import IngestResult, UsageEvent, record_usage_events, usage_so_far
from metering._tables import usage_events


def _event(
    i: int, agreement: str, *, outcome: str = "ok", nbytes: int = 100, started: float = 1_000.0
) -> UsageEvent:
    return UsageEvent(
        id=f"ev-{i}", agreement_id=agreement, transfer_id="t1", dataset_id="d1", category="carbon",
        bytes=nbytes, records=1, calls=1, started_at=started, ended_at=started + 1, outcome=outcome,
        consumer="did:web:consumer", provider="did:web:provider",
    )  # fmt: skip


def _summed(conn: sa.Connection, agreement: str) -> tuple[int, float | None, int]:
    n, first, nbytes = conn.execute(
        sa.select(
            sa.func.count(), sa.func.min(usage_events.c.started_at), sa.func.sum(usage_events.c.bytes)
        ).where(usage_events.c.agreement_id == agreement, usage_events.c.outcome == "ok")
    ).one()
    return int(n), (None if first is None else float(first)), int(nbytes or 0)


def test_totals_equal_the_stored_successful_events(engine: sa.Engine) -> None:
    rng = random.Random(7)
    agreements = ["agr-a", "agr-b", "agr-c"]
    sent: list[UsageEvent] = []
    for batch in range(20):
        events = []
        for k in range(rng.randint(1, 15)):
            i = batch * 100 + k
            events.append(
                _event(
                    i,
                    rng.choice(agreements),
                    outcome=rng.choice(["ok", "ok", "ok", "source_error"]),
                    nbytes=rng.randint(0, 10_000),
                    started=rng.uniform(1_000, 2_000),
                )
            )
        # a retry of earlier events in the same batch: counted once
        events += rng.sample(sent, min(len(sent), 3))
        with engine.begin() as conn:
            results = record_usage_events(conn, events)
        assert all(r in (IngestResult.CREATED, IngestResult.EXISTS) for r in results)
        sent += [e for e in events if e not in sent]
    # a conflicting event (same id, other bytes) is refused and adds nothing
    with engine.begin() as conn:
        first = sent[0]
        other = _event(0, first.agreement_id, outcome="ok", nbytes=first.bytes + 1, started=first.started_at)
        assert record_usage_events(conn, [other]) == [IngestResult.CONFLICT]
    with engine.connect() as conn:
        for agreement in agreements:
            assert usage_so_far(conn, agreement) == _summed(conn, agreement)
        assert usage_so_far(conn, "agr-none") == (0, None, 0)
        ok = [e for e in sent if e.outcome == "ok"]
        assert sum(usage_so_far(conn, a)[0] for a in agreements) == len(ok) > 0


def test_concurrent_writers_of_one_agreement_lose_nothing(engine: sa.Engine) -> None:
    """Threads inserting events of the same (new) agreement at once: the first row is created once and
    every event is added (on PostgreSQL the upsert serialises them on the totals row)."""
    errors: list[BaseException] = []

    def write(t: int) -> None:
        try:
            for k in range(10):
                with engine.begin() as conn:
                    record_usage_events(
                        conn, [_event(t * 1000 + k, "agr-hot", nbytes=t + 1, started=1_000.0 + t)]
                    )
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    with engine.connect() as conn:
        assert usage_so_far(conn, "agr-hot") == (40, 1_000.0, 10 * (1 + 2 + 3 + 4))


def test_events_stored_before_the_totals_existed_are_backfilled(db_url: str) -> None:
    eng = create_engine(db_url)
    try:
        migrate(eng, "metering_0005")  # the schema before the totals table
        with eng.begin() as conn:
            rows = [
                _event(1, "agr-old", nbytes=10, started=5.0),
                _event(2, "agr-old", nbytes=20, started=3.0),
                _event(3, "agr-old", outcome="source_error", nbytes=999, started=1.0),
            ]
            conn.execute(usage_events.insert(), [_row(e) for e in rows])
        migrate(eng)
        with eng.connect() as conn:
            assert usage_so_far(conn, "agr-old") == (2, 3.0, 30)
        with eng.begin() as conn:  # and later events are added to the backfilled row
            record_usage_events(conn, [_event(4, "agr-old", nbytes=5, started=9.0)])
        with eng.connect() as conn:
            assert usage_so_far(conn, "agr-old") == (3, 3.0, 35)
    finally:
        eng.dispose()


def _row(e: UsageEvent) -> dict[str, object]:
    return {f: getattr(e, f) for f in UsageEvent.__dataclass_fields__}
