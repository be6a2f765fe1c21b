"""kill -9 of the ledger writer during a batch load: nothing acknowledged is lost, retries land once.

A child process loads batches of 200 transfers (client-supplied, deterministic ids) through
:meth:`Ledger.create_transfers` from several threads and prints each batch number once the call has
returned. One writer stops after its first commit without acknowledging it (a reply lost after the
commit: the parent treats it as in doubt). The parent sends SIGKILL while the other writers are
still loading, then checks that every acknowledged batch is there with its amounts, that every
other batch is there completely or not at all (a batch is one transaction), that the balances and
the audit log agree with the transfers, and that retrying every batch with the same ids answers
only ``created`` or ``exists`` and leaves each transfer counted exactly once.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa

from metering import Account, AccountFlags, Ledger, Result, Transfer, TransferFlags, verify_audit

pytestmark = pytest.mark.slow

BATCHES = 80
BATCH_SIZE = 200
WRITERS = 4
KILL_AFTER = 6  # acknowledged batches before the SIGKILL
HELD = 0  # committed, but its answer never reaches the caller (a lost reply)
PREPAID = [f"k9:prepaid:{n}" for n in range(10)]
SHOPS = [f"k9:shop:{n}" for n in range(50)]
FUNDING = 10**12
READ_TIMEOUT_S = 120.0

CHILD = """
import importlib.util, os, sys, threading
spec = importlib.util.spec_from_file_location("kill9_batches", sys.argv[3])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
from connector.store import create_engine
from metering import Ledger, Result

ledger = Ledger(create_engine(sys.argv[1]))
out = threading.Lock()

def write(first):
    for k in range(first, int(sys.argv[2]), mod.WRITERS):
        results = ledger.create_transfers(mod.batch(k))
        with out:
            if set(results) != {Result.CREATED}:
                print("bad", k, sorted(set(map(str, results))), flush=True)
                os._exit(2)
            print("held" if k == mod.HELD else "ack", k, flush=True)
        if k == mod.HELD:
            threading.Event().wait()  # this writer hangs until the kill

