"""The ``dadam`` command line. Sub-commands live in their own modules and register here."""

from __future__ import annotations

import typer

from connector.settings import settings_markdown

__all__ = ["app", "main"]

app = typer.Typer(
    name="dadam",
    help="dadam: industrial data space connector and data bank (DSP 2025-1, ODRL, DCAT).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """dadam: industrial data space connector and data bank."""


@app.command("settings")
def settings_cmd(markdown: bool = typer.Option(True, help="Print the settings table as Markdown.")) -> None:
    """Print every DADAM_ setting with its type, default and meaning."""
    typer.echo(settings_markdown(), nl=False)


# Sub-apps register below, one line each: app.add_typer(<module>.app, name="<name>").


def main() -> None:
    app()
