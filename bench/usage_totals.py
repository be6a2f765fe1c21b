"""What enforcement pays to read an agreement's use so far, as its history grows.

The data plane checks ``count`` / ``elapsedTime`` constraints on every request. It used to sum all of
the agreement's usage events (``count``, ``min(started_at)``, ``sum(bytes)``); it now reads one row of
running totals kept by :func:`metering.record_usage_events`. Both are timed here on the same data
(the sum is the floor's opposite: what the old query cost), at 1,000 and 100,000 events.

Run: ``.venv/bin/python bench/usage_totals.py [--no-pg] [--events 1000,100000]``. PostgreSQL from
``DADAM_TEST_PG_URL`` (default 127.0.0.1:5432, user postgres; a scratch database is created and
dropped). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from connector.store import create_engine, migrate
from metering import UsageEvent, record_usage_events, usage_so_far
from metering._tables import usage_events

PG_ADMIN_URL = os.environ.get("DADAM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _per_call_ms(f: Callable[[], Any], n: int = 200) -> float:
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1000


def run(url: str, name: str, sizes: list[int]) -> dict[str, float]:
    eng = create_engine(url)
    migrate(eng)
    out: dict[str, float] = {}
    summed = sa.select(
        sa.func.count(),
        sa.func.min(usage_events.c.started_at),
        sa.func.coalesce(sa.func.sum(usage_events.c.bytes), 0),
    ).where(usage_events.c.agreement_id == "agr", usage_events.c.outcome == "ok")
    have = 0
    try:
        for size in sizes:
            events = [
                UsageEvent(
                    f"ev-{i}", "agr", "tp", "ds", "carbon", 4096, 10, 1, float(i), float(i), "ok", "c", "p"
                )
                for i in range(have, size)
            ]
            with eng.begin() as conn:
                for k in range(0, len(events), 5_000):
                    record_usage_events(conn, events[k : k + 5_000])
            have = size
            with eng.connect() as conn:
                old = conn.execute(summed).one()
                new = usage_so_far(conn, "agr")
                if (int(old[0]), float(old[1]), int(old[2])) != new:
                    raise SystemExit(f"totals {new} differ from the events {tuple(old)}")
                sum_ms = _per_call_ms(lambda: conn.execute(summed).one())
                totals_ms = _per_call_ms(lambda: usage_so_far(conn, "agr"))
            print(
                f"{name:8} {size:>8,} events: sum over events {sum_ms:8.3f} ms, running totals {totals_ms:6.3f} ms"
            )
            out[f"{name}_{size}_sum_ms"] = round(sum_ms, 3)
            out[f"{name}_{size}_totals_ms"] = round(totals_ms, 3)
            out[f"{name}_{size}_ratio"] = round(sum_ms / totals_ms, 1)
    finally:
        eng.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--events", default="1000,100000")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.events.split(","))
    figures: dict[str, Any] = {"bench": "usage_totals"}
    with tempfile.TemporaryDirectory() as tmp:
        figures |= run(f"sqlite:///{Path(tmp, 'bench.db').as_posix()}", "sqlite", sizes)
    if not args.no_pg:
        admin = sa.create_engine(
            PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
        )
        db = f"dadam_bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
        try:
            figures |= run(f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{db}", "postgres", sizes)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            admin.dispose()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
