"""Catalog benchmark: 10,000 datasets.

Measures, in one run and on one machine:

* building the compact DSP JSON of a 100-dataset page and of the full catalog with
  ``CatalogService.catalog`` against ``json.dumps`` of the same dict (the floor; goal: ratio <= 2);
  both "warm" (fragments cached, the steady state) and "cold" (first build of those datasets'
  fragments after a catalog change);
* the snapshot rebuild after a catalog change (reload of all rows);
* first-page p50 over HTTP: ``POST <dsp>/catalog/request?limit=100`` against uvicorn with one worker
  (goal: <= 15 ms), sequential requests from one client on the same machine. The served app has no
  identity service (anonymous DSP callers): this is the catalog path without DCP token checks.

Run: ``.venv/bin/python bench/catalog.py`` (about 30-60 s). The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# this file is named like the package it measures: keep its folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402

from catalog import (  # noqa: E402
    CatalogService,
    CatalogStore,
    Category,
    ContractDefinition,
    Dataset,
    DatasetSelector,
    PolicyDefinition,
    PolicyEngineEvaluator,
)
from catalog.samples import sample_datasets  # noqa: E402
from connector.identity import Caller  # noqa: E402
from connector.store import create_engine, migrate  # noqa: E402

N = 10_000
PAGE = 100
CALLER = Caller(did="did:web:bench.example")
CATEGORIES = list(Category)


def _datasets(n: int) -> list[Dataset]:
    templates = sample_datasets()
    out = []
    for i in range(n):
        t = templates[i % len(templates)]
        out.append(
            t.model_copy(
                update={
                    "id": f"urn:dadam:bench:{i:05d}",
                    "title": f"{t.title} #{i}",
                    "keywords": [*t.keywords, f"lot-{i % 97}"],
                    "category": CATEGORIES[i % len(CATEGORIES)],
                }
            )
        )
    return out


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _http_p50(db_url: str, data_dir: Path) -> dict[str, float]:
    port = _free_port()
    env = {
        **os.environ,
        "DADAM_DATABASE_URL": db_url,
        "DADAM_DATA_DIR": str(data_dir),
        "DADAM_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    # The app is built from a Runtime without an identity service: DSP callers are anonymous, so the
    # figure is the catalog path alone (DCP token verification is measured by the identity bench).
    (data_dir / "dadam_bench_app.py").write_text(
        "from connector.app import create_app\n"
        "from connector.runtime import Runtime\n"
        "from connector.settings import Settings\n\n"
        "def app():\n"
        "    return create_app(runtime=Runtime.create(Settings()))\n"
    )
    cmd = [sys.executable, "-m", "uvicorn", "dadam_bench_app:app", "--factory", "--app-dir", str(data_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log"]
    cmd += ["--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}/api/dsp/2025-1/catalog/request?limit={PAGE}"
    body = {"@context": ["https://w3id.org/dspace/2025/1/context.jsonld"], "@type": "CatalogRequestMessage"}
    try:
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get(f"http://127.0.0.1:{port}/.well-known/dspace-version").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("uvicorn did not start")
                time.sleep(0.1)
            t0 = time.perf_counter()
            first = client.post(url, json=body)
            first_ms = (time.perf_counter() - t0) * 1000
            assert first.status_code == 200, first.text[:300]
            assert len(first.json()["dataset"]) == PAGE
            for _ in range(20):
                client.post(url, json=body)
            times = []
            for _ in range(300):
                t0 = time.perf_counter()
                r = client.post(url, json=body)
                times.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200
            times.sort()
            return {
                "http_first_request_ms": round(first_ms, 1),
                "http_p50_ms": round(times[len(times) // 2], 2),
                "http_p95_ms": round(times[int(len(times) * 0.95)], 2),
                "http_page_bytes": len(first.content),
            }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dadam-bench-") as tmp:
        db_url = f"sqlite:///{tmp}/bench.db"
        engine = create_engine(db_url)
        migrate(engine)
        store = CatalogStore(engine)
        t0 = time.perf_counter()
        store.create_datasets(_datasets(N))
        store.create_policy(PolicyDefinition(id="open", policy={"permission": [{"action": "use"}]}))
        store.create_contract_definition(
            ContractDefinition(
                id="all",
                access_policy_id="open",
                contract_policy_id="open",
                selector=DatasetSelector(match_all=True),
            )
        )
        seed_s = time.perf_counter() - t0
        svc = CatalogService(
            store,
            participant_id="did:web:bench.example",
            dsp_base_url="https://bench.example/api/dsp/2025-1",
            access_evaluator=PolicyEngineEvaluator(),
        )

        t0 = time.perf_counter()
        first = svc.catalog(CALLER, None, 0, PAGE)
        first_page_ms = (time.perf_counter() - t0) * 1000  # snapshot rebuild + cold fragments
        assert first.total == N

        # cold pages: fragments of these datasets were never built before
        cold = []
        for k in range(1, 21):
            t0 = time.perf_counter()
            svc.catalog(CALLER, None, k * PAGE, PAGE)
            cold.append((time.perf_counter() - t0) * 1000)
        cold_page_ms = statistics.median(cold)

        page_dict = first.to_dict()
        page_build_ms = _median_ms(lambda: svc.catalog(CALLER, None, 0, PAGE), 200)
        page_dumps_ms = _median_ms(lambda: json.dumps(page_dict), 200)
        page_bytes = len(first.body)

        t0 = time.perf_counter()
        full = svc.catalog(CALLER, None, 0, None)
        full_cold_ms = (time.perf_counter() - t0) * 1000
        full_dict = full.to_dict()
        assert len(full_dict["dataset"]) == N
        full_build_ms = _median_ms(lambda: svc.catalog(CALLER, None, 0, None), 15)
        full_dumps_ms = _median_ms(lambda: json.dumps(full_dict), 15)

        # a catalog change: the next request rebuilds the snapshot (reload of every row)
        store.update_policy(
            PolicyDefinition(id="open", policy={"permission": [{"action": "use"}], "profile": "urn:p"})
        )
        t0 = time.perf_counter()
        svc.catalog(CALLER, None, 0, PAGE)
        rebuild_ms = (time.perf_counter() - t0) * 1000
        # one dataset edited: only that row is reloaded
        edited = store.get_dataset("urn:dadam:bench:04242")
        store.update_dataset(edited.model_copy(update={"title": "edited"}))
        t0 = time.perf_counter()
        page = svc.catalog(CALLER, None, 4200, PAGE).to_dict()
        rebuild_one_ms = (time.perf_counter() - t0) * 1000
        assert page["dataset"][42]["dct:title"] == "edited"
        engine.dispose()

        http = _http_p50(db_url, Path(tmp))

    figures = {
        "datasets": N,
        "seed_s": round(seed_s, 2),
        "page_datasets": PAGE,
        "page_bytes": page_bytes,
        "page_build_warm_ms": round(page_build_ms, 3),
        "page_json_dumps_ms": round(page_dumps_ms, 3),
        "page_ratio_warm": round(page_build_ms / page_dumps_ms, 2),
        "page_build_cold_ms": round(cold_page_ms, 3),
        "page_ratio_cold": round(cold_page_ms / page_dumps_ms, 2),
        "first_page_after_start_ms": round(first_page_ms, 1),
        "full_bytes": len(full.body),
        "full_build_warm_ms": round(full_build_ms, 2),
        "full_json_dumps_ms": round(full_dumps_ms, 2),
        "full_ratio_warm": round(full_build_ms / full_dumps_ms, 2),
        "full_build_cold_ms": round(full_cold_ms, 1),
        "full_ratio_cold": round(full_cold_ms / full_dumps_ms, 2),
        "rebuild_after_policy_change_ms": round(rebuild_ms, 1),
        "rebuild_after_dataset_edit_ms": round(rebuild_one_ms, 1),
        **http,
        "goal_page_ratio": 2.0,
        "goal_http_p50_ms": 15.0,
    }
    for k, v in figures.items():
        print(f"{k:28s} {v}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
