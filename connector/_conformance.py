"""``dadam conformance serve``: this connector as the connector-under-test of the DSP TCK.

Test-only wiring, never used by ``dadam serve``: seeds the TCK's ids (datasets CAT0101/CAT0102,
offers ``CD123:ACN0xyz:456``; CAT0103 absent), runs the per-id scripts of
``docs/dsp-conformance.md`` §5 and mounts the TCK's initiate webhooks. The TCK sends no DCP token
(or a fixed header value), so DSP callers are identified as the TCK participant without
verification: never expose this server beyond loopback.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr

from catalog.samples import seed_tck
from connector._wiring import build_negotiations, build_transfers, thread_worker
from connector.app import create_app
from connector.identity import Caller, IdentityService
from connector.runtime import Runtime
from connector.settings import Settings
from contracts import NegotiationConfig
from metering import Ledger

__all__ = ["TCK_PARTICIPANT", "build_conformance_app", "tck_properties"]

#: The participant id the TCK uses for itself.
TCK_PARTICIPANT = "TCK_PARTICIPANT"
NEGOTIATION_INITIATE = "/tck/negotiations/initiate"
TRANSFER_INITIATE = "/tck/transfers/initiate"


async def tck_caller() -> Caller:
    """Every DSP caller is the TCK (no token verification: loopback test server only)."""
    return Caller(did=TCK_PARTICIPANT)


def tck_properties(settings: Settings, *, with_transfer: bool) -> dict[str, str]:
    """The TCK configuration keys this server needs, as ``key -> value``."""
    base = settings.public_url
    props = {
        "dataspacetck.dsp.connector.agent.id": settings.did,
        "dataspacetck.dsp.connector.http.url": settings.dsp_base_url,
        "dataspacetck.dsp.connector.http.base.url": base,
        "dataspacetck.dsp.connector.negotiation.initiate.url": base + NEGOTIATION_INITIATE,
    }
    if with_transfer:
        props["dataspacetck.dsp.connector.transfer.initiate.url"] = base + TRANSFER_INITIATE
    return props


def build_conformance_app(
    host: str, port: int, data_dir: Path, *, script_delay_s: float = 0.7, reply_delay_s: float = 0.2
) -> tuple[FastAPI, Runtime, dict[str, str]]:
    """The connector-under-test app on a fresh SQLite database under ``data_dir``."""
    from contracts.conformance import ConformanceOffers, initiate_router, script_for

    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        public_url=f"http://{host}:{port}",
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=SecretStr(f"sqlite:///{(data_dir / 'tck.db').as_posix()}"),
        did_web_allow_http=True,
    )
    runtime = Runtime.create(settings)
    seed_tck(runtime.catalog_store)
    runtime.identity = IdentityService.create(settings, runtime.engine)
    manager = build_negotiations(
        runtime,
        offers=ConformanceOffers(runtime.catalog),
        scripts=script_for,
        config=NegotiationConfig(
            participant_id=settings.did,
            dsp_base_url=settings.dsp_base_url,
            state_timeout_s=float(settings.state_timeout_seconds),
            reply_delay_s=reply_delay_s,
            script_delay_s=script_delay_s,
        ),
    )
    runtime.negotiations = manager
    runtime.workers.append(thread_worker(manager.start, manager.stop))
    from contracts._transfer import TransferManager
    from contracts.transfer_conformance import seed_agreements, tp_script_for, transfer_initiate_router

    runtime.bank = Ledger(runtime.engine)
    transfers, runtime.edr = build_transfers(runtime, manager)
    assert isinstance(transfers, TransferManager)
    transfers.scripts = tp_script_for
    transfers.script_delay_s = script_delay_s
    runtime.transfers = transfers
    seed_agreements(runtime.engine, settings.did)
    app = create_app(runtime=runtime, dsp_caller=tck_caller)
    app.include_router(initiate_router(manager, NEGOTIATION_INITIATE))
    app.include_router(transfer_initiate_router(transfers, TRANSFER_INITIATE))
    return app, runtime, tck_properties(settings, with_transfer=True)


def serve(host: str, port: int, data_dir: Path, print_fn: Callable[[str], Any] = print) -> None:
    """Print the TCK properties, then ``ready``, and serve until SIGTERM."""
    import uvicorn

    app, runtime, props = build_conformance_app(host, port, data_dir)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    started = threading.Event()

    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets)
        started.set()
        for key, value in props.items():
            print_fn(f"{key}={value}")
        print_fn("ready")

    server.startup = startup  # type: ignore[method-assign]
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    try:
        server.run()
    finally:
        runtime.close()
