"""DirectSender (decision 0404): the outbox's http.client sender against real loopback servers.

What a connector relies on: keep-alive reuse, the same outcomes as the httpx sender (2xx ok,
5xx/429/timeouts/connection errors retryable, other statuses final, with the peer's text), one
resend on a connection the peer closed meanwhile, TLS, and httpx for what it does not do itself
(proxies, auth without ``request_headers``).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from contracts._process import HttpSender, OutboxMessage
from contracts._sender import DirectSender

#: (connection number, request number on that connection, request head, body) -> raw reply
#: bytes, or None to close the connection without answering, or "hang" to never answer.
Reply = Callable[[int, int, str, bytes], "bytes | str | None"]


DROP_AFTER = b"!drop-after!"


def http_reply(status: int, body: bytes = b"", *, close: bool = False, reason: str = "X") -> bytes:
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\nContent-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


class Server:
    """A loopback HTTP/1.1 server answering with ``reply``; records every request."""

    def __init__(self, reply: Reply, tls: ssl.SSLContext | None = None) -> None:
        self.reply = reply
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[int, str, bytes]] = []  # (connection number, head, body)
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/dsp/negotiations/request"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                conn.close()
                return
        buf = b""
        index = 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = next(
                    (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")), 0,
                )  # fmt: skip
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                self.requests.append((number, head.decode(), body))
                index += 1
                out = self.reply(number, index, head.decode(), body)
                if out is None:
                    return
                if out == "hang":
                    self._stop.wait(5)
                    return
                assert isinstance(out, bytes)
                drop = out.startswith(DROP_AFTER)  # answer, then close silently (keep-alive said)
                conn.sendall(out.removeprefix(DROP_AFTER))
                if drop or b"Connection: close" in out:
                    return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(reply: Reply, tls: ssl.SSLContext | None = None) -> Server:
        servers.append(Server(reply, tls))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def message(url: str, n: int = 1, audience: str | None = "did:web:peer") -> OutboxMessage:
    body = {"@id": f"urn:uuid:m{n}", "@type": "ContractRequestMessage", "consumerPid": "urn:uuid:c1"}
    return OutboxMessage(
        f"urn:uuid:m{n}", "negotiation", "p1", "ContractRequestMessage", url, body, audience, 0
    )


class TokenAuth(httpx.Auth):
    """Header auth as connector.identity's DSP token auth: usable with and without httpx."""

    def __init__(self) -> None:
        self.calls = 0

    def request_headers(self, url: str, body: bytes) -> dict[str, str]:
        self.calls += 1
        return {"Authorization": f"Bearer t{self.calls}-{len(body)}"}

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers.update(self.request_headers(str(request.url), request.content))
        yield request


class FlowOnlyAuth(httpx.Auth):
    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = "Bearer flow"
        yield request


def sender(
    auth: httpx.Auth | None = None, fallback_client: httpx.Client | None = None, **kw: Any
) -> DirectSender:
    client = fallback_client or httpx.Client(timeout=5)
    _SENDERS.append(DirectSender(HttpSender(client, (lambda _aud: auth) if auth is not None else None), **kw))
    return _SENDERS[-1]


_SENDERS: list[DirectSender] = []


@pytest.fixture(autouse=True)
def _close_senders() -> Iterator[None]:
    yield
    while _SENDERS:
        s = _SENDERS.pop()
        s.close()
        s.fallback.client.close()


def test_keeps_one_connection_and_sends_body_and_auth_headers(serve: Callable[..., Server]) -> None:
    server = serve(lambda *_: http_reply(201, b'{"@type": "ContractNegotiation", "state": "REQUESTED"}'))
    auth = TokenAuth()
    s = sender(auth)
    deliveries = [s.send(message(server.url, n)) for n in range(5)]
    assert all(d.ok and d.status == 201 for d in deliveries)
    assert deliveries[0].response_json == {"@type": "ContractNegotiation", "state": "REQUESTED"}
    assert server.connections == 1 and s.opened == 1
    _conn, head, body = server.requests[3]
    assert head.startswith("POST /dsp/negotiations/request HTTP/1.1")
    lines = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in head.split("\r\n")[1:])}
    assert lines["content-type"] == "application/json"
    assert lines["host"] == f"127.0.0.1:{server.port}"
    assert lines["authorization"] == f"Bearer t4-{len(body)}"  # fresh headers for every message
    assert orjson.loads(body)["@id"] == "urn:uuid:m3"


