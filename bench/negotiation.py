"""Contract negotiation benchmark: two connectors on loopback, PostgreSQL and SQLite.

For each backend, one provider process and one consumer process, each with its own database,
negotiate the full DSP flow (request -> signed agreement -> countersigned verification ->
finalized). Two stacks:

* ``--stack node`` (default): ``python -m contracts._node`` (DSP + management API + outbox worker).
  The caller's DID comes from a header and every offer is open: the negotiation machinery alone.
* ``--stack serve``: two ``dadam serve`` processes as the demo starts them. Every DSP message
  carries a DCP self-issued token that the receiver verifies (did:web key, replay store in the
  database); the provider resolves the offer in its catalog and evaluates the sample Catena-X
  policy against the consumer's recorded claims.

Measured in one run:

* full negotiation latency p50 / p95 (start request on the consumer's management API until the
  consumer's server-sent event says FINALIZED), one negotiation at a time (goal p50 <= 50 ms);
* finalized negotiations per second with ``--concurrency`` negotiations in flight (goal >= 200/s
  on 2 cores), in steady state: after ``--warmup-n`` negotiations at the same concurrency that
  are not measured (every pooled database connection opened, its statements prepared);
* the floor: p50 of one trivial management-API round trip on the same server (ratio = latency
  p50 / floor p50);
* during the throughput run, CPU milliseconds per finalized negotiation (Linux /proc) of the
  provider, the consumer, this load generator and (PostgreSQL) the server's processes, and the
  fraction of the machine's cores that was busy (``machine_steal_fraction``: the part of it the
  hypervisor of a shared VM took for others) and the machine's context switches per negotiation
  (``context_switches_per_negotiation``); ``cpu_bound_per_s_on_2_cores`` is
  2000 / (provider + consumer CPU ms), what 2 cores could do for the connectors alone;
* ``calibration_python_ms``: CPU ms of a fixed pure-Python workload in this process, to compare
  figures taken on different machines (or days: the development machines are shared VMs whose
  speed has differed by 2.5x between sessions) as ratios.

To compare two versions of the code, ``bench/negotiation_ab.py`` runs both at once and
alternates the load between them (one run here: ratios within 2-3 % for identical code).

Run: ``.venv/bin/python bench/negotiation.py`` (about 1-2 min; ``--backends sqlite`` to skip
PostgreSQL, ``--stack serve`` for the deployed connector). PostgreSQL comes from
``DADAM_TEST_PG_URL`` (default 127.0.0.1:5432, user postgres). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
# this folder holds catalog.py (another benchmark): it must not hide the catalog package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
#: the connectors' outbox sender (``--sender``)
SENDER = "direct"
#: the DSP fast lane (``--no-fast-lane`` turns it off)
FAST_LANE = True
PG_ADMIN_URL = os.environ.get("DADAM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process used so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ms_per(pid: int, before: float | None, n: int) -> float | None:
    after = cpu_s(pid)
    if before is None or after is None:
        return None
    return round((after - before) / n * 1000, 2)


def postgres_cpu_s() -> float | None:
    """CPU seconds used so far by the local PostgreSQL server: every process named ``postgres``
    (user + system), plus, for the postmaster, what its exited children used (cutime + cstime):
    a backend that exits during a run (a pool closing) keeps counting."""
    total, seen = 0.0, False
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            head, tail = (d / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[1] != "postgres":
            continue
        fields = tail.split()
        ticks = int(fields[11]) + int(fields[12])
        if fields[1] == "1" or _parent_name(int(fields[1])) != "postgres":  # the postmaster
            ticks += int(fields[13]) + int(fields[14])
        total += ticks / os.sysconf("SC_CLK_TCK")
        seen = True
    return total if seen else None


def _parent_name(pid: int) -> str | None:
    try:
        head = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[0]
    except OSError:
        return None
    return head.split("(", 1)[1]


def machine_busy() -> tuple[float, float, float, float] | None:
    """(busy, total, steal) jiffies of all cores and the context switches so far, from
    /proc/stat; None where it is missing.

    busy counts everything but idle and I/O wait, steal included (as it always has, so figures
    stay comparable); steal is the time the hypervisor gave this VM's cores to someone else.
    """
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    v = [int(x) for x in lines[0].split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    steal = v[7] if len(v) > 7 else 0
    ctxt = next((float(line.split()[1]) for line in lines if line.startswith("ctxt ")), 0.0)
    return float(sum(v) - idle), float(sum(v)), float(steal), ctxt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, name: str, db: str, tmp: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.did = f"did:web:127.0.0.1%3A{self.port}"
        cmd = [
            sys.executable, "-m", "contracts._node", "--name", name, "--did", self.did, "--db", db,
            "--port", str(self.port), "--worker", "--migrate",
            "--key-file", str(tmp / f"{name}.key"), "--keys-dir", str(tmp / "keys"), *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=ROOT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/mgmt/negotiations?limit=1", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{name} did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Finalized:
    """Follows the consumer's SSE stream; ``wait(id)`` returns when that negotiation ended."""

    def __init__(self, mgmt: str, headers: dict[str, str]) -> None:
        self.headers = headers
        self.done: dict[str, tuple[float, str]] = {}
        #: one event per waiting load thread: a Condition's notify_all woke all 32 of them for
        #: every outcome, and those wake-ups cost this process (and the shared cores) CPU
        self.waiters: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.stop = False
        self.thread = threading.Thread(target=self._run, args=(mgmt,), daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self, url: str) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server stops at the end of the run
            self._follow(url)

    def _follow(self, url: str) -> None:
        with (
            httpx.Client(timeout=None, headers=self.headers) as c,
            # a client waiting for outcomes asks for them only (the stream's state filter)
            c.stream("GET", f"{url}/negotiations/events", params={"state": "FINALIZED,TERMINATED"}) as r,
        ):
            self.ready.set()
            for line in r.iter_lines():
                if self.stop:
                    return
                if not line.startswith("data: "):
                    continue
                ev = json.loads(line[6:])
                if ev["state"] in ("FINALIZED", "TERMINATED"):
                    with self.lock:
                        self.done[ev["id"]] = (time.perf_counter(), ev["state"])
                        waiter = self.waiters.pop(ev["id"], None)
                    if waiter is not None:
                        waiter.set()

    def wait(self, nid: str, timeout: float = 30) -> tuple[float, str]:
        with self.lock:
            if nid in self.done:
                return self.done[nid]
            waiter = self.waiters.setdefault(nid, threading.Event())
        if not waiter.wait(timeout):
            with self.lock:
                self.waiters.pop(nid, None)
                if nid in self.done:
                    return self.done[nid]
            raise TimeoutError(f"{nid} did not finish")
        return self.done[nid]


