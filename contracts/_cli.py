"""``dadam agreement``: export a signed agreement, and verify one offline.

``dadam agreement export ID`` reads negotiation ``ID`` from the connector's database
(``DADAM_DATABASE_URL``) and prints a self-contained JSON document: the agreement, every
signature and the public key that verified it. ``dadam agreement verify FILE`` checks such a
document without any network access: each JWS must match the agreement's RFC 8785 canonical
JSON, and each signer's DID must be the agreement's assigner (provider) or assignee (consumer).
Exit status 0 = every signature valid, 1 = a signature is invalid or missing, 2 = bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from connector.errors import DadamError
from contracts._signing import verify_export

__all__ = ["app"]

app = typer.Typer(help="Export and verify signed contract agreements.", no_args_is_help=True)


@app.command("export")
def export_cmd(
    negotiation_id: str = typer.Argument(..., help="Negotiation id (as shown by the management API)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Print the agreement of a negotiation with both signatures (offline-verifiable)."""
    import sqlalchemy as sa

    from connector.settings import Settings
    from connector.store import create_engine
    from contracts._manager import export_row
    from contracts._tables import negotiations

    engine = create_engine(Settings().effective_database_url())
    try:
        with engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(negotiations).where(
                        sa.or_(
                            negotiations.c.id == negotiation_id,
                            negotiations.c.agreement_id == negotiation_id,
                        )
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            typer.echo(f"error: no negotiation or agreement {negotiation_id!r}", err=True)
            raise typer.Exit(2)
        doc = export_row(row)
    except DadamError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        typer.echo(f"wrote {out}")


@app.command("verify")
def verify_cmd(file: Path = typer.Argument(..., help="A file written by `dadam agreement export`.")) -> None:
    """Verify every signature of an exported agreement, offline."""
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
        checks = verify_export(doc)
    except (OSError, ValueError, DadamError) as exc:
        typer.echo(f"error: {file}: {exc}", err=True)
        raise typer.Exit(2) from None
    agreement = doc.get("agreement", {})
    typer.echo(f"agreement {agreement.get('@id')} on {agreement.get('target')}")
    roles = [s.get("role") for s in doc.get("signatures", [])]
    for role, check in zip(roles, checks, strict=True):
        mark = "valid" if check.ok else "INVALID"
        typer.echo(f"  {role} signature by {check.kid}: {mark} ({check.reason})")
    if not checks:
        typer.echo("  no signatures")
    if len(checks) == 1:
        typer.echo("  note: signed by one party only (the other connector does not sign agreements)")
    if not checks or not all(c.ok for c in checks):
        raise typer.Exit(1)
