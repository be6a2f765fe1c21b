"""kill -9 of the provider during a pull of many requests: after a restart the usage events are
exactly the answered requests (plus, at most, the one in flight, which its retry does not double)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from connector._demo import (
    fetch_catalog,
    negotiate,
    pull,
    record_partner,
    seed_provider,
    start_node,
    stop_node,
    usage_of,
    wait_ready,
)


@pytest.mark.slow
def test_kill_9_during_pulls_loses_and_doubles_nothing(tmp_path: Path) -> None:
    provider = start_node("provider", tmp_path / "p")
    consumer = start_node("consumer", tmp_path / "c")
    try:
        wait_ready(provider)
        wait_ready(consumer)
        seed_provider(provider)
        record_partner(provider, consumer)
        pcf = next(
            d for d in fetch_catalog(consumer, provider)["dataset"] if d["@id"] == "pcf-brake-disc-bd330v"
        )
        agreement_id = negotiate(consumer, provider, pcf["hasPolicy"][0]["@id"])["agreement"]["@id"]
        data, transfer = pull(consumer, provider, agreement_id, request_id="warm-up")
        props = {p["name"]: p["value"] for p in transfer["dataAddress"]["endpointProperties"]}
        endpoint = transfer["dataAddress"]["endpoint"]
        auth = {"Authorization": f"Bearer {props['authorization']}"}
        answered: list[str] = ["warm-up"]
        in_flight: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=5) as client:
                for n in range(2000):  # bounded
                    if stop.is_set():
                        return
                    rid = f"r{n}"
                    in_flight[:] = [rid]
                    try:
                        r = client.get(endpoint, headers={**auth, "X-Request-Id": rid})
                    except httpx.HTTPError:
                        return  # the provider died under this request
                    if r.status_code == 200 and r.content == data:
                        answered.append(rid)
                        in_flight.clear()
                    else:
                        return

        t = threading.Thread(target=load)
        t.start()
        deadline = time.monotonic() + 30
        while len(answered) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert provider.proc is not None
        os.kill(provider.proc.pid, signal.SIGKILL)
        provider.proc.wait(timeout=10)
        stop.set()
        t.join(timeout=10)
        assert len(answered) >= 40
        # restart the same provider (same port, data, key)
        provider = start_node("provider", tmp_path / "p", port=provider.port)
        wait_ready(provider)
        tid = transfer["providerPid"]
        metered = {e["id"].removeprefix(f"{tid}:") for e in usage_of(provider, agreement_id)}
        assert set(answered) <= metered, "an answered request lost its usage event"
        extra = metered - set(answered)
        assert extra <= set(in_flight), f"events for requests never made: {extra}"
        # the interrupted request is retried with the same id: it is not counted twice
        for rid in in_flight:
            r = httpx.get(endpoint, headers={**auth, "X-Request-Id": rid}, timeout=10)
            assert r.status_code == 200
        after = [e["id"] for e in usage_of(provider, agreement_id)]
        assert len(after) == len(set(after)) == len(set(answered) | set(in_flight))
    finally:
        stop_node(consumer)
        stop_node(provider)
