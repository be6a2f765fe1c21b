"""The TCK stand-in shared by the conformance tests."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from fastapi import FastAPI, Request

import vocab

__all__ = ["CTX", "TckStandIn"]

CTX = [vocab.DSP_CONTEXT]


class TckStandIn:
    """Records what the connector sends to the TCK's callback address (and acknowledges it)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/{path:path}")
        async def receive(path: str, request: Request) -> dict[str, Any]:
            body = json.loads(await request.body())
            with self.lock:
                self.received.append(("/" + path.rstrip("/"), body))
            if path.rstrip("/").endswith("transfers/request"):  # the TCK as provider acknowledges
                return {"@context": CTX, "@type": "TransferProcess", "providerPid": f"tck-{body['consumerPid']}",
                        "consumerPid": body["consumerPid"], "state": "REQUESTED"}  # fmt: skip
            return {}

    def expect(self, suffix: str, timeout: float = 15.0, where: Any = None) -> dict[str, Any]:
        """The first unconsumed message whose path ends with ``suffix`` (and matches ``where``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for i, (path, body) in enumerate(self.received):
                    if path.endswith(suffix) and (where is None or where(body)):
                        del self.received[i]
                        return body
            time.sleep(0.02)
        raise AssertionError(
            f"no message to ...{suffix} within {timeout} s; got {[p for p, _ in self.received]}"
        )
