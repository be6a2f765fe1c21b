"""The ledger on SQLite and PostgreSQL: invariants, exactly-once, two-phase, linked chains, races."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from connector.errors import ValidationError
from metering import Account, AccountFlags, Ledger, Result, Transfer, TransferFlags, verify_audit

PREPAID = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


@pytest.fixture
def ledger(engine: sa.Engine) -> Ledger:
    lg = Ledger(engine)
    assert (
        lg.create_accounts(
            [
                Account("bank:funding", "EUR"),
                Account("consumer:prepaid", "EUR", flags=PREPAID),
                Account("provider:revenue", "EUR"),
                Account("usage:calls", "CALLS"),
            ]
        )
        == [Result.CREATED] * 4
    )
    assert (
        lg.create_transfer(Transfer("fund-1", "bank:funding", "consumer:prepaid", 10_000, "EUR"))
        == Result.CREATED
    )
    return lg


def _ok(lg: Ledger) -> None:
    assert lg.check_invariants() == []
    assert verify_audit(lg.engine) == []


def test_plain_transfer_and_balances(ledger: Ledger) -> None:
    assert (
        ledger.create_transfer(Transfer("t1", "consumer:prepaid", "provider:revenue", 2_500, "EUR"))
        == Result.CREATED
    )
    assert ledger.account("consumer:prepaid").balance == 7_500
    assert ledger.account("provider:revenue").balance == 2_500
    _ok(ledger)


def test_exactly_once_results(ledger: Ledger) -> None:
    t = Transfer("t-once", "consumer:prepaid", "provider:revenue", 100, "EUR")
    assert ledger.create_transfer(t) == Result.CREATED
    assert ledger.create_transfer(t) == Result.EXISTS  # a retry counts once
    different = Transfer("t-once", "consumer:prepaid", "provider:revenue", 101, "EUR")
    assert ledger.create_transfer(different) == Result.EXISTS_WITH_DIFFERENT_AMOUNT
    assert ledger.account("provider:revenue").balance == 100
    too_much = Transfer("t-big", "consumer:prepaid", "provider:revenue", 1_000_000, "EUR")
    assert ledger.create_transfer(too_much) == Result.EXCEEDS_CREDITS
    ledger.create_transfer(Transfer("fund-2", "bank:funding", "consumer:prepaid", 2_000_000, "EUR"))
    # the balance would now allow it, but an id that failed its balance check stays failed
    assert ledger.create_transfer(too_much) == Result.ID_ALREADY_FAILED
    _ok(ledger)


@pytest.mark.parametrize(
    ("transfer", "result"),
    [
        (Transfer("x1", "nope", "provider:revenue", 1, "EUR"), Result.DEBIT_ACCOUNT_NOT_FOUND),
        (Transfer("x2", "consumer:prepaid", "nope", 1, "EUR"), Result.CREDIT_ACCOUNT_NOT_FOUND),
        (Transfer("x3", "consumer:prepaid", "consumer:prepaid", 1, "EUR"), Result.ACCOUNTS_MUST_BE_DIFFERENT),
        (Transfer("x4", "consumer:prepaid", "usage:calls", 1, "EUR"), Result.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER),
        (Transfer("x5", "consumer:prepaid", "provider:revenue", 0, "EUR"), Result.AMOUNT_MUST_NOT_BE_ZERO),
        (Transfer("x6", "consumer:prepaid", "provider:revenue", 1, "USD"), Result.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS),
        (Transfer("", "consumer:prepaid", "provider:revenue", 1, "EUR"), Result.ID_MUST_NOT_BE_EMPTY),
        (Transfer("x7", "", "", 0, "EUR", flags=TransferFlags.POST_PENDING, pending_id="none"), Result.PENDING_TRANSFER_NOT_FOUND),
    ],
)  # fmt: skip
def test_invalid_transfers_change_nothing(ledger: Ledger, transfer: Transfer, result: Result) -> None:
    before = ledger.account("consumer:prepaid")
    assert ledger.create_transfer(transfer) == result
    assert ledger.account("consumer:prepaid") == before
    _ok(ledger)


def test_two_phase_reserve_partial_post_and_void(ledger: Ledger) -> None:
    reserve = Transfer(
        "r1", "consumer:prepaid", "provider:revenue", 3_000, "EUR", flags=TransferFlags.PENDING
    )
    assert ledger.create_transfer(reserve) == Result.CREATED
    c = ledger.account("consumer:prepaid")
    assert (c.debits_pending, c.available) == (3_000, 7_000)
    post = Transfer("p1", "", "", 1_200, "EUR", flags=TransferFlags.POST_PENDING, pending_id="r1")
    assert ledger.create_transfer(post) == Result.CREATED  # partial: the rest is released
    c = ledger.account("consumer:prepaid")
    assert (c.debits_pending, c.debits_posted, c.balance) == (0, 1_200, 8_800)
    again = Transfer("p2", "", "", 0, "EUR", flags=TransferFlags.VOID_PENDING, pending_id="r1")
    assert ledger.create_transfer(again) == Result.PENDING_TRANSFER_ALREADY_POSTED
    r2 = Transfer("r2", "consumer:prepaid", "provider:revenue", 500, "EUR", flags=TransferFlags.PENDING)
    assert ledger.create_transfer(r2) == Result.CREATED
    assert (
        ledger.create_transfer(
            Transfer("v2", "", "", 0, "EUR", flags=TransferFlags.VOID_PENDING, pending_id="r2")
        )
        == Result.CREATED
    )
    over = Transfer("r3", "consumer:prepaid", "provider:revenue", 100, "EUR", flags=TransferFlags.PENDING)
    ledger.create_transfer(over)
    too_much = Transfer("p3", "", "", 101, "EUR", flags=TransferFlags.POST_PENDING, pending_id="r3")
    assert ledger.create_transfer(too_much) == Result.EXCEEDS_PENDING_TRANSFER_AMOUNT
    assert ledger.account("consumer:prepaid").debits_pending == 100
    _ok(ledger)


def test_pending_timeout_expires(ledger: Ledger) -> None:
    now = [1_000_000.0]
    lg = Ledger(ledger.engine, clock=lambda: now[0])
    r = Transfer(
        "rt", "consumer:prepaid", "provider:revenue", 400, "EUR", flags=TransferFlags.PENDING, timeout_s=60
    )
    assert lg.create_transfer(r) == Result.CREATED
    now[0] += 61
    late = Transfer("pt", "", "", 0, "EUR", flags=TransferFlags.POST_PENDING, pending_id="rt")
    assert lg.create_transfer(late) == Result.PENDING_TRANSFER_EXPIRED
    assert lg.expire_pending() == 1
    assert lg.account("consumer:prepaid").debits_pending == 0
    _ok(lg)


def test_the_expiry_sweep_reads_only_pending_transfers(engine: sa.Engine) -> None:
    """The sweep runs every housekeeping round: its plan uses the partial index of pending
    transfers, also as PostgreSQL's generic plan of the prepared statement (no parameter decides
    whether the index applies), never a scan of the whole ledger."""
    from metering._ledger import EXPIRY_CANDIDATES

    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")  # a small table: the plan if it were big
            conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            sql = str(EXPIRY_CANDIDATES.compile(engine)).replace("%(now)s", "$1")
            conn.exec_driver_sql(f"PREPARE sweep(float8) AS {sql}")
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN EXECUTE sweep(1e9)"))
        else:
            sql = str(
                EXPIRY_CANDIDATES.params(now=1e9).compile(engine, compile_kwargs={"literal_binds": True})
            )
            plan = "\n".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    assert "ix_ledger_transfers_pending" in plan, plan


def test_linked_chain_succeeds_or_fails_as_one(ledger: Ledger) -> None:
    ok = [
        Transfer("l1", "consumer:prepaid", "provider:revenue", 100, "EUR", flags=TransferFlags.LINKED),
        Transfer("l2", "consumer:prepaid", "provider:revenue", 200, "EUR"),
    ]
    assert ledger.create_transfers(ok) == [Result.CREATED, Result.CREATED]
    bad = [
        Transfer("l3", "consumer:prepaid", "provider:revenue", 100, "EUR", flags=TransferFlags.LINKED),
        Transfer("l4", "consumer:prepaid", "provider:revenue", 10**9, "EUR", flags=TransferFlags.LINKED),
        Transfer("l5", "consumer:prepaid", "provider:revenue", 1, "EUR"),
        Transfer("l6", "consumer:prepaid", "provider:revenue", 7, "EUR"),  # not in the chain
    ]
    assert ledger.create_transfers(bad) == [
        Result.LINKED_EVENT_FAILED,
        Result.EXCEEDS_CREDITS,
        Result.LINKED_EVENT_FAILED,
        Result.CREATED,
    ]
    assert ledger.account("provider:revenue").balance == 307
    open_chain = [
        Transfer("l7", "consumer:prepaid", "provider:revenue", 1, "EUR", flags=TransferFlags.LINKED)
    ]
    assert ledger.create_transfers(open_chain) == [Result.LINKED_EVENT_CHAIN_OPEN]
    _ok(ledger)


def test_32_threads_racing_never_overdraw(ledger: Ledger) -> None:
    results: list[Result] = []
    lock = threading.Lock()

    def withdraw(n: int) -> None:
        for k in range(8):
            r = ledger.create_transfer(
                Transfer(f"w{n}-{k}", "consumer:prepaid", "provider:revenue", 50, "EUR")
            )
            with lock:
                results.append(r)

    threads = [threading.Thread(target=withdraw, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = results.count(Result.CREATED)
    assert created == 10_000 // 50  # exactly the balance, never more
    assert results.count(Result.EXCEEDS_CREDITS) == 32 * 8 - created
    acc = ledger.account("consumer:prepaid")
    assert acc.balance == 0
    assert ledger.account("provider:revenue").balance == created * 50
    _ok(ledger)


def test_batch_with_a_hot_account(ledger: Ledger) -> None:
    ledger.create_accounts([Account(f"shop:{i}", "EUR") for i in range(50)])
    batch = [Transfer(f"h{i}", "bank:funding", f"shop:{i % 50}", 3, "EUR") for i in range(1000)]
    assert set(ledger.create_transfers(batch)) == {Result.CREATED}
    assert ledger.account("bank:funding").balance == -(10_000 + 3000)
    _ok(ledger)


def test_tampering_is_detected_by_verify(ledger: Ledger) -> None:
    for i in range(3):
        ledger.create_transfer(Transfer(f"a{i}", "consumer:prepaid", "provider:revenue", 10 + i, "EUR"))
    _ok(ledger)
    eng = ledger.engine
    with eng.begin() as conn:
        conn.execute(sa.text("UPDATE ledger_transfers SET amount = 999 WHERE id = 'a1'"))
    assert any("transfer a1" in p and "altered" in p for p in verify_audit(eng))
    assert any("account" in p for p in ledger.check_invariants())
    with eng.begin() as conn:
        conn.execute(sa.text("UPDATE ledger_transfers SET amount = 11 WHERE id = 'a1'"))
        conn.execute(sa.text("DELETE FROM ledger_transfers WHERE id = 'a2'"))
    assert any("transfer a2" in p and "deleted" in p for p in verify_audit(eng))
    with eng.begin() as conn:
        conn.execute(
            sa.text("UPDATE bank_audit_log SET payload = replace(payload, 'a0', 'zz') WHERE seq = 3")
        )
    assert any("audit entry 3" in p for p in verify_audit(eng))
    with eng.begin() as conn:
        conn.execute(sa.text("DELETE FROM bank_audit_log WHERE seq = 2"))
    problems = verify_audit(eng)
    assert any("audit entry 2 is missing" in p for p in problems)


def test_group_commit_gives_each_caller_its_own_result(ledger: Ledger) -> None:
    from metering import LedgerBatcher

    batcher = LedgerBatcher(ledger)
    results: list[Result] = []
    lock = threading.Lock()

    def withdraw(n: int) -> None:
        for k in range(8):
            r = batcher.submit(Transfer(f"g{n}-{k}", "consumer:prepaid", "provider:revenue", 50, "EUR"))
            with lock:
                results.append(r)

    threads = [threading.Thread(target=withdraw, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(Result.CREATED) == 200  # exactly the prepaid balance, never more
    assert results.count(Result.EXCEEDS_CREDITS) == 56
    assert (
        batcher.submit(Transfer("g0-0", "consumer:prepaid", "provider:revenue", 50, "EUR")) == Result.EXISTS
    )
    with pytest.raises(ValidationError, match="linked"):
        batcher.submit(
            Transfer("gl", "consumer:prepaid", "provider:revenue", 1, "EUR", flags=TransferFlags.LINKED)
        )
    batcher.close()
    assert ledger.account("consumer:prepaid").balance == 0
    _ok(ledger)


def test_a_retried_post_or_void_that_inherits_its_fields_answers_exists(ledger: Ledger) -> None:
    pending = TransferFlags.PENDING
    assert ledger.create_transfer(Transfer("rr1", "consumer:prepaid", "provider:revenue", 10, "EUR", flags=pending)) == Result.CREATED  # fmt: skip
    assert ledger.create_transfer(Transfer("rr2", "consumer:prepaid", "provider:revenue", 20, "EUR", flags=pending)) == Result.CREATED  # fmt: skip
    post = Transfer("rp1", "", "", 0, "EUR", flags=TransferFlags.POST_PENDING, pending_id="rr1")
    void = Transfer("rv2", "", "", 0, "", flags=TransferFlags.VOID_PENDING, pending_id="rr2")
    assert ledger.create_transfers([post, void]) == [Result.CREATED, Result.CREATED]
    assert ledger.create_transfers([post, void]) == [Result.EXISTS, Result.EXISTS]  # retries count once
    # what a retry does set is still compared
    other = Transfer("rp1", "", "", 0, "EUR", flags=TransferFlags.POST_PENDING, pending_id="rr2")
    assert ledger.create_transfer(other) == Result.EXISTS_WITH_DIFFERENT_PENDING_ID
    bigger = Transfer("rp1", "", "", 11, "EUR", flags=TransferFlags.POST_PENDING, pending_id="rr1")
    assert ledger.create_transfer(bigger) == Result.EXISTS_WITH_DIFFERENT_AMOUNT
    assert ledger.account("provider:revenue").balance == 10
    _ok(ledger)


def test_two_batches_racing_on_the_same_new_ids_resolve_to_one_winner(ledger: Ledger) -> None:
    ledger.create_accounts([Account(f"race:{i}", "EUR") for i in range(4)])
    for round_ in range(3):
        ids = [f"race-{round_}-{k}" for k in range(100)]
        batches = [
            [Transfer(i, "race:0", "race:1", 1, "EUR") for i in ids],
            [Transfer(i, "race:2", "race:3", 1, "EUR") for i in ids],  # other accounts: no common lock
        ]
        barrier = threading.Barrier(2)
        out: list[list[Result]] = [[], []]

        def run(
            n: int, barrier: threading.Barrier, batches: list[list[Transfer]], out: list[list[Result]]
        ) -> None:
            barrier.wait()
            out[n] = ledger.create_transfers(batches[n])

        threads = [threading.Thread(target=run, args=(n, barrier, batches, out)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # every id was created by exactly one of the two; the other saw it with other accounts
        for k in range(100):
            pair = {out[0][k], out[1][k]}
            assert Result.CREATED in pair and len(pair) == 2, (k, pair)
    moved = sum(ledger.account(f"race:{i}").credits_posted for i in (1, 3))
    assert moved == 300
    _ok(ledger)


def test_postgres_ledger_transactions_plan_each_batch_for_its_own_ids(pg_url: str) -> None:
    """Custom plans inside ledger transactions (a generic ``id = ANY`` plan made while the tables
    were nearly empty kept sequential scans), and only there: other transactions keep
    PostgreSQL's default, which costs the negotiations less server CPU."""
    from connector.store import create_engine, migrate

    eng = create_engine(pg_url)
    migrate(eng)
    try:
        led = Ledger(eng)
        led.create_accounts([Account(id="a", ledger="EUR", code=1), Account(id="b", ledger="EUR", code=1)])
        with eng.begin() as conn:
            assert conn.execute(sa.text("show plan_cache_mode")).scalar_one() == "auto"
            results = led.create_transfers_in(conn, [Transfer(id="t1", debit_account_id="a",
                                                               credit_account_id="b", amount=5, ledger="EUR",
                                                               code=1)])  # fmt: skip
            assert results[0].ok
            assert conn.execute(sa.text("show plan_cache_mode")).scalar_one() == "force_custom_plan"
        with eng.begin() as conn:
            assert conn.execute(sa.text("show plan_cache_mode")).scalar_one() == "auto"
    finally:
        eng.dispose()
