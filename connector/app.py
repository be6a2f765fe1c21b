"""The FastAPI application factory.

``create_app(settings)`` builds a :class:`~connector.runtime.Runtime` (database migrated) and
mounts:

* ``GET /.well-known/dspace-version`` (unauthenticated version metadata);
* the DSP catalog endpoints under ``settings.dsp_path`` (default ``/api/dsp/2025-1``);
* the management API under ``settings.management_path`` (default ``/api/management/v1``), with
  its OpenAPI document at ``/openapi.json`` and docs at ``/docs``.

Body size limit (413), content-type checks (415) and DSP/management error bodies apply to every
route. The lifespan runs ``runtime.workers`` as tasks and cancels them at shutdown.

DSP callers are identified by ``dsp_caller`` (a FastAPI dependency returning a
:class:`~connector.identity.Caller`); management routes are protected by ``management_auth``
(an object with ``require_read`` / ``require_write`` dependencies). When they are not given,
``create_app`` uses ``connector.identity``'s implementations if that package provides them, else
the fail-closed fallbacks of :mod:`connector.api._auth` (anonymous DSP caller; X-Api-Key only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import Depends, FastAPI

from connector._dsp_client import DspClient
from connector._remote_api import remote_catalog_router
from connector._wiring import (
    bank_worker,
    build_negotiations,
    build_pushes,
    build_transfers,
    did_verifier,
    due_receipts,
    install_signaling,
    prepaid_account_exists,
    price_lookup,
    receipt_exchange,
    reserve_at_transfer_start,
    s3_config,
    shares_lookup,
    thread_worker,
)
from connector.api import (
    ApiKeyAuth,
    Authenticate,
    AuthenticateNow,
    BodyLimitMiddleware,
    DspFastLane,
    anonymous_caller,
    dsp_catalog_router,
    install_error_handlers,
    management_router,
    version_router,
)
from connector.dataplane import (
    EdrRefresher,
    EdrService,
    consumer_destination,
    inbox_router,
    public_router,
    token_router,
)
from connector.dataplane._fetch import consumer_fetch_router
from connector.dataplane._splice import ConnectionApp
from connector.identity import IdentityService, did_router, partners_router
from connector.runtime import Runtime
from connector.settings import Settings
from contracts import (
    NegotiationManager,
    negotiation_dsp_router,
    negotiation_fast_routes,
    negotiation_management_fast_routes,
    negotiation_management_router,
)
from contracts._transfer import TransferManager
from contracts._transfer_api import transfer_dsp_router, transfer_management_router
from contracts._transfer_states import Command
from metering import Ledger, Settlement, bank_router, record_usage_events
from metering._api import bank_peer_router, settlement_router
from usage_policy._api import policy_router

__all__ = ["create_app"]

log = logging.getLogger("dadam.app")


def _identity_dependencies(runtime: Runtime) -> tuple[Callable[..., Any] | None, Any | None]:
    """The DSP caller dependency and management auth from connector.identity, when it provides them."""
    try:
        from connector import identity
    except ImportError:  # pragma: no cover - identity is part of the package
        return None, None
    caller = None
    auth = None
    verifier = getattr(runtime.identity, "verifier", None) if runtime.identity is not None else None
    if verifier is not None and hasattr(identity, "dsp_caller_dependency"):
        caller = identity.dsp_caller_dependency(verifier)
    if hasattr(identity, "ManagementAuth"):
        auth = identity.ManagementAuth(runtime.settings)
    return caller, auth


def _token_caller(verifier: Any) -> Authenticate:
    """The fast lane's ``authenticate``: what ``dsp_caller_dependency(verifier)`` does, the
    signature and replay checks left for the lane's worker thread."""

    async def authenticate(headers: Mapping[str, str], defer_replay: bool) -> Callable[[], Any]:
        finish: Callable[[], Any] = await verifier.prepare(
            headers.get("authorization"), defer_replay=defer_replay
        )
        return finish

    return authenticate


