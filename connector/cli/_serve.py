"""``dadam serve`` and ``dadam db migrate``."""

from __future__ import annotations

from pathlib import Path

import typer

from connector.errors import DadamError

__all__ = ["conformance_app", "dataplane", "db_app", "demo", "serve"]

db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
conformance_app = typer.Typer(help="DSP conformance (TCK) support.", no_args_is_help=True)


def serve(
    host: str | None = typer.Option(None, help="Interface to bind (default DADAM_HOST)."),
    port: int | None = typer.Option(None, help="Port to listen on (default DADAM_PORT)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Run the connector (DSP, management API, data plane) until SIGTERM or Ctrl-C."""
    import uvicorn

    from connector.app import create_app
    from connector.settings import Settings

    try:
        settings = Settings()
        app = create_app(settings)
    except DadamError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from connector._gc import tune_for_serving
    from connector.api._protocol import fast_lanes, lane_protocol

    tune_for_serving()
    lanes = fast_lanes(app)
    uvicorn.run(
        app,
        http=lane_protocol(lanes) if lanes else "auto",  # the DSP fast lane in uvicorn's protocol (0412)
        host=host or settings.host,
        port=port or settings.port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
    )


def dataplane(
    host: str | None = typer.Option(None, help="Interface to bind (default DADAM_HOST)."),
    port: int | None = typer.Option(None, help="Port to listen on (default DADAM_PORT)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Run the data plane alone (public data endpoint, token refresh, push inbox and push worker) on
    the control plane's database and keys; set DADAM_DATAPLANE_EMBEDDED=false on the control plane."""
    import uvicorn

    from connector.dataplane._service import create_dataplane_app
    from connector.settings import Settings

    try:
        settings = Settings()
        app = create_dataplane_app(settings)
    except DadamError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from connector._gc import tune_for_serving

    tune_for_serving()
    uvicorn.run(app, host=host or settings.host, port=port or settings.port, log_level=log_level,
                access_log=False, lifespan="on")  # fmt: skip


@db_app.command("migrate")
def migrate_cmd() -> None:
    """Create or upgrade the schema of DADAM_DATABASE_URL (every package's branch to its head)."""
    from connector.settings import Settings
    from connector.store import create_engine, migrate

    settings = Settings()
    try:
        engine = create_engine(settings.effective_database_url())
        migrate(engine)
    except DadamError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    engine.dispose()
    typer.echo(f"schema is up to date ({engine.url.render_as_string(hide_password=True)})")


def demo(
    serve: bool = typer.Option(False, "--serve", help="Keep both connectors running until Ctrl-C."),
) -> None:
    """Two connectors on loopback: publish, discover over DSP, and more (see the README)."""
    from connector._demo import run_demo

    raise typer.Exit(run_demo(serve=serve))


@conformance_app.command("serve")
def conformance_serve(
    host: str = typer.Option(
        "127.0.0.1", help="Interface to bind (loopback: this server trusts every caller)."
    ),
    port: int = typer.Option(8282, help="Port to listen on."),
    data_dir: Path = typer.Option(
        Path(".dadam-tck"), help="Where the test database and keys go (a fresh SQLite database is fine)."
    ),
) -> None:
    """Serve a connector-under-test for the DSP TCK: prints its properties, then 'ready'."""
    from connector._conformance import serve as run

    run(host, port, data_dir, print_fn=lambda line: typer.echo(line))
