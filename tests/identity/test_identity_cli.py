from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from connector.identity import Identity, MemoryReplayStore, StaticDidResolver, TokenVerifier

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _run(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "DADAM_DATA_DIR": str(tmp_path), "DADAM_PUBLIC_URL": "https://me.example.com"}
    out = subprocess.run(
        [sys.executable, "-m", "connector.cli", "identity", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


async def test_show_rotate_and_token(tmp_path: Path) -> None:
    shown = _run(tmp_path, "show")
    assert "did: did:web:me.example.com" in shown
    rotated = _run(tmp_path, "rotate")
    assert "rotated:" in rotated
    token = _run(tmp_path, "token", "--aud", "did:web:peer.example.com").strip()
    ident = Identity.load_or_create("did:web:me.example.com", tmp_path)
    assert len(ident.public_keys()) == 2
    verifier = TokenVerifier(
        StaticDidResolver({ident.did: ident.did_document()}), "did:web:peer.example.com", MemoryReplayStore()
    )
    assert (await verifier.verify(token)).did == "did:web:me.example.com"