@pytest.mark.parametrize(
    ("status", "retryable", "text"),
    [(503, True, "peer answered 503"), (429, True, "peer answered 429"), (400, False, "peer rejected")],
)
def test_error_statuses_say_what_the_peer_answered(
    serve: Callable[..., Server], status: int, retryable: bool, text: str
) -> None:
    server = serve(lambda *_: http_reply(status, b'{"reason": "busy or bad"}'))
    d = sender().send(message(server.url))
    assert (d.ok, d.status, d.retryable) == (False, status, retryable)
    assert text in d.detail and "ContractRequestMessage" in d.detail and "busy or bad" in d.detail


def test_empty_and_non_json_success_bodies(serve: Callable[..., Server]) -> None:
    replies = iter([http_reply(200), http_reply(200, b"not json")])
    server = serve(lambda *_: next(replies))
    s = sender()
    first, second = s.send(message(server.url, 1)), s.send(message(server.url, 2))
    assert (first.ok, first.response_json, second.ok, second.response_json) == (True, None, True, None)


def test_resends_once_when_the_peer_closed_the_kept_connection(serve: Callable[..., Server]) -> None:
    # the peer answers the first request of a connection and drops the connection on the second
    # without answering: the sender sends it again on a new connection (the peer dedupes by @id)
    server = serve(lambda conn, index, *_: http_reply(200, b"{}") if index == 1 else None)
    s = sender()
    assert s.send(message(server.url, 1)).ok
    d = s.send(message(server.url, 2))
    assert d.ok, d.detail
    assert server.connections == 2
    assert [orjson.loads(b)["@id"] for _, _, b in server.requests] == [
        "urn:uuid:m1",
        "urn:uuid:m2",
        "urn:uuid:m2",
    ]


def test_a_kept_connection_the_peer_closed_is_not_reused(serve: Callable[..., Server]) -> None:
    server = serve(lambda *_: DROP_AFTER + http_reply(200, b"{}"))
    s = sender()
    assert s.send(message(server.url, 1)).ok
    assert s.send(message(server.url, 2)).ok
    # the closed connection is dropped (seen readable, or by the one resend): the peer got each
    # message once, the second on a new connection
    assert server.connections == 2
    assert [(n, orjson.loads(b)["@id"]) for n, _, b in server.requests] == [
        (1, "urn:uuid:m1"),
        (2, "urn:uuid:m2"),
    ]


def test_connections_idle_too_long_are_not_reused(serve: Callable[..., Server]) -> None:
    now = [0.0]
    server = serve(lambda *_: http_reply(200, b"{}"))
    s = sender(idle_s=30.0, clock=lambda: now[0])
    assert s.send(message(server.url, 1)).ok
    now[0] = 29.0
    assert s.send(message(server.url, 2)).ok and s.opened == 1
    now[0] = 60.0
    assert s.send(message(server.url, 3)).ok and s.opened == 2


def test_close_closes_idle_connections(serve: Callable[..., Server]) -> None:
    server = serve(lambda *_: http_reply(200, b"{}"))
    s = sender()
    assert s.send(message(server.url, 1)).ok
    s.close()
    assert s.send(message(server.url, 2)).ok and s.opened == 2


def test_a_new_connection_dropped_is_retryable_not_resent(serve: Callable[..., Server]) -> None:
    server = serve(lambda *_: None)
    d = sender().send(message(server.url))
    assert (d.ok, d.status, d.retryable) == (False, None, True)
    assert "cannot reach" in d.detail
    assert len(server.requests) == 1


def test_connection_close_is_honoured(serve: Callable[..., Server]) -> None:
    server = serve(lambda *_: http_reply(200, b"{}", close=True))
    s = sender()
    assert s.send(message(server.url, 1)).ok and s.send(message(server.url, 2)).ok
    assert server.connections == 2 and s.opened == 2


def test_chunked_replies_and_interim_replies_are_read_and_the_connection_kept(
    serve: Callable[..., Server],
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        b'6\r\n{"a": \r\n3\r\n[1]\r\n1\r\n}\r\n0\r\n\r\n'
    )
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + http_reply(201, b'{"b": 2}')
    replies = iter([chunked, interim, http_reply(204)])
    server = serve(lambda *_: next(replies))
    s = sender()
    first, second, third = (s.send(message(server.url, n)) for n in (1, 2, 3))
    assert (first.ok, first.status, first.response_json) == (True, 200, {"a": [1]})
    assert (second.ok, second.status, second.response_json) == (True, 201, {"b": 2})
    assert (third.ok, third.status, third.response_json) == (True, 204, None)
    assert server.connections == 1 and s.opened == 1


