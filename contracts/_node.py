"""A standalone negotiation node for multi-process tests and the benchmark: ``python -m contracts._node``.

Not a production entry point (``dadam serve`` is): it trusts the ``X-Test-Caller`` header as the
peer's identity, which is only acceptable on loopback between processes we started ourselves.
It runs a :class:`~contracts.NegotiationManager` on its own database with the DSP and
management routers (``--api``) and/or its outbox worker (``--worker``), so one can start, e.g.,
one provider API process and three provider worker processes on one PostgreSQL database.

Keys: the node signs with the EC key in ``--key-file`` (created if missing, shared by replicas of
one participant) and publishes its public key as ``<keys-dir>/<name>.json``; peers' keys are read
from that folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Header
from joserfc.jwk import ECKey
from starlette.types import ASGIApp

from connector._gc import tune_for_serving
from connector.api import DspFastLane, install_error_handlers
from connector.api._protocol import fast_lanes, lane_protocol
from connector.errors import NotFoundError
from connector.identity import Caller
from connector.store import create_engine, migrate
from contracts._api import (
    negotiation_dsp_router,
    negotiation_fast_routes,
    negotiation_management_fast_routes,
    negotiation_management_router,
)
from contracts._manager import NegotiationConfig, NegotiationManager
from contracts._process import RetryPolicy
from contracts._signing import LocalKeySigner

__all__ = ["DirKeyResolver", "OpenOffers", "build_app", "main"]

DSP = "/dsp"
MGMT = "/mgmt"


class DirKeyResolver:
    """Public keys published as ``<dir>/*.json`` files mapping kid -> JWK (re-read on a miss)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._keys: dict[str, dict[str, Any]] = {}

    def public_jwk(self, kid: str) -> dict[str, Any] | None:
        if kid not in self._keys:
            for f in self.folder.glob("*.json"):
                self._keys.update(json.loads(f.read_text()))
        return self._keys.get(kid)


class OpenOffers:
    """Every offer id ``<cd>:<dataset>:<tag>`` resolves to dataset ``<dataset>`` with an open policy."""

    def resolve_offer(self, offer_id: str, caller: Caller) -> Any:
        parts = offer_id.split(":")
        if len(parts) != 3:
            raise NotFoundError(f"no offer {offer_id!r}")
        return SimpleNamespace(
            dataset=SimpleNamespace(id=parts[1]),
            offer_policy_json={"@id": offer_id, "@type": "Offer", "permission": [{"action": "use"}]},
        )


class _HeaderAuth(httpx.Auth):
    def __init__(self, did: str) -> None:
        self.did = did

    def request_headers(self, url: str, body: bytes) -> dict[str, str]:
        return {"X-Test-Caller": self.did}

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers.update(self.request_headers(str(request.url), request.content))
        yield request


async def _loopback_caller(x_test_caller: str | None = Header(None)) -> Caller:
    return Caller(did=x_test_caller or "anonymous")


async def _loopback_authenticate(headers: Mapping[str, str], defer_replay: bool) -> Callable[[], Caller]:
    """:func:`_loopback_caller` for the fast lane."""
    caller = Caller(did=headers.get("x-test-caller") or "anonymous")
    return lambda: caller


def _loopback_authenticate_now(headers: Mapping[str, str], defer_replay: bool) -> Callable[[], Caller]:
    """:func:`_loopback_authenticate` without the event loop."""
    caller = Caller(did=headers.get("x-test-caller") or "anonymous")
    return lambda: caller


async def _allow_all() -> None:
    """Management API access check of this test node (``dadam serve``'s checks are async too)."""


def build_app(args: argparse.Namespace) -> tuple[ASGIApp, NegotiationManager]:
    """The node's app: DSP and the management API, with the hot POSTs in fast lanes in front of
    FastAPI as ``dadam serve`` has them (``--no-fast-lane``: FastAPI serves everything)."""
    engine = create_engine(args.db, pool_size=args.pool)
    if args.migrate:
        migrate(engine)
    key_file = Path(args.key_file)
    if key_file.exists():
        key = ECKey.import_key(json.loads(key_file.read_text()))
    else:
        key = ECKey.generate_key("P-256")
        key_file.write_text(json.dumps(key.as_dict(private=True)))
    signer = LocalKeySigner(args.did, key)
    keys_dir = Path(args.keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    (keys_dir / f"{args.name}.json").write_text(json.dumps({signer.kid: signer.public_jwk()}))
    manager = NegotiationManager(
        engine,
        NegotiationConfig(
            participant_id=args.did,
            dsp_base_url=args.public_url + DSP,
            state_timeout_s=args.state_timeout,
        ),
        offers=OpenOffers(),
        signer=signer,
        keys=DirKeyResolver(keys_dir),
        http=httpx.Client(
            timeout=10.0, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
        ),
        auth_for=lambda _aud: _HeaderAuth(args.did),
        direct_http=args.sender == "direct",
        retry=RetryPolicy(limit=args.retry_limit, base_s=args.retry_base),
        lease_s=args.lease,
        batch_size=args.batch,
        poll_s=args.poll,
        concurrency=args.concurrency,
        worker_owner=f"{args.name}-{os.getpid()}",
        direct_dispatch=not args.no_dispatch,
    )
    app = FastAPI()
    install_error_handlers(app, dsp_path=DSP)
    app.include_router(negotiation_dsp_router(manager, _loopback_caller), prefix=DSP)
    app.include_router(negotiation_management_router(manager, _allow_all, _allow_all), prefix=MGMT)
    served: ASGIApp = app
    if not args.no_fast_lane:
        lanes = ((MGMT, negotiation_management_fast_routes(manager)), (DSP, negotiation_fast_routes(manager)))
        for prefix, routes in lanes:
            served = DspFastLane(
                served,
                prefix=prefix,
                routes=routes,
                authenticate=_loopback_authenticate,
                authenticate_now=_loopback_authenticate_now,
                dsp_path=DSP,
            )
    return served, manager


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m contracts._node", description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--did", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, default=0, help="serve the APIs on this port (0: no API)")
    p.add_argument("--public-url", default="")
    p.add_argument("--worker", action="store_true", help="run the outbox worker")
    p.add_argument("--migrate", action="store_true")
    p.add_argument(
        "--no-dispatch", action="store_true", help="API only: leave every send to the worker processes"
    )
    p.add_argument("--no-fast-lane", action="store_true", help="serve DSP POSTs through FastAPI only")
    p.add_argument(
        "--sender", choices=("direct", "httpx"), default="direct", help="outbox sender (decision 0404)"
    )
    p.add_argument("--key-file", required=True)
    p.add_argument("--keys-dir", required=True)
    p.add_argument("--pool", type=int, default=10)
    p.add_argument("--state-timeout", type=float, default=600)
    p.add_argument("--retry-limit", type=int, default=7)
    p.add_argument("--retry-base", type=float, default=0.2)
    p.add_argument("--lease", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--poll", type=float, default=0.2)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args(argv)
    # The interpreter's default GIL switch interval (5 ms), as dadam serve: a 0.5 ms interval
    # on SQLite was slower in 3 of 3 alternating bench pairs once writes were group-committed
    # (206/210/213 against 212/218/230 negotiations/s).
    if not args.public_url and args.port:
        args.public_url = f"http://127.0.0.1:{args.port}"
    app, manager = build_app(args)
    tune_for_serving()  # as dadam serve does
    if args.worker:
        manager.start()
    if args.port:
        lanes = fast_lanes(app)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                http=lane_protocol(lanes) if lanes else "auto",  # the lanes in uvicorn's protocol (0412)
                host="127.0.0.1",
                port=args.port,
                log_level="warning",
                lifespan="off",
                ws="none",
                access_log=False,
                proxy_headers=False,  # loopback test node: no proxy in front
            )
        )
        server.run()
    else:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        print("worker running", flush=True)
        stop.wait()
    manager.stop()


if __name__ == "__main__":
    main()
