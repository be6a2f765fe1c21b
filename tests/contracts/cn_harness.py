"""Test harness for contract negotiation: connectors (manager + FastAPI app) served on loopback.

A :class:`Node` is one connector's negotiation stack: its own database, a
:class:`~contracts.NegotiationManager`, a FastAPI app with the DSP and management routers, and a
real uvicorn server on 127.0.0.1 (in a thread, stopped at teardown). Peers identify themselves
with the ``X-Test-Caller`` header (a stand-in for DCP tokens; the identity package has its own
tests), so "not yours" and "wrongly addressed" can be tested.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Header, Request, Response
from threaded_server import ServerThread, bind_loopback, serve_in_thread

from connector.api import DspFastLane, install_error_handlers
from connector.identity import Caller
from connector.store import create_engine, migrate
from contracts import (
    LocalKeySigner,
    NegotiationConfig,
    NegotiationManager,
    RetryPolicy,
    StaticKeyResolver,
    negotiation_dsp_router,
    negotiation_fast_routes,
    negotiation_management_router,
)

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec"
PG_ADMIN_URL = os.environ.get("DADAM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DSP = "/dsp"
MGMT = "/mgmt"

OPEN_POLICY: dict[str, Any] = {"permission": [{"action": "use"}]}
MEMBERS_ONLY: dict[str, Any] = {
    "permission": [
        {
            "action": "use",
            "constraint": [
                {
                    "leftOperand": "https://w3id.org/catenax/policy/Membership",
                    "operator": "eq",
                    "rightOperand": "active",
                }
            ],
        }
    ]
}


class FakeOffers:
    """OfferResolver over a dict: offer id -> (dataset id, offer policy)."""

    def __init__(self, offers: dict[str, tuple[str, dict[str, Any]]]) -> None:
        self.offers = offers

    def resolve_offer(self, offer_id: str, caller: Caller) -> Any:
        from connector.errors import NotFoundError

        if offer_id not in self.offers:
            raise NotFoundError(f"no offer {offer_id!r}")
        ds, policy = self.offers[offer_id]
        return SimpleNamespace(
            dataset=SimpleNamespace(id=ds), offer_policy_json={"@id": offer_id, "@type": "Offer", **policy}
        )


class HeaderAuth(httpx.Auth):
    def __init__(self, did: str) -> None:
        self.did = did

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["X-Test-Caller"] = self.did
        yield request


CLAIMS: dict[str, dict[str, Any]] = {}


def fake_caller(x_test_caller: str | None = Header(None)) -> Caller:
    did = x_test_caller or "anonymous"
    return Caller(did=did, claims=CLAIMS.get(did, {}))


async def fake_authenticate(headers: Mapping[str, str], defer_replay: bool) -> Callable[[], Caller]:
    """:func:`fake_caller` for the DSP fast lane (no token: nothing to record)."""
    caller = fake_caller(headers.get("x-test-caller"))
    return lambda: caller


#: how the harness serves a node's app and the TCK's (uvicorn's defaults otherwise)
SERVER_CONFIG: dict[str, Any] = {"log_level": "warning", "lifespan": "off", "ws": "none"}


@dataclass
class Node:
    name: str
    did: str
    url: str
    engine: sa.Engine
    manager: NegotiationManager
    signer: LocalKeySigner | None
    served: ServerThread
    app: FastAPI
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dsp(self) -> str:
        return self.url + DSP

    def mgmt(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + MGMT, timeout=10)

    def wait_state(self, nid: str, states: set[str], timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.time() + timeout
        view = self.manager.get(nid)
        while time.time() < deadline:
            view = self.manager.get(nid)
            if view["internalState"] in states:
                return view
            time.sleep(0.02)
        raise AssertionError(f"{self.name}: {nid} stuck in {view['internalState']} ({view['errorDetail']})")

    def stop(self) -> None:
        self.manager.stop()
        # its keep-alive connections to the peer, else closed by the garbage collector later,
        # as a ResourceWarning charged to whichever test runs then
        self.manager.http.close()
        self.served.stop()
        self.engine.dispose()


def make_node(
    name: str,
    db_url: str,
    *,
    keys: StaticKeyResolver,
    offers: FakeOffers | None = None,
    sign: bool = True,
    config: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    scripts: Callable[[str | None], Any] | None = None,
    http: httpx.Client | None = None,
    fast_lane: bool = True,
) -> Node:
    """A node; ``fast_lane`` serves the DSP POSTs in :class:`~connector.api.DspFastLane`, as
    ``dadam serve`` does (False: through FastAPI only)."""
    sock = bind_loopback()  # held until the server listens on it: no other process can take it
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    did = f"did:web:127.0.0.1%3A{port}:{name}"
    try:
        engine = create_engine(db_url)
        migrate(engine)
        signer = LocalKeySigner(did) if sign else None
        if signer is not None:
            keys.add(signer.kid, signer.public_jwk())
        cfg = NegotiationConfig(participant_id=did, dsp_base_url=url + DSP, **(config or {}))
        manager = NegotiationManager(
            engine,
            cfg,
            offers=offers,
            signer=signer,
            keys=keys,
            http=http or httpx.Client(timeout=5),
            auth_for=lambda _aud: HeaderAuth(did),
            retry=retry or RetryPolicy(limit=3, base_s=0.05),
            scripts=scripts,
            poll_s=0.05,
        )
        app = FastAPI()
        install_error_handlers(app, dsp_path=DSP)
        app.include_router(negotiation_dsp_router(manager, fake_caller), prefix=DSP)
        app.include_router(negotiation_management_router(manager, lambda: None, lambda: None), prefix=MGMT)
        if fast_lane:
            routes = negotiation_fast_routes(manager)
            app.add_middleware(
                DspFastLane, prefix=DSP, routes=routes, authenticate=fake_authenticate, dsp_path=DSP
            )
        served = serve_in_thread(app, sock=sock, **SERVER_CONFIG)
    except BaseException:
        sock.close()  # the server never took it
        raise
    manager.start()
    return Node(name, did, url, engine, manager, signer, served, app)


# --- official DSP 2025-1 schemas ----------------------------------------------------------------

CN_SCHEMAS = {
    "ContractRequestMessage": "negotiation/contract-request-message-schema.json",
    "ContractOfferMessage": "negotiation/contract-offer-message-schema.json",
    "ContractAgreementMessage": "negotiation/contract-agreement-message-schema.json",
    "ContractAgreementVerificationMessage": "negotiation/contract-agreement-verification-message-schema.json",
    "ContractNegotiationEventMessage": "negotiation/contract-negotiation-event-message-schema.json",
    "ContractNegotiationTerminationMessage": "negotiation/contract-negotiation-termination-message-schema.json",
    "ContractNegotiation": "negotiation/contract-negotiation-schema.json",
    "ContractNegotiationError": "negotiation/contract-negotiation-error-schema.json",
}


def _load_schema(path: Path) -> dict[str, Any]:
    import json

    doc: dict[str, Any] = json.loads(
        path.read_text(encoding="utf-8").replace("#definitions/", "#/definitions/")
    )
    return doc


_REGISTRY: Any = None


def schema_errors(body: Any) -> list[str]:
    """Violations of ``body`` against the official schema registered for its ``@type`` (TCK rule)."""
    global _REGISTRY
    from jsonschema import Draft201909Validator
    from referencing import Registry, Resource

    if _REGISTRY is None:
        docs = [_load_schema(p) for p in (SPEC / "dsp").glob("*/*-schema.json")]
        _REGISTRY = Registry().with_resources([(d["$id"], Resource.from_contents(d)) for d in docs])
    if not isinstance(body, dict) or not isinstance(body.get("@type"), str):
        return ["body has no string @type"]
    if body["@type"] not in CN_SCHEMAS:
        return [f"no schema registered for {body['@type']!r}"]
    v = Draft201909Validator(_load_schema(SPEC / "dsp" / CN_SCHEMAS[body["@type"]]), registry=_REGISTRY)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(body)]


# --- a scripted TCK counter-party ---------------------------------------------------------------

TCK_DID = "TCK_PARTICIPANT"  # the TCK's participant id, as its token identifies it
CTX = ["https://w3id.org/dspace/2025/1/context.jsonld"]


class Tck:
    """Plays the DSP TCK's side (dsp-conformance.md §4): records every message the connector
    under test sends to ``<K>``, checks it against the official schema for its ``@type``,
    answers 200 (and a ContractNegotiation with its own providerPid for an initial request),
    and sends TCK-shaped messages to the CUT."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.schema_problems: list[str] = []
        self.provider_pid = str(uuid.uuid4())
        #: Scripted answers for the next requests: (status, delay in seconds); default 200 at once.
        self.answers: list[tuple[int, float]] = []
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def catch(path: str, request: Request) -> Response:
            raw = await request.body()
            body = orjson.loads(raw) if raw else {}
            problems = schema_errors(body)
            if problems:
                self.schema_problems.append(f"/{path}: {problems}")
            self.received.put(("/" + path, body))
            if self.answers:
                import asyncio

                status, delay = self.answers.pop(0)
                await asyncio.sleep(delay)
                if status != 200:
                    return Response(b"unavailable", status)
            if path.rstrip("/") == "negotiations/request":
                ack = {
                    "@context": CTX,
                    "@type": "ContractNegotiation",
                    "providerPid": self.provider_pid,
                    "consumerPid": body.get("consumerPid"),
                    "state": "REQUESTED",
                }
                return Response(orjson.dumps(ack), 200, media_type="application/json")
            return Response(b"", 200)

        self.served = serve_in_thread(app, **SERVER_CONFIG)
        self.url = self.served.url
        self.http = httpx.Client(timeout=10, headers={"X-Test-Caller": TCK_DID})

    def stop(self) -> None:
        self.http.close()
        self.served.stop()

    def expect(self, type_: str, path_suffix: str, timeout: float = 10.0) -> dict[str, Any]:
        try:
            path, body = self.received.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the CUT did not send {type_} within {timeout} s") from None
        assert body.get("@type") == type_, f"expected {type_}, got {body.get('@type')} at {path}"
        assert path.rstrip("/").endswith(path_suffix), f"{type_} sent to {path}, expected …{path_suffix}"
        assert not self.schema_problems, self.schema_problems
        return body

    def nothing_more(self, wait: float = 0.15) -> None:
        time.sleep(wait)
        assert self.received.empty(), f"unexpected message: {self.received.get_nowait()}"

    def post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(url, json={"@context": CTX, "@id": str(uuid.uuid4()), **body})

    def request_negotiation(self, provider: Node, offer_id: str, dataset: str) -> tuple[str, str]:
        """Send an initial ContractRequestMessage for ``offer_id`` (open policy on ``dataset``);
        (providerPid, consumerPid) of the new negotiation."""
        cpid = str(uuid.uuid4())
        offer = {"@id": offer_id, "@type": "Offer", "target": dataset, "permission": [{"action": "use"}]}
        r = self.post(
            f"{provider.dsp}/negotiations/request",
            {
                "@type": "ContractRequestMessage",
                "consumerPid": cpid,
                "offer": offer,
                "callbackAddress": self.url,
            },
        )
        assert r.status_code == 201, r.text
        return r.json()["providerPid"], cpid


@contextlib.contextmanager
def database_factory(backend: str, folder: Path) -> Iterator[Callable[[], str]]:
    """A factory of fresh database URLs on ``backend``; PostgreSQL databases are dropped at exit."""
    created: list[str] = []
    admin: sa.Engine | None = None
    if backend == "postgres":
        try:
            admin = sa.create_engine(
                PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                isolation_level="AUTOCOMMIT",
            )
            with admin.connect() as conn:
                conn.execute(sa.text("select 1"))
        except Exception as exc:
            if os.environ.get("CI"):
                pytest.fail(f"CI must run the PostgreSQL tests: {exc}")
            pytest.skip(f"PostgreSQL not reachable: {exc}")

    def make() -> str:
        if admin is None:
            return f"sqlite:///{(folder / f'{uuid.uuid4().hex[:8]}.db').as_posix()}"
        name = f"dadam_cn_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"

    try:
        yield make
    finally:
        if admin is not None:
            with admin.connect() as conn:
                for name in created:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
