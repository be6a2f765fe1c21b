"""Garbage-collector settings for long-running server processes (``dadam serve``, ``dadam
dataplane``, ``python -m contracts._node``).

A request allocates thousands of container objects; with CPython's default threshold (a
young-generation collection every 700 net allocations) the collector ran about 7 times per
negotiation in each connector, and every full collection walked the ~130,000 objects that imports
and app construction leave behind (a py-spy profile of ``bench/negotiation.py`` showed
``gc_collect_main`` at 6-7 % of the connectors' CPU). Call :func:`tune_for_serving` once, after the
app is built and before serving: it moves the objects alive at that point out of the collector's
sight (``gc.freeze``) and collects the young generation less often. Nothing else changes: cyclic
garbage made while serving is still collected.
"""

from __future__ import annotations

import gc

__all__ = ["GEN0_THRESHOLD", "tune_for_serving"]

#: Net container allocations between two young-generation collections (CPython's default: 700).
GEN0_THRESHOLD = 10_000


def tune_for_serving() -> None:
    """Freeze the start-up heap and raise the young-generation threshold (call once per process)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
