"""``dadam policy``: check a policy file, explain a decision.

Exit codes: 0 valid / permit, 1 invalid / deny (or not applicable), 2 usage error (file not
found, not JSON, bad context or scope).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.tree import Tree

from connector.errors import PolicyError, ValidationError
from usage_policy._context import EvaluationContext, Scope
from usage_policy._evaluate import Explanation, evaluate
from usage_policy._model import parse_policy
from usage_policy._profile import validate_policy

__all__ = ["app"]

app = typer.Typer(help="Check and explain ODRL usage policies.", no_args_is_help=True, add_completion=False)

_STYLE = {
    "satisfied": "green",
    "active": "green",
    "permit": "bold green",
    "fulfilled": "green",
    "pending": "yellow",
    "recorded": "cyan",
    "deferred": "cyan",
    "not_required": "dim",
    "unsatisfied": "red",
    "inactive": "red",
    "deny": "bold red",
    "unfulfilled": "red",
    "violated": "red",
    "error": "bold magenta",
    "not_applicable": "yellow",
}


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        typer.echo(f"error: {what} file not found: {path}", err=True)
        raise typer.Exit(2) from None
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {what} file {path} is not JSON: {exc}", err=True)
        raise typer.Exit(2) from None


def _unwrap(doc: Any) -> Any:
    """Accept a bare policy or a DSP message/dataset that carries one."""
    if isinstance(doc, dict) and "@type" not in doc:
        for key in ("policy", "offer", "agreement"):
            if isinstance(doc.get(key), dict):
                return doc[key]
    if isinstance(doc, dict) and isinstance(doc.get("offer"), dict):
        return doc["offer"]
    if isinstance(doc, dict) and isinstance(doc.get("agreement"), dict):
        return doc["agreement"]
    return doc


@app.command("check")
def check(
    file: Path = typer.Argument(..., help="Policy JSON (compact or expanded JSON-LD)."),
    profile: str = typer.Option("catena-x", help="catena-x (ODRL + CX-0152) or odrl (ODRL 2.2 only)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Validate a policy; exit 0 if valid, 1 if not (every problem is listed)."""
    if profile not in ("catena-x", "odrl"):
        typer.echo(f"error: unknown profile {profile!r} (catena-x or odrl)", err=True)
        raise typer.Exit(2)
    doc = _unwrap(_read_json(file, "policy"))
    try:
        policy = validate_policy(doc) if profile == "catena-x" else parse_policy(doc)
    except PolicyError as exc:
        problems = exc.context.get("problems") or [exc.message]
        if as_json:
            typer.echo(json.dumps({"valid": False, "profile": profile, "problems": problems}, indent=2))
        else:
            console = Console()
            console.print(f"[bold red]invalid[/] ({profile}): {file}")
            for p in problems:
                console.print(f"  - {p}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"valid": True, "profile": profile, "digest": policy.digest}, indent=2))
    else:
        rules = len(policy.permissions), len(policy.prohibitions), len(policy.obligations)
        Console().print(
            f"[bold green]valid[/] ({profile}): {file} ({policy.type}, {rules[0]} permission(s), "
            f"{rules[1]} prohibition(s), {rules[2]} obligation(s))"
        )


def _tree(node: Explanation, tree: Tree) -> None:
    for child in node.children:
        style = _STYLE.get(child.outcome, "white")
        branch = tree.add(f"[{style}]{child.outcome}[/] {_escape(child.line())}")
        _tree(child, branch)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


@app.command("explain")
def explain(
    file: Path = typer.Argument(..., help="Policy JSON."),
    context: Path = typer.Option(..., "--context", help="EvaluationContext JSON file."),
    scope: str = typer.Option("usage", "--scope", help="catalog, negotiation, transfer-start or usage."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (Decision.to_dict())."),
) -> None:
    """Evaluate a policy against a context; exit 0 on permit, 1 on deny / not applicable."""
    try:
        the_scope = Scope(scope)
    except ValueError:
        typer.echo(
            f"error: unknown scope {scope!r} (use one of: {', '.join(s.value for s in Scope)})", err=True
        )
        raise typer.Exit(2) from None
    doc = _unwrap(_read_json(file, "policy"))
    ctx_doc = _read_json(context, "context")
    try:
        ctx = EvaluationContext.from_dict(ctx_doc)
    except ValidationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    try:
        policy = parse_policy(doc)
    except PolicyError as exc:
        typer.echo(f"error: invalid policy: {exc.message}", err=True)
        raise typer.Exit(1) from None
    decision = evaluate(policy, the_scope, ctx)
    if as_json:
        typer.echo(json.dumps(decision.to_dict(), indent=2))
    else:
        root = decision.explanation
        style = _STYLE.get(root.outcome, "white")
        tree = Tree(f"[{style}]{root.outcome.upper()}[/] {_escape(root.line())} (scope {the_scope.value})")
        _tree(root, tree)
        console = Console()
        console.print(tree)
        for terms in decision.price_terms:
            console.print(f"price terms: {terms.to_dict()}", markup=False, highlight=False)
        for obligation in decision.obligations:
            console.print(f"obligation: {obligation.to_dict()}", markup=False, highlight=False)
    raise typer.Exit(0 if decision.permitted else 1)
