"""The fast lane's hop to a worker thread (connector.api._hop)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from connector.api._hop import ThreadHop


def test_a_call_runs_in_a_worker_thread_and_gives_its_result_or_its_exception() -> None:
    hop = ThreadHop(2, name="test-hop")

    def boom() -> None:
        raise LookupError("from the worker")

    async def go() -> None:
        loop_thread = threading.get_ident()
        ran_in = await hop.run(threading.get_ident)
        assert ran_in != loop_thread
        assert await hop.run(lambda: 41 + 1) == 42
        with pytest.raises(LookupError, match="from the worker"):
            await hop.run(boom)
        assert await hop.run(lambda: "still serving") == "still serving"

    try:
        asyncio.run(go())
    finally:
        hop.close()


def test_calls_run_side_by_side_up_to_the_thread_count() -> None:
    hop = ThreadHop(3, name="test-hop")
    inside = 0
    most = 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)
        with lock:
            inside -= 1

    async def go() -> None:
        await asyncio.gather(*(hop.run(slow) for _ in range(9)))

    try:
        asyncio.run(go())
    finally:
        hop.close()
    assert most == 3


def test_a_cancelled_wait_leaves_the_hop_working() -> None:
    hop = ThreadHop(1, name="test-hop")
    release = threading.Event()

    async def go() -> None:
        waiting = asyncio.ensure_future(hop.run(lambda: release.wait(5)))
        await asyncio.sleep(0.01)
        waiting.cancel()
        release.set()  # the call finishes after its waiter left: its result is dropped
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await hop.run(lambda: "next") == "next"

    try:
        asyncio.run(go())
    finally:
        hop.close()


def test_a_hop_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        ThreadHop(0)
