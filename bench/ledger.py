"""Ledger benchmark on PostgreSQL and SQLite, with raw-SQL floors measured in the same run.

Usage: ``.venv/bin/python bench/ledger.py [--pg URL] [--seconds 3] [--batches 10]``
(``--pg`` defaults to ``postgresql://postgres@127.0.0.1:5432/postgres``; a scratch database is
created and dropped; ``--no-pg`` skips PostgreSQL). Figures:

* single-transfer commits/s (one transfer per transaction, one thread) vs a raw single-row
  INSERT+COMMIT floor on the same connection type, and the same single transfers from 32 concurrent
  callers through :class:`metering.LedgerBatcher` (group commit: each caller still waits for its commit);
* batched transfers/s with batches of 1,000 over 1,000 accounts (uniform) and with every transfer
  touching one hot account;
* usage-event ingest/s with dedupe (batches of 1,000, every batch sent twice).

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from connector.store import create_engine, migrate
from metering import Account, Ledger, LedgerBatcher, Transfer, UsageEvent, record_usage_events


def _raw_floor(engine: sa.Engine, seconds: float) -> float:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS bench_floor (id varchar(64) primary key, amount bigint)"
        )
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO bench_floor VALUES (:i, 1)"), {"i": uuid.uuid4().hex})
        n += 1
    return n / (time.perf_counter() - start)


def run(engine: sa.Engine, name: str, seconds: float, batches: int) -> dict[str, Any]:
    migrate(engine)
    lg = Ledger(engine)
    lg.create_accounts([Account("bank", "EUR")] + [Account(f"a{i}", "EUR") for i in range(1000)])
    floor = _raw_floor(engine, seconds)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        lg.create_transfer(Transfer(uuid.uuid4().hex, "bank", f"a{n % 1000}", 1, "EUR"))
        n += 1
    single = n / (time.perf_counter() - start)

    def batch_rate(hot: bool) -> float:
        t0 = time.perf_counter()
        for _ in range(batches):
            b = [
                Transfer(uuid.uuid4().hex, "bank" if hot else f"a{(k * 7) % 1000}", f"a{(k * 13 + 1) % 1000}" if not hot else f"a{k % 1000}", 1, "EUR")
                for k in range(1000)
            ]  # fmt: skip
            b = [t for t in b if t.debit_account_id != t.credit_account_id]
            lg.create_transfers(b)
        return batches * 1000 / (time.perf_counter() - t0)

    # the same single-transfer commits from 32 concurrent callers, grouped into batches
    batcher = LedgerBatcher(lg)
    done = [0]
    stop_at = time.perf_counter() + seconds

    def caller(n: int) -> None:
        k = 0
        while time.perf_counter() < stop_at:
            batcher.submit(Transfer(uuid.uuid4().hex, "bank", f"a{(n * 31 + k) % 1000}", 1, "EUR"))
            k += 1
        with lock:
            done[0] += k

    lock = threading.Lock()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(n,)) for n in range(32)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    grouped = done[0] / (time.perf_counter() - t0)
    batcher.close()

    uniform = batch_rate(hot=False)
    hot = batch_rate(hot=True)
    t0, events = time.perf_counter(), 0
    for _ in range(batches):
        evs = [
            UsageEvent(uuid.uuid4().hex, "agr", "tp", "ds", "carbon", 4096, 10, 1, 0.0, 0.0, "ok", "c", "p")
            for _ in range(1000)
        ]
        for _repeat in range(2):  # every batch arrives twice: the second is deduplicated
            with engine.begin() as conn:
                record_usage_events(conn, evs)
        events += len(evs)
    ingest = events / (time.perf_counter() - t0)
    problems = lg.check_invariants()
    figures = {
        f"{name}_raw_single_insert_commits_per_s": round(floor),
        f"{name}_single_transfer_commits_per_s": round(single),
        f"{name}_single_transfers_32_callers_group_commit_per_s": round(grouped),
        f"{name}_batched_transfers_per_s": round(uniform),
        f"{name}_batched_hot_account_transfers_per_s": round(hot),
        f"{name}_hot_vs_uniform": round(hot / uniform, 2),
        f"{name}_usage_events_ingested_per_s_with_dedupe": round(ingest),
        f"{name}_invariants_ok": not problems,
    }
    for k, v in figures.items():
        print(f"{k}: {v}")
    return figures


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--no-pg", action="store_true")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--batches", type=int, default=10)
    args = p.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        eng = create_engine(f"sqlite:///{(Path(tmp) / 'bench.db').as_posix()}")
        out |= run(eng, "sqlite", args.seconds, args.batches)
        eng.dispose()
    if not args.no_pg:
        name = f"dadam_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(
            args.pg.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            eng = create_engine(args.pg.rsplit("/", 1)[0] + "/" + name)
            out |= run(eng, "postgres", args.seconds, args.batches)
            eng.dispose()
        finally:
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
