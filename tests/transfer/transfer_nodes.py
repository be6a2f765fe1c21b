"""Real connector processes for the transfer tests: a provider and a consumer, or a control plane,
a separate data plane (``dadam dataplane``) and a consumer, on SQLite or PostgreSQL."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from connector._demo import (
    Node,
    fetch_catalog,
    free_port,
    negotiate,
    record_partner,
    seed_provider,
    start_node,
    stop_node,
    wait_ready,
)

#: ``@pytest.fixture(params=BACKENDS)``: once on SQLite, once on PostgreSQL (marked ``postgres``).
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The provider's database setting for the fixture's backend (SQLite: the default file)."""
    if getattr(request, "param", "sqlite") == "postgres":
        return {"DADAM_DATABASE_URL": request.getfixturevalue("pg_url")}
    return {}


@contextlib.contextmanager
def connectors(
    tmp_path: Path,
    provider_env: Mapping[str, str] | None = None,
    consumer_env: Mapping[str, str] | None = None,
) -> Iterator[tuple[Node, Node]]:
    """A provider and a consumer process, ready; both stopped afterwards."""
    provider = start_node("provider", tmp_path / "p", env=dict(provider_env or {}))
    consumer = start_node("consumer", tmp_path / "c", env=dict(consumer_env or {}))
    try:
        wait_ready(provider)
        wait_ready(consumer)
        yield provider, consumer
    finally:
        stop_node(consumer)
        stop_node(provider)


def wait_health(node: Node, timeout: float = 60.0) -> None:
    """Wait for a data plane process's ``/healthz`` (it has no management API to ask)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert node.proc is not None and node.proc.poll() is None, node.log_tail()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(node.base_url + "/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError("data plane did not start")


@contextlib.contextmanager
def split_connectors(
    tmp_path: Path,
    env: Mapping[str, str],
    control_env: Mapping[str, str] | None = None,
    *,
    consumer_env: Mapping[str, str] | None = None,
) -> Iterator[tuple[Node, Node, Node]]:
    """A provider control plane that does not embed its data plane, a ``dadam dataplane``
    process beside it (same database and keys, ``env`` for both, ``control_env`` for the control
    plane only) and a consumer (``consumer_env``). ``env`` may use ``{dp_port}``, filled with the
    data plane's port."""
    nodes = start_pair("provider", tmp_path / "p", env, control_env)
    consumer = None
    try:
        consumer = start_node("consumer", tmp_path / "c", env=dict(consumer_env or {}))
        wait_ready(consumer)
        yield nodes[0], nodes[1], consumer
    finally:
        for node in (consumer, *reversed(nodes)):
            if node is not None:
                stop_node(node)


def start_pair(
    name: str, directory: Path, env: Mapping[str, str], control_env: Mapping[str, str] | None = None
) -> list[Node]:
    """A control plane that does not embed its data plane and a ``dadam dataplane`` process beside
    it (same database and keys; ``env`` for both, ``control_env`` for the control plane only;
    ``{dp_port}`` is filled in), both ready: [control plane, data plane]. The caller stops them."""
    cp_port, dp_port = free_port(), free_port()
    shared = {k: v.format(dp_port=dp_port) for k, v in env.items()}
    shared.setdefault("DADAM_DATAPLANE_EMBEDDED", "false")
    shared.setdefault("DADAM_DATAPLANE_PUBLIC_URL", f"http://127.0.0.1:{dp_port}")
    cp_env = {**shared, **{k: v.format(dp_port=dp_port) for k, v in (control_env or {}).items()}}
    nodes = [start_node(name, directory, port=cp_port, env=cp_env)]
    try:
        wait_ready(nodes[0])  # migrates the database and creates the DID keys first
        dp_env = {**shared, "DADAM_PUBLIC_URL": nodes[0].base_url, "DADAM_PORT": str(dp_port)}
        nodes.append(start_node(f"{name}-dataplane", directory, port=dp_port, env=dp_env, command="dataplane",
                                log_name="dataplane.log"))  # fmt: skip
        wait_health(nodes[1])
    except BaseException:
        for node in reversed(nodes):
            stop_node(node)
        raise
    return nodes


@contextlib.contextmanager
def split_consumer(
    tmp_path: Path,
    env: Mapping[str, str],
    control_env: Mapping[str, str] | None = None,
    *,
    provider_env: Mapping[str, str] | None = None,
    provider_control_env: Mapping[str, str] | None = None,
) -> Iterator[tuple[Node, Node, Node]]:
    """A provider and a consumer whose control plane does not embed its data plane, with a
    ``dadam dataplane`` process beside it (:func:`start_pair` with ``env`` and ``control_env``):
    yields (provider, consumer control plane, consumer data plane). ``provider_control_env`` given:
    the provider is such a pair too (``provider_env`` for both of its processes), else one process
    with ``provider_env``."""
    nodes: list[Node] = []
    try:
        if provider_control_env is not None:
            nodes += start_pair("provider", tmp_path / "p", provider_env or {}, provider_control_env)
        else:
            nodes.append(start_node("provider", tmp_path / "p", env=dict(provider_env or {})))
            wait_ready(nodes[0])
        nodes += start_pair("consumer", tmp_path / "c", env, control_env)
        yield nodes[0], nodes[-2], nodes[-1]
    finally:
        for node in reversed(nodes):
            stop_node(node)


def wait_until(check: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll ``check()`` every 0.1 s until it returns something truthy (returned); AssertionError
    naming ``what`` and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen (last: {last})")


def transfer_view(node: Node, tid: str) -> dict[str, Any]:
    """The management API's view of transfer ``tid`` on ``node``."""
    with node.client() as c:
        body: dict[str, Any] = c.get(f"/transfers/{quote(tid, safe='')}").json()
        return body


def flow_status(data: Node, flow_id: str, auth: httpx.Auth) -> dict[str, Any]:
    """A data plane's signaling status of flow ``flow_id`` (``auth``: the control plane's token)."""
    r = httpx.get(f"{data.base_url}/api/signaling/v1/dataflows/{quote(flow_id, safe=':')}/status",
                  auth=auth, timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def bom_agreement(provider: Node, consumer: Node) -> str:
    """Seed the provider's sample catalog, record the consumer as a partner and negotiate the
    brake-assembly BOM dataset (offered for every transfer type); the agreement id."""
    seed_provider(provider)
    record_partner(provider, consumer)
    bom = next(
        d for d in fetch_catalog(consumer, provider)["dataset"] if d["@id"] == "bom-brake-assembly-as-built"
    )
    formats = {d["format"] for d in bom["distribution"]}
    assert {"HttpData-PUSH", "AmazonS3-PUSH", "HttpData-PULL"} <= formats
    return str(negotiate(consumer, provider, bom["hasPolicy"][0]["@id"])["agreement"]["@id"])


def serve_connections(handle: Callable[[socket.socket], None]) -> tuple[socket.socket, int]:
    """A loopback listener whose every connection ``handle(conn)`` takes on a thread of its own
    (scripted HTTP peers); (the listener, its port). Closing the listener ends the accept loop."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, int(listener.getsockname()[1])


def request_transfer(consumer: Node, provider: Node, agreement_id: str, fmt: str, **extra: Any) -> str:
    """The consumer asks ``provider`` for a transfer of format ``fmt`` (``extra``: e.g.
    ``dataDestination``); the consumer's transfer id."""
    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                                       "agreementId": agreement_id, "format": fmt, **extra})  # fmt: skip
        assert r.status_code == 201, r.text
        return str(r.json()["id"])
