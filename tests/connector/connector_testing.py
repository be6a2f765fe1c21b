"""Shared constants and the TestClient import for connector tests."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # starlette's TestClient warns that it prefers httpx2; httpx is what we have
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

__all__ = ["API_KEY", "CTX", "DSP", "MGMT", "TestClient"]

API_KEY = "test-key-123"
DSP = "/api/dsp/2025-1"
MGMT = "/api/management/v1"
CTX = ["https://w3id.org/dspace/2025/1/context.jsonld"]
