"""The connector's runtime: settings, database, services and background workers in one object.

``Runtime.create(settings)`` opens the database (SQLite under ``data_dir`` or PostgreSQL),
migrates it and builds the catalog. The slots ``identity``, ``negotiations``, ``transfers`` and
``bank`` start as ``None`` and are filled by the packages that provide them; ``workers`` is a list
of async callables that the app's lifespan runs as tasks (cancelled at shutdown, so a worker
loops until cancelled and cleans up in ``finally``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from catalog import AccessEvaluator, CatalogService, CatalogStore, PolicyEngineEvaluator
from connector.settings import Settings
from connector.store import create_engine, migrate

__all__ = ["Runtime", "Worker"]

#: A background worker: runs until cancelled.
Worker = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Runtime:
    """Everything a running connector holds. Build with :meth:`create`; close with :meth:`close`."""

    settings: Settings
    engine: Engine
    catalog_store: CatalogStore
    catalog: CatalogService
    #: DCP identity (token verifier, management auth); set by connector.identity when wired.
    identity: Any | None = None
    #: Contract negotiation manager (contracts package).
    negotiations: Any | None = None
    #: Transfer process manager / data plane.
    transfers: Any | None = None
    #: The data bank (metering and settlement).
    bank: Any | None = None
    #: The data plane's EDR issuer (connector.dataplane.EdrService).
    edr: Any | None = None
    workers: list[Worker] = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings, *, access_evaluator: AccessEvaluator | None = None) -> Runtime:
        """Open and migrate the database and build the catalog service.

        Access policies are evaluated by the ``usage_policy`` engine (fail closed) unless another
        ``access_evaluator`` is given.
        """
        engine = create_engine(settings.effective_database_url(), pool_size=settings.db_pool_size)
        migrate(engine)
        store = CatalogStore(engine)
        service = CatalogService(
            store,
            participant_id=settings.did,
            dsp_base_url=settings.dsp_base_url,
            access_evaluator=access_evaluator or PolicyEngineEvaluator(),
        )
        return cls(settings=settings, engine=engine, catalog_store=store, catalog=service)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()
