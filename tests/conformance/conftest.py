"""Fixtures for conformance tests: `dadam conformance serve` as a subprocess, and a TCK stand-in."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from threaded_server import free_port, serve_in_thread

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conformance_testing import TckStandIn


@pytest.fixture(scope="module")
def cut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    port = free_port()
    data = tmp_path_factory.mktemp("tck")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connector.cli",
            "conformance",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    props: dict[str, str] = {}
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip() == "ready":
            break
        if "=" in line:
            key, _, value = line.strip().partition("=")
            props[key] = value
    # keep reading the server's output so its pipe never fills up
    drain = threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout or ()], daemon=True)
    drain.start()
    try:
        assert lines and lines[-1].strip() == "ready", "".join(lines)
        yield props
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        drain.join(timeout=5)
        proc.stdout.close()


@pytest.fixture(scope="module")
def tck() -> Iterator[tuple[TckStandIn, str]]:
    """The TCK stand-in, served for the whole module (so not by the ``uvicorn_thread`` fixture)."""
    stand_in = TckStandIn()
    served = serve_in_thread(stand_in.app, log_level="warning")
    try:
        yield stand_in, served.url
    finally:
        served.stop()
