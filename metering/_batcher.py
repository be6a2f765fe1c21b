"""Group commit for single transfers: many callers, one transaction per batch (as TigerBeetle does).

Each :meth:`LedgerBatcher.submit` blocks until its transfer is committed and returns its own result
code, exactly as :meth:`Ledger.create_transfer` would; concurrent submissions are gathered (up to
``max_batch``, waiting at most ``max_wait_s`` for more) and applied with one
:meth:`Ledger.create_transfers`. Linked transfers are refused here: a chain must be submitted as one
batch, or a caller's transfer would be chained to a stranger's.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from connector.errors import ValidationError
from metering._ledger import Ledger, Result, Transfer, TransferFlags

__all__ = ["LedgerBatcher"]


class LedgerBatcher:
    """A background thread that commits concurrently submitted transfers in batches."""

    def __init__(self, ledger: Ledger, *, max_batch: int = 1000, max_wait_s: float = 0.002) -> None:
        self.ledger = ledger
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[tuple[Transfer, Future[Result]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ledger-batcher", daemon=True)
        self._thread.start()

    def submit(self, transfer: Transfer, timeout: float | None = 30.0) -> Result:
        """Commit ``transfer`` (in some batch) and return its result."""
        if transfer.flags & TransferFlags.LINKED:
            raise ValidationError("linked transfers must be created together with create_transfers()")
        fut: Future[Result] = Future()
        self._queue.put((transfer, fut))
        return fut.result(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=self.max_wait_s)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                results = self.ledger.create_transfers([t for t, _ in batch])
            except Exception as exc:  # the database failed: every caller learns it, nothing is half-done
                for _, fut in batch:
                    fut.set_exception(exc)
            else:
                for (_, fut), res in zip(batch, results, strict=True):
                    fut.set_result(res)
            if stop:
                return