def _token_caller_now(verifier: Any) -> AuthenticateNow:
    """:func:`_token_caller` without the event loop where the caller's DID document is cached."""

    def authenticate_now(headers: Mapping[str, str], defer_replay: bool) -> Callable[[], Any] | None:
        finish: Callable[[], Any] | None = verifier.prepare_now(
            headers.get("authorization"), defer_replay=defer_replay
        )
        return finish

    return authenticate_now


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    dsp_caller: Callable[..., Any] | None = None,
    management_auth: Any | None = None,
) -> FastAPI:
    """Build the connector app (see the module docstring)."""
    owns_runtime = runtime is None
    if runtime is None:
        runtime = Runtime.create(settings or Settings())
        # A connector started from settings always authenticates its peers (DCP tokens).
        runtime.identity = IdentityService.create(runtime.settings, runtime.engine)
        manager = build_negotiations(runtime)
        runtime.negotiations = manager
        runtime.workers.append(thread_worker(manager.start, manager.stop))
        runtime.bank = Ledger(runtime.engine)
        ident = runtime.identity.identity
        runtime.workers.append(
            bank_worker(
                runtime.bank,
                lambda payload: ident.sign_jws(payload, detached=True),
                float(runtime.settings.bank_checkpoint_seconds),
                int(runtime.settings.bank_checkpoint_entries),
                receipts=due_receipts(runtime),
            )
        )
        runtime.transfers, runtime.edr = build_transfers(runtime, manager)
        if runtime.settings.dataplane_signaling_url:  # the data plane is driven over HTTP (0452)
            install_signaling(runtime, runtime.transfers)
        else:
            pushes = build_pushes(runtime, runtime.transfers)  # queues pushes when transfers start
            if runtime.settings.dataplane_embedded:  # else `dadam dataplane` processes run them
                runtime.workers.append(thread_worker(pushes.start, pushes.stop))
    settings = runtime.settings
    rt = runtime

    found_caller, found_auth = _identity_dependencies(rt)
    caller_dep = dsp_caller or found_caller or anonymous_caller
    auth = management_auth or found_auth or ApiKeyAuth(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(worker(), name=getattr(worker, "__name__", "worker")) for worker in rt.workers
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                    log.error("worker ended with an error: %r", result)
            if owns_runtime:
                if isinstance(rt.identity, IdentityService):
                    await rt.identity.aclose()
                rt.close()

    app = ConnectionApp(
        title="dadam connector",
        version="0.1.0",
        description="Dataspace Protocol 2025-1 connector: catalog, contracts, transfers, data bank.",
        lifespan=lifespan,
    )
    app.state.runtime = rt
    install_error_handlers(app, dsp_path=settings.dsp_path)
    verifier = getattr(rt.identity, "verifier", None) if isinstance(rt.identity, IdentityService) else None
    if (
        settings.dsp_fast_lane
        and dsp_caller is None
        and verifier is not None
        and isinstance(rt.negotiations, NegotiationManager)
    ):
        # in front of the whole framework, with the body limit of its own (decisions 0405, 0409);
        # behind it, the management API's start of a negotiation, where its auth allows
        framework: Any = app.framework
        lane_write = getattr(auth, "lane_write", None)
        if callable(lane_write):
            framework = DspFastLane(
                framework,
                prefix=settings.management_path,
                routes=negotiation_management_fast_routes(rt.negotiations),
                authenticate=lane_write,
                authenticate_now=getattr(auth, "lane_write_now", None),
                dsp_path=settings.dsp_path,
                max_bytes=settings.max_body_bytes,
            )
        app.fast_lane = DspFastLane(
            framework,
            prefix=settings.dsp_path,
            routes=negotiation_fast_routes(rt.negotiations),
            authenticate=_token_caller(verifier),
            authenticate_now=_token_caller_now(verifier) if hasattr(verifier, "prepare_now") else None,
            dsp_path=settings.dsp_path,
            max_bytes=settings.max_body_bytes,
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, dsp_path=settings.dsp_path)

    app.include_router(version_router(settings.dsp_path))
    if isinstance(rt.identity, IdentityService):
        app.include_router(did_router(rt.identity.identity))
        app.include_router(
            partners_router(rt.identity.partners, auth.require_read, auth.require_write),
            prefix=settings.management_path,
        )
    else:
        log.warning("no identity configured: DSP callers are not authenticated (test or embedded use only)")
    app.include_router(
        dsp_catalog_router(
            rt.catalog,
            caller_dep,
            max_body_bytes=settings.max_body_bytes,
            default_page_size=settings.catalog_page_size,
        ),
        prefix=settings.dsp_path,
    )
    app.include_router(
        management_router(
            rt.catalog_store,
            rt.catalog,
            require_read=auth.require_read,
            require_write=auth.require_write,
        ),
        prefix=settings.management_path,
    )
    if isinstance(rt.negotiations, NegotiationManager):
        app.include_router(negotiation_dsp_router(rt.negotiations, caller_dep), prefix=settings.dsp_path)
        app.include_router(
            negotiation_management_router(rt.negotiations, auth.require_read, auth.require_write),
            prefix=settings.management_path,
        )
    if isinstance(rt.transfers, TransferManager):
        app.include_router(transfer_dsp_router(rt.transfers, caller_dep), prefix=settings.dsp_path)
        s3 = s3_config(settings)
        identity_service = rt.identity if isinstance(rt.identity, IdentityService) else None

        def destination_for(fmt: str, requested: dict[str, Any] | None) -> Any:
            if settings.dataplane_signaling_url and fmt == "HttpData-PUSH" and not requested:
                return None  # signaling mode: the data plane's `prepare` answers its push inbox (0452)
            return consumer_destination(fmt, requested, public_url=settings.dataplane_url, s3=s3)

        edr_refresher = EdrRefresher(
            rt.engine, auth_for=identity_service.auth_for if identity_service else None
        )
        app.include_router(
            transfer_management_router(
                rt.transfers,
                auth.require_read,
                auth.require_write,
                destination_for=destination_for,
                edr=edr_refresher,
            ),
            prefix=settings.management_path,
        )
        usage_engine = rt.bank.engine if isinstance(rt.bank, Ledger) else rt.engine

        def record_own_usage(events: Any) -> None:
            with usage_engine.begin() as conn:
                record_usage_events(conn, events)

        app.include_router(
            consumer_fetch_router(
                rt.engine,
                edr_refresher,
                auth.require_read,
                consumer_did=settings.did,
                record=record_own_usage,
            ),
            prefix=settings.management_path,
        )
        signals = getattr(rt.transfers, "dataplane", None)
        if signals is not None and settings.dataplane_signaling_secret is not None:
            from contracts._dataflow import dataflow_callback_router

            secret = settings.dataplane_signaling_secret.get_secret_value().encode()
            app.include_router(dataflow_callback_router(signals, secret), prefix="/api/signaling")
        if settings.dataplane_embedded:
            app.include_router(inbox_router(rt.engine, settings.inbox_dir or settings.data_dir / "inbox"))
        if isinstance(rt.edr, EdrService) and identity_service is not None and settings.dataplane_embedded:
            transfers_manager = rt.transfers

            def terminate(tid: str, reason: str) -> None:
                transfers_manager.run_command(tid, Command.TERMINATE, reason)

            app.include_router(
                public_router(
                    rt.engine,
                    rt.catalog_store,
                    rt.edr,
                    claims_for=identity_service.partners.claims_for,
                    account_open=prepaid_account_exists(rt),
                    s3=s3,
                    terminate=terminate,
                    splice=settings.dataplane_splice,
                )
            )
            app.include_router(token_router(rt.edr, identity_service.verifier.verify))
    if isinstance(rt.bank, Ledger):
        app.include_router(
            bank_router(rt.bank, auth.require_read, auth.require_write), prefix=settings.management_path
        )
        if isinstance(rt.identity, IdentityService):
            ident = rt.identity.identity

            def sign(payload: bytes) -> str:
                return ident.sign_jws(payload, detached=True)

            settlement = Settlement(rt.bank, did=settings.did, sign=sign, shares_for=shares_lookup(rt))
            if isinstance(rt.transfers, TransferManager) and settings.bank_reservation_minor_units > 0:
                reserve_at_transfer_start(rt.transfers, settlement, settings)
            verify = did_verifier(settings.did_web_allow_http)
            app.include_router(
                bank_peer_router(settlement, caller_dep, sign=sign, verify=verify), prefix=settings.dsp_path
            )
            app.include_router(
                settlement_router(
                    settlement,
                    exchange=receipt_exchange(rt.identity),
                    exchange_statement_with=receipt_exchange(rt.identity, "/bank/statements"),
                    sign=sign,
                    verify=verify,
                    price_for=price_lookup(rt),
                    require_read=auth.require_read,
                    require_write=auth.require_write,
                    period_s=settings.bank_period_seconds,
                    receipt_events=settings.bank_receipt_events,
                    period_grace_s=settings.bank_period_grace_seconds,
                    dsp_base_url=settings.dsp_base_url,
                ),
                prefix=settings.management_path,
            )
    dsp_client = DspClient(auth_for=getattr(rt.identity, "auth_for", None))
    app.include_router(remote_catalog_router(dsp_client, auth.require_read), prefix=settings.management_path)
    app.include_router(
        policy_router(), prefix=settings.management_path, dependencies=[Depends(auth.require_read)]
    )
    oauth_router = _oauth_router(auth)
    if oauth_router is not None:
        app.include_router(oauth_router, prefix=settings.management_path)
    return app


def _oauth_router(auth: Any) -> Any | None:
    """connector.identity's OAuth2 token endpoint router for ``auth``, when identity provides one."""
    from connector import identity

    factory = getattr(identity, "oauth_router", None)
    if factory is None or isinstance(auth, ApiKeyAuth):
        return None
    return factory(auth)
