"""One hop to a worker thread and back, for the DSP fast lane's blocking part (decision 0411).

``asyncio.to_thread`` goes through :class:`concurrent.futures.ThreadPoolExecutor`: a
``Future`` with its condition variable, the idle-thread semaphore on every submit, then a
second ``Future`` on the event loop chained to the first. A py-spy profile of the negotiation
bench put that bookkeeping at 4-6 % of a connector's CPU, for the one hop of each DSP message.
:class:`ThreadHop` keeps a fixed set of daemon threads on one C-level queue: a call is a
``put`` there and a ``call_soon_threadsafe`` back, nothing else. Context variables are not
carried over (nothing on this path uses them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ThreadHop", "default_hop"]

T = TypeVar("T")

_STOP = object()


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class ThreadHop:
    """``await hop.run(fn)`` runs ``fn()`` in one of ``threads`` worker threads (started on
    first use) and returns its result or raises its exception."""

    def __init__(self, threads: int, name: str = "dadam-hop") -> None:
        if threads < 1:
            raise ValueError("a ThreadHop needs at least one thread")
        self._size = threads
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if not self._threads:
            self._start()
        self._queue.put((fn, functools.partial(_settle, fut), loop))
        return await fut

    def submit(
        self, fn: Callable[[], T], loop: asyncio.AbstractEventLoop, done: Callable[[bool, Any], None]
    ) -> None:
        """Run ``fn()`` in a worker thread, then ``done(True, result)`` or ``done(False,
        exception)`` on ``loop``'s thread: :meth:`run` without a future, for a caller that is a
        callback itself (the lane's HTTP protocol, :mod:`connector.api._protocol`)."""
        if not self._threads:
            self._start()
        self._queue.put((fn, done, loop))

    def _start(self) -> None:
        with self._lock:
            while len(self._threads) < self._size:
                t = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                t.start()
                self._threads.append(t)

    def _work(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            fn, done, loop = item
            try:
                ok, value = True, fn()
            except BaseException as exc:  # handed to the caller, as to_thread does
                ok, value = False, exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(done, ok, value)
            del item, fn, done, loop, value

    def close(self) -> None:
        """Stop the threads once the queued calls are done (for tests; the process's threads
        are daemons otherwise)."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(_STOP)
        for t in threads:
            t.join()


#: The fast lane's hop: as many threads as asyncio's default executor has.
default_hop = ThreadHop(min(32, (os.cpu_count() or 1) + 4), name="dadam-lane")