class NodePair:
    """``--stack node``: two ``python -m contracts._node`` processes. The caller's DID comes from a
    header (no tokens), every offer is open: the negotiation machinery alone."""

    def __init__(self, make_db: Any, tmp: Path) -> None:
        extra = ["--sender", SENDER, *([] if FAST_LANE else ["--no-fast-lane"])]
        self.provider = Node("provider", make_db(), tmp, *extra)
        try:
            self.consumer = Node("consumer", make_db(), tmp, *extra)
        except BaseException:
            self.provider.stop()
            raise
        self.provider_pid = self.provider.proc.pid
        self.consumer_pid = self.consumer.proc.pid
        self.mgmt = self.consumer.url + "/mgmt"
        self.headers: dict[str, str] = {}

    def body(self, tag: str) -> dict[str, Any]:
        dataset = f"ds-{tag}"
        return {
            "counterPartyAddress": self.provider.url + "/dsp",
            "counterPartyId": self.provider.did,
            "offer": {"@id": f"cd1:{dataset}:v1", "target": dataset, "permission": [{"action": "use"}]},
        }

    def stop(self) -> None:
        self.consumer.stop()
        self.provider.stop()


class ServePair:
    """``--stack serve``: two ``dadam serve`` processes as the demo runs them. Every DSP message
    carries a DCP self-issued token that the peer verifies against the sender's did:web key; the
    provider resolves the offer in its catalog and evaluates the sample Catena-X policy against the
    consumer's recorded claims. All negotiations are for the demo's carbon-footprint offer."""

    def __init__(self, make_db: Any, tmp: Path) -> None:
        from connector import _demo

        self._demo = _demo
        env = {
            "DADAM_DSP_SENDER": SENDER,
            "DADAM_DSP_FAST_LANE": str(FAST_LANE).lower(),
            # the code of ROOT (bench/negotiation_ab.py points it at another checkout)
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        self.provider = _demo.start_node(
            "provider", tmp / "provider", env={"DADAM_DATABASE_URL": make_db(), **env}
        )
        self.consumer = _demo.start_node(
            "consumer", tmp / "consumer", env={"DADAM_DATABASE_URL": make_db(), **env}
        )
        try:
            _demo.wait_ready(self.provider)
            _demo.wait_ready(self.consumer)
            _demo.seed_provider(self.provider)
            _demo.record_partner(self.provider, self.consumer)
            catalog = _demo.fetch_catalog(self.consumer, self.provider)
        except BaseException:
            self.stop()
            raise
        pcf = next(d for d in catalog["dataset"] if d["@id"] == "pcf-brake-disc-bd330v")
        # the offer as the catalog showed it, with its target: what a client that read the catalog
        # once sends (``offerId`` alone makes the consumer fetch the dataset again each time)
        self.offer = {**pcf["hasPolicy"][0], "target": pcf["@id"]}
        assert self.provider.proc is not None and self.consumer.proc is not None
        self.provider_pid = self.provider.proc.pid
        self.consumer_pid = self.consumer.proc.pid
        self.mgmt = self.consumer.mgmt_url
        self.headers = {"X-Api-Key": _demo.API_KEY}

    def body(self, tag: str) -> dict[str, Any]:
        return {
            "counterPartyAddress": self.provider.dsp_url,
            "counterPartyId": self.provider.did,
            "offer": self.offer,
        }

    def stop(self) -> None:
        self._demo.stop_node(self.consumer)
        self._demo.stop_node(self.provider)


def start(client: httpx.Client, pair: NodePair | ServePair, tag: str) -> str:
    r = client.post("/negotiations", json=pair.body(tag))
    if r.status_code >= 400:
        raise RuntimeError(f"starting a negotiation failed with {r.status_code}: {r.text[:500]}")
    return str(r.json()["id"])


class Starter:
    """Starts negotiations over one keep-alive ``http.client`` connection (one per load thread).

    The load generator shares the 2 cores with the connectors: with httpx it used about 0.4 ms
    of CPU per start request, http.client about 0.1 ms (decision 0404 has the measurements)."""

    def __init__(self, pair: NodePair | ServePair) -> None:
        url = httpx.URL(pair.mgmt)
        self.pair = pair
        self.path = url.path.rstrip("/") + "/negotiations"
        self.conn = http.client.HTTPConnection(url.host, url.port, timeout=60)
        self.headers = {"Content-Type": "application/json", **pair.headers}

    def __call__(self, tag: str) -> str:
        body = json.dumps(self.pair.body(tag))
        try:
            self.conn.request("POST", self.path, body, self.headers)
            r = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # the server had closed the idle keep-alive connection (uvicorn: after 5 s) without
            # reading this request: send it once more on a new connection
            self.conn.close()
            self.conn.request("POST", self.path, body, self.headers)
            r = self.conn.getresponse()
        data = r.read()
        if r.status >= 400:
            raise RuntimeError(f"starting a negotiation failed with {r.status}: {data[:500]!r}")
        return str(json.loads(data)["id"])

    def close(self) -> None:
        self.conn.close()


def run_backend(
    name: str,
    stack: str,
    make_db: Any,
    n_latency: int,
    n_throughput: int,
    concurrency: int,
    n_warmup: int = 0,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pair = ServePair(make_db, tmp) if stack == "serve" else NodePair(make_db, tmp)
        try:
            fin = Finalized(pair.mgmt, pair.headers)
            client = httpx.Client(base_url=pair.mgmt, headers=pair.headers, timeout=30)
            # warm-up
            for i in range(10):
                nid = start(client, pair, f"warm{i}")
                assert fin.wait(nid)[1] == "FINALIZED", client.get(f"/negotiations/{nid}").text
            floor = []
            floor_cpu = cpu_s(pair.consumer_pid)
            for _ in range(50):
                t0 = time.perf_counter()
                client.get("/negotiations?limit=1").raise_for_status()
                floor.append(time.perf_counter() - t0)
            floor_cpu_ms = cpu_ms_per(pair.consumer_pid, floor_cpu, 50)
            lat = []
            for i in range(n_latency):
                t0 = time.perf_counter()
                nid = start(client, pair, f"lat{i}")
                t1, state = fin.wait(nid)
                assert state == "FINALIZED", client.get(f"/negotiations/{nid}").text
                lat.append(t1 - t0)
            # Steady state, not start-up: a first batch at the same concurrency, not measured.
            # The sequential runs above use one or two of each connector's pooled database
            # connections; the others are opened and their statements prepared (and planned
            # anew for their first executions) under load, which took 5-20 % off a short run.
            if n_warmup:
                load(pair, fin, "wu", n_warmup, concurrency)
            cpu0 = (cpu_s(pair.provider_pid), cpu_s(pair.consumer_pid))
            driver0, pg0, busy0 = time.process_time(), postgres_cpu_s(), machine_busy()
            t0 = time.perf_counter()
            ids = load(pair, fin, "tp", n_throughput, concurrency)
            elapsed = time.perf_counter() - t0
            driver_cpu = round((time.process_time() - driver0) / n_throughput * 1000, 2)
            pg1, busy1 = postgres_cpu_s(), machine_busy()
            pg_cpu = (
                round((pg1 - pg0) / n_throughput * 1000, 2)
                if name == "postgres" and pg0 is not None and pg1 is not None
                else None
            )
            busy = steal = switches = None
            if busy0 is not None and busy1 is not None and busy1[1] > busy0[1]:
                span = busy1[1] - busy0[1]
                busy = round((busy1[0] - busy0[0]) / span, 2)
                steal = round((busy1[2] - busy0[2]) / span, 2)
                switches = round((busy1[3] - busy0[3]) / n_throughput, 1)
            provider_cpu = cpu_ms_per(pair.provider_pid, cpu0[0], n_throughput)
            consumer_cpu = cpu_ms_per(pair.consumer_pid, cpu0[1], n_throughput)
            finalized = sum(1 for nid in ids if fin.done.get(nid, (0, ""))[1] == "FINALIZED")
            fin.stop = True
            lat_ms = sorted(x * 1000 for x in lat)
            p50 = statistics.median(lat_ms)
            p95 = lat_ms[max(0, int(len(lat_ms) * 0.95) - 1)]
            floor_p50 = statistics.median(floor) * 1000
            res = {
                "backend": name,
                "stack": stack,
                "latency_p50_ms": round(p50, 1),
                "latency_p95_ms": round(p95, 1),
                "floor_roundtrip_p50_ms": round(floor_p50, 2),
                "latency_over_floor": round(p50 / floor_p50, 1),
                "throughput_per_s": round(finalized / elapsed, 1),
                "throughput_n": n_throughput,
                "throughput_warmup_n": n_warmup,
                "throughput_finalized": finalized,
                "concurrency": concurrency,
                # CPU per finalized negotiation in each connector during the throughput phase,
                # and of one trivial management request (a DB read): what 2 cores can sustain
                # is bounded by 2000 / (provider + consumer CPU ms).
                "provider_cpu_ms_per_negotiation": provider_cpu,
                "consumer_cpu_ms_per_negotiation": consumer_cpu,
                # the load generator (this process: 32 client threads + the SSE reader) and,
                # on PostgreSQL, the server's processes share the same cores
                "driver_cpu_ms_per_negotiation": driver_cpu,
                "postgres_cpu_ms_per_negotiation": pg_cpu,
                "machine_busy_fraction": busy,
                # of which the hypervisor gave to other VMs (shared development machines: vmstat
                # showed 10-15 % under this load once); nothing here ran in those cycles
                "machine_steal_fraction": steal,
                # context switches of the whole machine per negotiation: thread hand-offs (lock
                # waits, wake-ups), which cost the kernel and the caches more than they show
                "context_switches_per_negotiation": switches,
                "floor_request_cpu_ms": floor_cpu_ms,
                "cpu_bound_per_s_on_2_cores": (
                    round(2000 / (provider_cpu + consumer_cpu), 1) if provider_cpu and consumer_cpu else None
                ),
            }
            print(json.dumps(res), flush=True)
            return res
        finally:
            pair.stop()


def load(pair: NodePair | ServePair, fin: Finalized, tag: str, n: int, concurrency: int) -> list[str]:
    """Start ``n`` negotiations with ``concurrency`` in flight (one ``Starter`` per load thread)
    and wait for each to end; returns their ids."""
    ids: list[str] = []
    local = threading.local()
    starters: list[Starter] = []

    def one(i: int) -> None:
        starter = getattr(local, "starter", None)
        if starter is None:
            starter = local.starter = Starter(pair)
            starters.append(starter)
        nid = starter(f"{tag}{i}")
        ids.append(nid)
        fin.wait(nid, timeout=120)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    for s in starters:
        s.close()
    return ids


@contextlib.contextmanager
def databases(prefix: str) -> Iterator[Callable[[str], str]]:
    """A factory ``make(backend)`` of fresh database URLs (``postgres``: a new database on
    ``DADAM_TEST_PG_URL``; ``sqlite``: a new file), all dropped or removed at the end."""
    admin = sa.create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    created: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as sqlite_dir:

        def make(backend: str) -> str:
            if backend == "sqlite":
                return f"sqlite:///{sqlite_dir}/{uuid.uuid4().hex[:8]}.db"
            name = f"{prefix.replace('-', '_')}_{uuid.uuid4().hex[:10]}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            created.append(name)
            return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"

        try:
            yield make
        finally:
            if created:
                with admin.connect() as conn:
                    for name in created:
                        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def calibration_ms() -> float:
    """CPU ms of a fixed pure-Python workload (dicts, strings, JSON), median of 5: how fast this
    machine runs Python today. Figures of two machines (or two days on a shared one) compare as
    "CPU ms per negotiation / calibration_ms"."""
    doc = {"@id": "urn:uuid:0", "state": "REQUESTED", "items": list(range(20))}
    times = []
    for _ in range(5):
        t0 = time.process_time()
        for i in range(20_000):
            d = dict(doc, n=i)
            json.loads(json.dumps(d))
            f"{i}:{d['state'].lower()}".split(":")
        times.append(time.process_time() - t0)
    return round(statistics.median(times) * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--backends",
        default="postgres,sqlite",
        help="comma-separated: postgres (or postgresql), sqlite",
    )
    ap.add_argument("--latency-n", type=int, default=100)
    ap.add_argument("--throughput-n", type=int, default=500)
    ap.add_argument(
        "--warmup-n",
        type=int,
        default=300,
        help="negotiations run at --concurrency before the throughput run, not measured (0: none)",
    )
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument(
        "--stack",
        choices=("node", "serve"),
        default="node",
        help="node: the contracts test node (no tokens, open offers); serve: dadam serve as deployed",
    )
    ap.add_argument(
        "--sender",
        choices=("direct", "httpx"),
        default="direct",
        help="how the connectors send DSP messages (DADAM_DSP_SENDER; decision 0404)",
    )
    ap.add_argument(
        "--no-fast-lane",
        action="store_true",
        help="serve DSP POSTs through FastAPI only (DADAM_DSP_FAST_LANE=false; decision 0405)",
    )
    args = ap.parse_args()
    aliases = {"postgres": "postgres", "postgresql": "postgres", "sqlite": "sqlite"}
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in aliases]
    if unknown or not backends:
        ap.error(f"--backends: unknown {', '.join(unknown) or '(empty)'}; use postgres, sqlite")
    backends = [aliases[b] for b in backends]
    global SENDER, FAST_LANE
    SENDER = args.sender
    FAST_LANE = not args.no_fast_lane
    results = {}
    with databases("dadam-bench") as make:
        for backend in backends:
            results[backend] = run_backend(
                backend,
                args.stack,
                functools.partial(make, backend),
                args.latency_n,
                args.throughput_n,
                args.concurrency,
                args.warmup_n,
            )
    summary: dict[str, Any] = {
        "bench": "negotiation",
        "stack": args.stack,
        "cores": os.cpu_count(),
        "calibration_python_ms": calibration_ms(),
    }
    for b, r in results.items():
        for k, v in r.items():
            if k not in ("backend", "stack"):
                summary[f"{b}_{k}"] = v
    summary["goal_p50_ms"] = 50
    summary["goal_per_s"] = 200
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
