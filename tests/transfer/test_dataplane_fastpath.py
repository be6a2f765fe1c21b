"""The data plane's fast paths keep every check: the verified-token memory, the policy and dataset
caches keyed by exact content, file reads with read-ahead, and the lean upstream reader."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import cast

import orjson
import pytest

from connector.dataplane._edr import EdrService
from connector.dataplane._public import _compiled, _file_chunks
from connector.dataplane._sources import FILE_CHUNK, open_file_reader, stream_get
from connector.errors import TokenError
from connector.identity import Identity

DID = "did:web:provider.example"


@pytest.fixture
def edr(tmp_path: Path) -> EdrService:
    return EdrService(Identity.load_or_create(DID, tmp_path, "Ed25519"), "http://dp.example", ttl_seconds=60)


def test_a_remembered_token_is_still_checked_for_transfer_expiry_and_forgery(
    edr: EdrService, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = edr.token("t1", "did:web:consumer")
    assert edr.verify(f"Bearer {token}", "t1")["sub"] == "did:web:consumer"
    assert edr.verify(f"Bearer {token}", "t1")["tid"] == "t1"  # remembered
    with pytest.raises(TokenError, match="for transfer 't1', not 't2'"):
        edr.verify(f"Bearer {token}", "t2")
    head, payload, sig = token.split(".")
    forged_claims = orjson.loads(base64.urlsafe_b64decode(payload + "=="))
    forged_claims["tid"] = "t2"
    forged = ".".join([head, base64.urlsafe_b64encode(orjson.dumps(forged_claims)).decode().rstrip("="), sig])
    with pytest.raises(TokenError):
        edr.verify(f"Bearer {forged}", "t2")
    later = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(TokenError, match="expired"):
        edr.verify(f"Bearer {token}", "t1")


def test_a_remembered_token_fails_once_its_key_is_no_longer_ours(edr: EdrService) -> None:
    token = edr.token("t1", "did:web:consumer")
    edr.verify(token, "t1")
    old = edr.identity.kid.rsplit("#", 1)[1]
    edr.identity.rotate()
    edr.verify(token, "t1")  # a rotated-out key still verifies what it signed
    del edr.identity._keys[old]  # the key is withdrawn
    with pytest.raises(TokenError):
        edr.verify(token, "t1")


def _agreement(constraint: Mapping[str, object] | None, duty: bool = False) -> str:
    perm: dict[str, object] = {"action": "use"}
    if constraint:
        perm["constraint"] = [constraint]
    if duty:
        perm["duty"] = [{"action": "compensate"}]
    return orjson.dumps({"@id": "urn:uuid:a", "permission": [perm]}).decode()


def test_policy_needs_use_so_far_only_when_a_constraint_reads_it() -> None:
    count = {"leftOperand": "count", "operator": "lteq", "rightOperand": 3}
    purpose = {"leftOperand": "purpose", "operator": "eq", "rightOperand": "x"}
    elapsed = {"leftOperand": "elapsedTime", "operator": "lteq", "rightOperand": "P1D"}
    assert _compiled(_agreement(count))[1] is True
    assert _compiled(_agreement(elapsed))[1] is True
    assert _compiled(_agreement(purpose))[1] is False
    assert _compiled(_agreement(None))[1] is False
    assert _compiled(_agreement(None, duty=True))[2] is True
    assert _compiled(_agreement(purpose))[2] is False


def test_file_reader_ranges_and_read_ahead_close(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(FILE_CHUNK * 2 + 123)
    path.write_bytes(data)
    reader = open_file_reader(str(path))
    reader.pos, reader.stop = 5, FILE_CHUNK + 9
    got = b""
    while chunk := reader.read():
        got += chunk
    assert got == data[5 : FILE_CHUNK + 10]
    reader.close()

    async def stream(stop_after: int | None) -> tuple[bytes, int | None]:
        r = open_file_reader(str(path))
        chunks = cast(AsyncGenerator[bytes, None], _file_chunks(r, r.read()))
        out = b""
        async for chunk in chunks:
            out += chunk
            if stop_after is not None and len(out) >= stop_after:
                break
        await chunks.aclose()
        await asyncio.sleep(0.05)  # a read still running closes the file when it ends
        return out, r.fd

    whole, fd = asyncio.run(stream(None))
    assert whole == data and fd is None
    part, fd = asyncio.run(stream(1))
    assert part == data[:FILE_CHUNK] and fd is None


async def _serve(response: bytes, pieces: int, done: asyncio.Event) -> tuple[asyncio.Server, int]:
    """A one-response HTTP server sending ``response`` in ``pieces`` writes, then closing."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            step = max(len(response) // pieces, 1)
            for i in range(0, len(response), step):
                writer.write(response[i : i + step])
                await writer.drain()
                await asyncio.sleep(0.001)
        except ConnectionError:
            pass
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("pieces", [1, 7])
def test_upstream_reader_content_length_chunked_and_cut_off(pieces: int) -> None:
    body = os.urandom(300_000)

    async def get(response: bytes) -> tuple[int, bytes]:
        done = asyncio.Event()
        server, port = await _serve(response, pieces, done)
        async with server:
            try:
                up = await stream_get(f"http://127.0.0.1:{port}/o?x=1", {"Range": "bytes=0-"})
                out = b""
                async for chunk in up.chunks():
                    out += chunk
                return up.status, out
            finally:
                await done.wait()

    plain = b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert asyncio.run(get(plain)) == (206, body)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(body), 70_000):
        part = body[i : i + 70_000]
        chunked += b"%x\r\n" % len(part) + part + b"\r\n"
    chunked += b"0\r\n\r\n"
    assert asyncio.run(get(chunked)) == (200, body)
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:1000]
    with pytest.raises(ConnectionError):
        asyncio.run(get(cut))
