"""Audit checkpoints every N entries as well as every T seconds (DADAM_BANK_CHECKPOINT_ENTRIES)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

import metering
from connector._wiring import bank_worker
from metering import Account, Ledger, make_checkpoint, unsigned_entries, verify_audit


def _sign(payload: bytes) -> str:
    return "sig:" + payload.hex()


def _verify(payload: bytes, signature: str) -> bool:
    return signature == _sign(payload)


def _entries(ledger: Ledger, n: int, prefix: str) -> None:
    """``n`` audit entries (one per account creation)."""
    for i in range(n):
        ledger.create_accounts([Account(f"{prefix}:{i}", "EUR")])


def _checkpoint_sizes(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return [
            int(s) for (s,) in conn.execute(sa.text("SELECT size FROM bank_audit_checkpoints ORDER BY size"))
        ]


def test_min_entries_gates_a_checkpoint(engine: sa.Engine) -> None:
    ledger = Ledger(engine)
    assert unsigned_entries(engine) == 0
    assert make_checkpoint(engine, _sign) is None  # an empty log has nothing to sign
    _entries(ledger, 3, "a")
    assert unsigned_entries(engine) == 3
    assert make_checkpoint(engine, _sign, min_entries=5) is None
    assert _checkpoint_sizes(engine) == []
    _entries(ledger, 2, "b")
    cp = make_checkpoint(engine, _sign, min_entries=5)
    assert cp is not None and cp.size == 5
    assert unsigned_entries(engine) == 0
    assert make_checkpoint(engine, _sign) is None  # nothing new
    _entries(ledger, 1, "c")
    assert unsigned_entries(engine) == 1
    cp = make_checkpoint(engine, _sign, min_entries=0)  # 0 means "anything new", like the default
    assert cp is not None and cp.size == 6
    assert _checkpoint_sizes(engine) == [5, 6]
    assert verify_audit(engine, verify_signature=_verify) == []


class _Bank:
    """What the worker needs of a ledger, counting the periodic expiry rounds."""

    def __init__(self, ledger: Ledger) -> None:
        self.engine = ledger.engine
        self._ledger = ledger
        self.rounds = 0

    def expire_pending(self) -> int:
        self.rounds += 1
        return self._ledger.expire_pending()


async def _until(cond: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _counting_checkpoints(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every make_checkpoint call the worker makes (its keyword arguments), then the real one."""
    calls: list[dict[str, Any]] = []
    real = metering.make_checkpoint

    def counted(engine: sa.Engine, sign: Callable[[bytes], str], **kw: Any) -> metering.Checkpoint | None:
        calls.append(kw)
        return real(engine, sign, **kw)

    monkeypatch.setattr(metering, "make_checkpoint", counted)
    return calls


def test_worker_signs_after_n_entries_without_waiting_for_the_period(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting_checkpoints(monkeypatch)
    ledger = Ledger(engine)
    bank = _Bank(ledger)

    async def scenario() -> None:
        task = asyncio.create_task(bank_worker(bank, _sign, 3600.0, 5, poll_s=0.01)())
        try:
            await asyncio.to_thread(_entries, ledger, 4, "few")
            seen = len(calls)
            # several polls with 4 unsigned entries: none of them signs
            await _until(lambda: len(calls) >= seen + 5, "the worker to poll")
            assert _checkpoint_sizes(engine) == []
            await asyncio.to_thread(_entries, ledger, 1, "fifth")
            await _until(lambda: _checkpoint_sizes(engine) != [], "a checkpoint after 5 entries")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert _checkpoint_sizes(engine) == [5]
    assert bank.rounds == 0  # the hour did not pass: the entries alone triggered it
    assert calls and all(kw == {"min_entries": 5} for kw in calls)
    assert verify_audit(engine, verify_signature=_verify) == []


def test_worker_with_entries_zero_signs_by_time_only(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting_checkpoints(monkeypatch)
    ledger = Ledger(engine)
    bank = _Bank(ledger)
    _entries(ledger, 2, "t")

    async def scenario() -> None:
        task = asyncio.create_task(bank_worker(bank, _sign, 0.05, 0, poll_s=0.01)())
        try:
            await _until(lambda: _checkpoint_sizes(engine) != [], "a checkpoint after the period")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert _checkpoint_sizes(engine) == [2]
    assert bank.rounds >= 1
    assert calls and all(kw == {} for kw in calls)  # only the periodic rounds, no entry polling
