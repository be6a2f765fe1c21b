"""``dadam catalog``: seed samples, export DCAT-AP Turtle, check Turtle against our SHACL shapes.

Works on the database of the current settings (``DADAM_DATABASE_URL`` or the SQLite file under
``DADAM_DATA_DIR``), migrating it first.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["app"]

app = typer.Typer(help="Catalog: sample data, DCAT-AP export, SHACL check.", no_args_is_help=True)


def _service() -> tuple[object, object]:
    from catalog._service import CatalogService
    from catalog._store import CatalogStore
    from connector.settings import Settings
    from connector.store import create_engine, migrate

    settings = Settings()
    engine = create_engine(settings.effective_database_url())
    migrate(engine)
    store = CatalogStore(engine)
    return store, CatalogService(store, participant_id=settings.did, dsp_base_url=settings.dsp_base_url)


@app.command("seed")
def seed(
    samples: bool = typer.Option(True, help="The three brake-disc sample datasets with their policies."),
    tck: bool = typer.Option(
        False, help="Also what the DSP TCK provider tests expect (CAT0101, CD123, ...)."
    ),
) -> None:
    """Store sample datasets, policies and contract definitions (existing ids are left alone)."""
    from catalog._store import CatalogStore
    from catalog.samples import seed_samples, seed_tck

    store, _ = _service()
    assert isinstance(store, CatalogStore)
    if samples:
        seed_samples(store)
    if tck:
        seed_tck(store)
    typer.echo(f"catalog has {store.query_datasets(limit=1).total} datasets")


@app.command("export")
def export(
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here instead of standard output."),
    check: bool = typer.Option(True, help="Validate the export against catalog/shapes/dcat-ap-dadam.ttl."),
) -> None:
    """Export the whole catalog as DCAT-AP Turtle (public metadata only)."""
    from rdflib import Graph

    from catalog._service import CatalogService
    from catalog._turtle import validate_graph

    _, service = _service()
    assert isinstance(service, CatalogService)
    text = service.to_turtle()
    if check:
        conforms, report = validate_graph(Graph().parse(data=text, format="turtle"))
        if not conforms:
            typer.echo(report, err=True)
            raise typer.Exit(1)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}", err=True)


@app.command("check")
def check(path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A Turtle file.")) -> None:
    """Check a DCAT-AP Turtle file against dadam's SHACL shapes; exit 1 with the report if it fails."""
    from rdflib import Graph

    from catalog._turtle import validate_graph

    conforms, report = validate_graph(Graph().parse(path, format="turtle"))
    if not conforms:
        typer.echo(report, err=True)
        raise typer.Exit(1)
    typer.echo("conforms")