def test_a_reply_ended_by_closing_is_read_whole_and_a_cut_reply_is_retryable(
    serve: Callable[..., Server],
) -> None:
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b'{"to": "the end"}'
    cut = DROP_AFTER + b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b'{"only": "part'
    replies = iter([until_close, cut])
    server = serve(lambda *_: next(replies))
    s = sender()
    whole = s.send(message(server.url, 1))
    assert (whole.ok, whole.response_json) == (True, {"to": "the end"})
    part = s.send(message(server.url, 2))
    assert (part.ok, part.status, part.retryable) == (False, None, True)
    assert "cannot reach" in part.detail and "IncompleteRead" in part.detail
    assert server.connections == 2


def test_a_reply_over_the_limit_is_cut_and_its_connection_dropped(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    import contracts._sender as sender_module

    monkeypatch.setattr(sender_module, "MAX_REPLY_BYTES", 64)
    big = b'{"error": "' + b"x" * 500 + b'"}'
    server = serve(lambda *_: http_reply(500, big))
    s = sender()
    first = s.send(message(server.url, 1))
    assert (first.ok, first.status, first.retryable) == (False, 500, True)
    assert "x" * 53 in first.detail and "x" * 54 not in first.detail  # the first 64 bytes only
    assert s.send(message(server.url, 2)).status == 500
    assert server.connections == 2  # a cut reply's connection is not reused


def test_a_header_that_would_split_the_request_is_refused(serve: Callable[..., Server]) -> None:
    class Injecting(TokenAuth):
        def request_headers(self, url: str, body: bytes) -> dict[str, str]:
            return {"Authorization": "Bearer x\r\nX-Evil: 1"}

    server = serve(lambda *_: http_reply(200, b"{}"))
    d = sender(Injecting()).send(message(server.url))
    assert (d.ok, d.retryable) == (False, False)  # a broken auth provider: final, as a raising one
    assert "invalid header 'Authorization'" in d.detail
    assert server.requests == []


def test_peer_down_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    d = sender().send(message(f"http://127.0.0.1:{port}/dsp"))
    assert (d.ok, d.retryable) == (False, True)
    assert f"cannot reach http://127.0.0.1:{port}/dsp" in d.detail


def test_slow_peer_times_out_retryably(serve: Callable[..., Server]) -> None:
    server = serve(lambda *_: "hang")
    d = sender(timeout_s=0.3).send(message(server.url))
    assert (d.ok, d.status, d.retryable) == (False, None, True)
    assert d.detail.startswith("timeout sending ContractRequestMessage")


def test_broken_auth_is_a_final_failure_with_the_reason(serve: Callable[..., Server]) -> None:
    class Broken(TokenAuth):
        def request_headers(self, url: str, body: bytes) -> dict[str, str]:
            raise RuntimeError("no signing key")

    server = serve(lambda *_: http_reply(200))
    d = sender(Broken()).send(message(server.url))
    assert (d.ok, d.retryable) == (False, False)
    assert "no signing key" in d.detail and not server.requests


def fallback_client(seen: list[httpx.Request]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"via": "httpx"})

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_auth_without_request_headers_goes_through_httpx(serve: Callable[..., Server]) -> None:
    server = serve(lambda *_: http_reply(200))
    seen: list[httpx.Request] = []
    d = sender(FlowOnlyAuth(), fallback_client(seen)).send(message(server.url))
    assert d.response_json == {"via": "httpx"} and not server.requests
    assert seen[0].headers["authorization"] == "Bearer flow"


def test_a_proxy_from_the_environment_goes_through_httpx(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(lambda *_: http_reply(200))
    seen: list[httpx.Request] = []
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert sender(None, fallback_client(seen)).send(message(server.url)).response_json == {"via": "httpx"}
    assert len(seen) == 1 and not server.requests
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # bypassed: sent directly
    d = sender(None, fallback_client(seen)).send(message(server.url))
    assert d.ok and d.response_json is None and len(server.requests) == 1


def test_other_schemes_go_through_httpx() -> None:
    seen: list[httpx.Request] = []
    d = sender(None, fallback_client(seen)).send(message("ftp://127.0.0.1/x"))
    assert d.response_json == {"via": "httpx"} and len(seen) == 1


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / "cert.pem").write_bytes(pem)
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client = ssl.create_default_context(cadata=pem.decode())
    return server, client


def test_tls_with_a_trusted_certificate_and_refusal_of_an_untrusted_one(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    server_ctx, client_ctx = self_signed(tmp_path)
    server = serve(lambda *_: http_reply(200, b'{"ok": true}'), tls=server_ctx)
    s = sender(ssl_context=client_ctx)
    assert s.send(message(server.url, 1)).response_json == {"ok": True}
    assert s.send(message(server.url, 2)).ok and server.connections == 1
    d = sender().send(message(server.url, 3))  # default trust store: the self-signed peer is refused
    assert (d.ok, d.retryable) == (False, True)
    assert "CERTIFICATE_VERIFY_FAILED" in d.detail
