"""``dadam dataplane``: the data plane as its own process (scale it apart from the control plane).

It serves ``/api/public/...`` (pull with EDR tokens, token refresh, the push inbox) and runs the
push worker, over the same database as the control plane; it needs the same DID keys (data_dir
``keys``, mounted from one secret in Kubernetes) because it signs and checks the EDR tokens. The
database is the signalling channel (docs/decisions/0451-data-plane-process.md): the control plane
commits a transfer's state and queues pushes in it, the data plane reads that state on every
request and completes or terminates transfers in it; the control plane's outbox then tells the peer.

With ``DADAM_DATAPLANE_SIGNALING_SECRET`` set it also serves the signaling API under
``/api/signaling`` (decision record 0452): a control plane with ``DADAM_DATAPLANE_SIGNALING_URL``
starts, suspends, resumes and terminates data flows over HTTP, and hears of a push's outcome through
callbacks; such a flow's state, not the transfer row's, decides what is served. A consumer control
plane signals it too (``prepare`` provisions the push inbox of a flow, whose pushes it checks and
reports back with a ``completed`` callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from connector.dataplane._splice import ConnectionApp
from connector.settings import Settings

__all__ = ["create_dataplane_app"]

log = logging.getLogger("dadam.dataplane")


def create_dataplane_app(settings: Settings) -> FastAPI:
    """The standalone data plane app built from ``settings`` (the control plane's, with its own port)."""
    from connector._wiring import (
        build_negotiations,
        build_pushes,
        build_transfers,
        prepaid_account_exists,
        s3_config,
        thread_worker,
    )
    from connector.api import install_error_handlers
    from connector.dataplane._public import public_router, token_router
    from connector.dataplane._push import inbox_router
    from connector.identity import IdentityService
    from connector.runtime import Runtime
    from contracts._transfer_states import Command
    from metering import Ledger

    runtime = Runtime.create(settings)
    identity = IdentityService.create(settings, runtime.engine)
    runtime.identity = identity
    runtime.bank = Ledger(runtime.engine)
    # the managers are built for their state logic only: their outbox worker runs in the control plane
    negotiations = build_negotiations(runtime)
    manager, edr = build_transfers(runtime, negotiations)
    runtime.transfers, runtime.edr = manager, edr
    workers = []
    flows = None
    if settings.dataplane_signaling_secret is not None:  # signaling mode (decision 0452)
        from connector.dataplane._signaling import DataFlows, SignaledPushService

        secret = settings.dataplane_signaling_secret.get_secret_value().encode()
        flows = DataFlows(
            runtime.engine, edr, secret, manager=manager, retry_base_s=settings.send_retry_base_ms / 1000,
            lease_s=float(settings.lease_seconds), poll_s=settings.worker_poll_ms / 1000,
        )  # fmt: skip
        pushes = build_pushes(runtime, flows, cls=SignaledPushService, flows_=flows)
        workers.append(thread_worker(flows.start, flows.stop))
    else:
        pushes = build_pushes(runtime, manager)
    workers.append(thread_worker(pushes.start, pushes.stop))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(w(), name="dataplane-worker") for w in workers]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await identity.aclose()
            runtime.close()

    app = ConnectionApp(title="dadam data plane", version="0.1.0", lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app, dsp_path=settings.dsp_path)

    def terminate(tid: str, reason: str) -> None:
        if flows is not None and flows.errored(tid, reason):  # a signaled flow: the control plane is told
            return
        manager.run_command(tid, Command.TERMINATE, reason)

    app.include_router(
        public_router(
            runtime.engine, runtime.catalog_store, edr,
            claims_for=identity.partners.claims_for, account_open=prepaid_account_exists(runtime),
            s3=s3_config(settings), terminate=terminate, splice=settings.dataplane_splice,
        )
    )  # fmt: skip
    app.include_router(token_router(edr, identity.verifier.verify))
    app.include_router(
        inbox_router(runtime.engine, settings.inbox_dir or settings.data_dir / "inbox", flows=flows)
    )
    if flows is not None:
        from connector.dataplane._signaling import signaling_router

        app.state.flows = flows

        app.include_router(signaling_router(flows, secret), prefix="/api/signaling")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "role": "dataplane", "did": settings.did}

    return app
