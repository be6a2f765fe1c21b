"""``dadam dataplane``: the data plane as its own process (scale it apart from the control plane).

It serves ``/api/public/...`` (pull with EDR tokens, token refresh, the push inbox) and runs the
push worker, over the same database as the control plane; it needs the same DID keys (data_dir
``keys``, mounted from one secret in Kubernetes) because it signs and checks the EDR tokens. The
database is the signalling channel (docs/decisions/0451-data-plane-process.md): the control plane
commits a transfer's state and queues pushes in it, the data plane reads that state on every
request and completes or terminates transfers in it; the control plane's outbox then tells the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

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
    pushes = build_pushes(runtime, manager)
    worker = thread_worker(pushes.start, pushes.stop)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(worker(), name="push-worker")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await identity.aclose()
            runtime.close()

    app = FastAPI(title="dadam data plane", version="0.1.0", lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app, dsp_path=settings.dsp_path)

    def terminate(tid: str, reason: str) -> None:
        manager.run_command(tid, Command.TERMINATE, reason)

    app.include_router(
        public_router(
            runtime.engine, runtime.catalog_store, edr,
            claims_for=identity.partners.claims_for, account_open=prepaid_account_exists(runtime),
            s3=s3_config(settings), terminate=terminate,
        )
    )  # fmt: skip
    app.include_router(token_router(edr, identity.verifier.verify))
    app.include_router(inbox_router(runtime.engine, settings.inbox_dir or settings.data_dir / "inbox"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "role": "dataplane", "did": settings.did}

    return app
