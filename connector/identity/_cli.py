"""``dadam identity``: show this participant's DID and keys, rotate the signing key, mint a test token."""

from __future__ import annotations

import json

import typer

from connector.identity._keys import Identity
from connector.settings import Settings

__all__ = ["app"]

app = typer.Typer(help="This participant's DID, signing keys and DCP tokens.", no_args_is_help=True)


def _identity() -> Identity:
    s = Settings()
    return Identity.load_or_create(s.did, s.data_dir, s.key_algorithm)


@app.command("show")
def show() -> None:
    """Print the DID, current key id and algorithm, and the DID document (creates the key if none)."""
    ident = _identity()
    typer.echo(f"did: {ident.did}\nkid: {ident.kid}\nalgorithm: {ident.algorithm}\nkeys: {ident.keys_dir}")
    typer.echo(json.dumps(ident.did_document(), indent=2))


@app.command("rotate")
def rotate() -> None:
    """Create a new signing key; old keys stay in the DID document so old signatures still verify.

    Every replica must see the new key folder (e.g. update the Kubernetes Secret) before it signs.
    """
    ident = _identity()
    old = ident.kid
    ident.rotate()
    typer.echo(f"rotated: {old} -> {ident.kid}")


@app.command("token")
def token(aud: str = typer.Option(..., "--aud", help="The peer DID the token is for.")) -> None:
    """Print a DCP self-issued ID token for ``--aud`` (for debugging a peer's verification)."""
    typer.echo(_identity().issue_token(aud, ttl_seconds=Settings().token_ttl_seconds))