threads = [threading.Thread(target=write, args=(n,)) for n in range(mod.WRITERS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("done", flush=True)
"""


def batch(k: int) -> list[Transfer]:
    """Batch ``k``: plain transfers from prepaid accounts, a linked pair, and a reserve posted in full."""
    out = []
    for i in range(BATCH_SIZE - 4):
        debit, credit = PREPAID[(k + i) % len(PREPAID)], SHOPS[(k * 7 + i) % len(SHOPS)]
        out.append(Transfer(f"k9-{k:04d}-{i:03d}", debit, credit, 1 + (k * BATCH_SIZE + i) % 97, "EUR"))
    a, b, c = PREPAID[k % len(PREPAID)], SHOPS[k % len(SHOPS)], SHOPS[(k + 1) % len(SHOPS)]
    out.append(Transfer(f"k9-{k:04d}-l1", a, b, 11, "EUR", flags=TransferFlags.LINKED))
    out.append(Transfer(f"k9-{k:04d}-l2", a, c, 13, "EUR"))
    out.append(Transfer(f"k9-{k:04d}-r", a, c, 29, "EUR", flags=TransferFlags.PENDING))
    # the post names its accounts and amount: the stored row then equals the retried one
    post = Transfer(
        f"k9-{k:04d}-p", a, c, 29, "EUR", flags=TransferFlags.POST_PENDING, pending_id=f"k9-{k:04d}-r"
    )
    out.append(post)
    return out


def _posted(ks: set[int]) -> dict[str, int]:
    """Expected balance (credits_posted - debits_posted) of every account after batches ``ks``."""
    bal: Counter[str] = Counter()
    for acc in PREPAID:
        bal[acc] += FUNDING
        bal["k9:bank"] -= FUNDING
    for k in ks:
        for t in batch(k):
            if not t.flags & TransferFlags.PENDING:
                bal[t.debit_account_id] -= t.amount
                bal[t.credit_account_id] += t.amount
    return dict(bal)


def _rows(engine: sa.Engine) -> dict[str, tuple[str, str, int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, debit_account_id, credit_account_id, amount, flags FROM ledger_transfers "
                "WHERE id LIKE 'k9-%'"
            )
        ).all()
    found = Counter(r.id for r in rows)
    assert [tid for tid, n in found.items() if n != 1] == []
    return {r.id: (r.debit_account_id, r.credit_account_id, r.amount, r.flags) for r in rows}


def _expected_rows(ks: set[int]) -> dict[str, tuple[str, str, int, int]]:
    return {
        t.id: (t.debit_account_id, t.credit_account_id, t.amount, int(t.flags)) for k in ks for t in batch(k)
    }


def _check(ledger: Ledger, ks: set[int]) -> None:
    """The ledger holds exactly batches ``ks``, balances and audit agree with them."""
    have_rows, want_rows = _rows(ledger.engine), _expected_rows(ks)
    lost, extra = sorted(want_rows.keys() - have_rows.keys()), sorted(have_rows.keys() - want_rows.keys())
    assert not lost, f"{len(lost)} transfers lost, e.g. {lost[:3]}"
    assert not extra, f"{len(extra)} transfers that should not be there, e.g. {extra[:3]}"
    assert have_rows == want_rows
    want = _posted(ks)
    have = {a: ledger.account(a).balance for a in ["k9:bank", *PREPAID, *SHOPS]}
    assert have == {a: want.get(a, 0) for a in have}
    assert all(ledger.account(a).debits_pending == 0 for a in PREPAID)
    assert ledger.check_invariants() == []
    assert verify_audit(ledger.engine) == []


def _read_lines(stream: IO[str], into: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        into.put(line)
    into.put(None)


def test_kill9_during_batch_load_loses_nothing_acknowledged(
    engine: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    ledger = Ledger(engine)
    accounts = [Account("k9:bank", "EUR")]
    accounts += [Account(a, "EUR", flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS) for a in PREPAID]
    accounts += [Account(a, "EUR") for a in SHOPS]
    assert set(ledger.create_accounts(accounts)) == {Result.CREATED}
    funding = [Transfer(f"fund:{a}", "k9:bank", a, FUNDING, "EUR") for a in PREPAID]
    assert set(ledger.create_transfers(funding)) == {Result.CREATED}

    script = tmp_path / "kill9_child.py"
    script.write_text(CHILD)
    stderr_path = tmp_path / "child.stderr"
    lines: queue.Queue[str | None] = queue.Queue()
    acked: set[int] = set()
    held: list[int] = []
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), db_url, str(BATCHES), __file__],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert proc.stdout is not None
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()

        def take(line: str | None) -> None:
            if line is None:
                pytest.fail(f"the child ended early ({proc.poll()}): {stderr_path.read_text()[-2000:]}")
            word, *rest = line.split()
            assert word != "done", "the child finished before the kill: it must be killed mid-load"
            assert word in ("ack", "held"), f"the child answered {line!r}"
            if word == "ack":
                acked.add(int(rest[0]))
            else:
                held.append(int(rest[0]))

        while len(acked) < KILL_AFTER or not held:
            try:
                take(lines.get(timeout=READ_TIMEOUT_S))
            except queue.Empty:
                pytest.fail(
                    f"no acknowledgement within {READ_TIMEOUT_S} s: {stderr_path.read_text()[-2000:]}"
                )
        assert proc.poll() is None, "the child finished before the kill: it must be killed mid-load"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        # whatever the child acknowledged before it died is still in the pipe
        while (line := lines.get(timeout=READ_TIMEOUT_S)) is not None:
            take(line)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()
    assert held == [HELD]
    assert HELD not in acked
    # the other writers were still loading: some of their batches were never acknowledged
    assert KILL_AFTER <= len(acked) < BATCHES - len(range(HELD, BATCHES, WRITERS))

    # After the crash: every acknowledged batch is there; any other batch completely or not at all.
    fresh = Ledger(engine)
    present = _rows(engine)
    landed = set(acked)
    for k in set(range(BATCHES)) - acked:
        ids = {t.id for t in batch(k)}
        there = ids & present.keys()
        assert there in (set(), ids), f"batch {k} is half there: {len(there)} of {len(ids)} transfers"
        if there:
            landed.add(k)  # committed, but the child died before it could say so
    assert HELD in landed  # committed before its reply was lost: it survived the kill
    _check(fresh, landed)

    # Retrying everything with the same ids: only created or exists, never a conflict.
    for k in range(BATCHES):
        results = fresh.create_transfers(batch(k))
        expected = Result.EXISTS if k in landed else Result.CREATED
        assert set(results) == {expected}, f"batch {k}: {Counter(map(str, results))}"
    _check(fresh, set(range(BATCHES)))
    assert len(_rows(engine)) == BATCHES * BATCH_SIZE
