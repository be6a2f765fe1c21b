"""Separate processes on loopback: two connectors end to end; three provider workers with kill -9.

Processes are ``python -m contracts._node`` (peers identified by a loopback-only header); every
process is stopped by its pid at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from threaded_server import free_port

from connector.store import create_engine
from contracts._process import inbox, outbox
from contracts._tables import negotiations

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    def __init__(
        self, name: str, did: str, db: str, tmp: Path, *, port: int = 0, args: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        cmd = [
            sys.executable, "-m", "contracts._node", "--name", name, "--did", did, "--db", db,
            "--key-file", str(tmp / f"{did.rsplit(':', 1)[-1]}.key"), "--keys-dir", str(tmp / "keys"),
            "--port", str(port), *args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=ROOT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def _wait_up(url: str) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/mgmt/negotiations?limit=1", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def _start(url: str, provider_url: str, provider_did: str, dataset: str) -> str:
    r = httpx.post(
        f"{url}/mgmt/negotiations",
        json={
            "counterPartyAddress": provider_url + "/dsp",
            "counterPartyId": provider_did,
            "offer": {"@id": f"cd1:{dataset}:v1", "target": dataset, "permission": [{"action": "use"}]},
        },
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _counts(db: str) -> dict[str, int]:
    eng = create_engine(db)
    try:
        with eng.connect() as conn:
            rows = conn.execute(
                sa.select(negotiations.c.state, sa.func.count()).group_by(negotiations.c.state)
            ).all()
        return {str(s): int(n) for s, n in rows}
    finally:
        eng.dispose()


def _wait_terminal(db: str, n: int, timeout: float) -> dict[str, int]:
    deadline = time.time() + timeout
    counts: dict[str, int] = {}
    while time.time() < deadline:
        counts = _counts(db)
        if counts.get("1200", 0) + counts.get("1400", 0) >= n:
            return counts
        time.sleep(0.5)
    raise AssertionError(f"not all {n} negotiations ended in {timeout} s: {counts}")


def test_two_connector_processes_negotiate(
    db_urls: Callable[[], str], tmp_path: Path, procs: list[Proc]
) -> None:
    pport, cport = free_port(), free_port()
    pdid, cdid = f"did:web:127.0.0.1%3A{pport}", f"did:web:127.0.0.1%3A{cport}"
    pdb, cdb = db_urls(), db_urls()
    procs.append(Proc("provider", pdid, pdb, tmp_path, port=pport, args=("--worker", "--migrate")))
    procs.append(Proc("consumer", cdid, cdb, tmp_path, port=cport, args=("--worker", "--migrate")))
    purl, curl = f"http://127.0.0.1:{pport}", f"http://127.0.0.1:{cport}"
    _wait_up(purl)
    _wait_up(curl)
    ids = [_start(curl, purl, pdid, f"ds{i}") for i in range(5)]
    counts = _wait_terminal(cdb, 5, 60)
    assert counts == {"1200": 5}, counts
    for nid in ids:
        view = httpx.get(f"{curl}/mgmt/negotiations/{nid}").json()
        assert view["state"] == "FINALIZED" and view["signedBy"] == ["provider", "consumer"]
    assert _wait_terminal(pdb, 5, 30) == {"1200": 5}


N = int(os.environ.get("DADAM_CN_LOAD_N", "1000"))


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_three_provider_workers_survive_kill_9(
    tmp_path: Path, procs: list[Proc], pg_databases: Callable[[], str]
) -> None:
    make = pg_databases
    pport, cport = free_port(), free_port()
    pdid, cdid = f"did:web:127.0.0.1%3A{pport}", f"did:web:127.0.0.1%3A{cport}"
    pdb, cdb = make(), make()
    purl, curl = f"http://127.0.0.1:{pport}", f"http://127.0.0.1:{cport}"
    # Provider: one API process that sends nothing itself, three worker processes that send.
    procs.append(Proc("provider-api", pdid, pdb, tmp_path, port=pport, args=("--migrate", "--no-dispatch")))
    _wait_up(purl)
    workers = [
        Proc(f"provider-w{i}", pdid, pdb, tmp_path, args=("--worker", "--lease", "3", "--poll", "0.05"))
        for i in range(3)
    ]
    procs.extend(workers)
    procs.append(Proc("consumer", cdid, cdb, tmp_path, port=cport, args=("--worker", "--migrate")))
    _wait_up(curl)
    t0 = time.time()
    killed_at = None
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(_start, curl, purl, pdid, f"ds{i}") for i in range(N)]
        # Kill one worker mid-run, once a third of the negotiations finished.
        while killed_at is None and time.time() - t0 < 600:
            if _counts(cdb).get("1200", 0) >= N // 3:
                os.kill(workers[0].proc.pid, signal.SIGKILL)
                workers[0].proc.wait()
                killed_at = time.time() - t0
            time.sleep(0.2)
        for f in futures:
            f.result()
    assert killed_at is not None, "the run ended before the kill"
    try:
        consumer_counts = _wait_terminal(cdb, N, 600)
        provider_counts = _wait_terminal(pdb, N, 120)
    finally:
        for p in procs:  # before the databases are dropped
            p.stop()
    elapsed = time.time() - t0
    print(f"\n{N} negotiations, 3 provider workers (one killed at {killed_at:.1f} s): {elapsed:.1f} s")
    assert consumer_counts == {"1200": N}, consumer_counts
    assert provider_counts == {"1200": N}, provider_counts
    peng, ceng = create_engine(pdb), create_engine(cdb)
    try:
        with peng.connect() as conn:
            sent = conn.execute(sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)).all()
            resent = conn.execute(sa.select(sa.func.count()).where(outbox.c.attempts > 1)).scalar_one()
            p_inbox = conn.execute(sa.select(sa.func.count()).select_from(inbox)).scalar_one()
        with ceng.connect() as conn:
            c_inbox = conn.execute(sa.select(sa.func.count()).select_from(inbox)).scalar_one()
    finally:
        peng.dispose()
        ceng.dispose()
    # Every provider message (agreement, finalized) delivered exactly once as far as state goes:
    # the consumer recorded exactly two distinct received messages per negotiation.
    assert dict(sent) == {"sent": 2 * N}, dict(sent)
    assert c_inbox == 2 * N and p_inbox == 2 * N
    print(f"provider messages needing a resend after the kill: {resent}")
