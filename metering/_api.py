"""Management routes and CLI for the data bank (accounts, balances, transfers, usage, verify)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

import typer
from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import Response
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from metering._audit import verify_audit
from metering._ledger import Account, AccountFlags, Ledger, new_transfers
from metering._usage import query_usage_events

__all__ = ["app", "bank_peer_router", "bank_router", "settlement_router", "verify_bank"]


def verify_bank(engine: Engine) -> list[str]:
    """Every problem found: audit chain and checkpoints, transfer rows, balances and ledger sums."""
    return verify_audit(engine) + Ledger(engine).check_invariants()


def bank_router(
    ledger: Ledger, require_read: Callable[..., Any], require_write: Callable[..., Any]
) -> APIRouter:
    """``/bank/...`` routes (mount under the management prefix)."""
    router = APIRouter(prefix="/bank", tags=["data bank"])
    read, write = [Depends(require_read)], [Depends(require_write)]

    @router.post("/accounts", dependencies=write, summary="Create accounts (idempotent by id)")
    async def create_accounts(items: list[dict[str, Any]] = Body(...)) -> dict[str, Any]:
        accs = [
            Account(
                id=str(i["id"]),
                ledger=str(i["ledger"]),
                code=int(i.get("code", 0)),
                flags=AccountFlags(int(i.get("flags", 0))),
                user_data=str(i.get("user_data", "")),
            )
            for i in items
        ]
        results = await run_in_threadpool(ledger.create_accounts, accs)
        return {"results": [{"id": a.id, "result": str(r)} for a, r in zip(accs, results, strict=True)]}

    @router.get("/accounts", dependencies=read, summary="Accounts with balances")
    async def list_accounts(
        ledger_name: str | None = Query(None, alias="ledger"),
        offset: int = 0,
        limit: int = Query(100, le=1000),
    ) -> dict[str, Any]:
        accs = await run_in_threadpool(
            lambda: ledger.accounts(ledger=ledger_name, offset=offset, limit=limit)
        )
        return {"items": [a.to_dict() for a in accs], "offset": offset, "limit": limit}

    @router.get("/accounts/{account_id}", dependencies=read, summary="One account and its balances")
    async def get_account(account_id: str) -> dict[str, Any]:
        return (await run_in_threadpool(ledger.account, account_id)).to_dict()

    @router.post("/transfers", dependencies=write, summary="Create transfers (a batch; one result each)")
    async def create_transfers(items: list[dict[str, Any]] = Body(...)) -> dict[str, Any]:
        batch = new_transfers(items)
        results = await run_in_threadpool(ledger.create_transfers, batch)
        return {"results": [{"id": t.id, "result": str(r)} for t, r in zip(batch, results, strict=True)]}

    @router.get("/transfers", dependencies=read, summary="Transfers, oldest first")
    async def list_transfers(
        account: str | None = None, offset: int = 0, limit: int = Query(100, le=1000)
    ) -> dict[str, Any]:
        items = await run_in_threadpool(
            lambda: ledger.transfers(account_id=account, offset=offset, limit=limit)
        )
        return {"items": [t.to_dict() | {"created_at": t.created_at} for t in items]}

    @router.get("/usage", dependencies=read, summary="Usage events (JSON or CSV)")
    async def usage(
        agreement: str | None = None, format: str = Query("json", pattern="^(json|csv)$")
    ) -> Response:
        events = await run_in_threadpool(lambda: query_usage_events(ledger.engine, agreement_id=agreement))
        dicts = [{f: getattr(e, f) for f in e.__dataclass_fields__} for e in events]
        if format == "csv":
            out = io.StringIO()
            if dicts:
                writer = csv.DictWriter(out, fieldnames=list(dicts[0]))
                writer.writeheader()
                writer.writerows(dicts)
            return Response(out.getvalue(), media_type="text/csv")
        return Response(json.dumps({"items": dicts}), media_type="application/json")

    @router.get("/verify", dependencies=read, summary="Recompute chain, checkpoints and balances")
    async def verify() -> dict[str, Any]:
        problems = await run_in_threadpool(verify_bank, ledger.engine)
        return {"ok": not problems, "problems": problems}

    @router.get("/checkpoints", dependencies=read, summary="Signed audit checkpoints and who cosigned them")
    async def list_checkpoints(limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        import sqlalchemy as sa

        from metering._tables import checkpoints

        def rows() -> list[dict[str, Any]]:
            with ledger.engine.connect() as conn:
                found = conn.execute(
                    sa.select(checkpoints).order_by(checkpoints.c.size.desc()).limit(limit)
                ).mappings()
                return [
                    {"size": r["size"], "root": r["root"], "signature": r["signature"],
                     "cosignatures": json.loads(r["cosignature"]) if r["cosignature"] else {},
                     "createdAt": r["created_at"]}
                    for r in found
                ]  # fmt: skip

        return {"items": await run_in_threadpool(rows)}

    return router


app = typer.Typer(
    help="The data bank: accounts, balances, transfers, receipts, statements, periods, verification.",
    no_args_is_help=True,
)


def _ledger() -> Ledger:
    from connector.settings import Settings
    from connector.store import create_engine, migrate

    engine = create_engine(Settings().effective_database_url())
    migrate(engine)
    return Ledger(engine)


@app.command("accounts")
def accounts_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """List accounts and balances (minor units)."""
    accs = _ledger().accounts(limit=1000)
    if as_json:
        typer.echo(json.dumps([a.to_dict() for a in accs], indent=2))
        return
    for a in accs:
        typer.echo(f"{a.id:40} {a.ledger:6} balance {a.balance:>14} pending-out {a.debits_pending:>10}")


@app.command("transfers")
def transfers_cmd(
    account: str | None = typer.Option(None), csv_out: bool = typer.Option(False, "--csv")
) -> None:
    """List transfers (optionally of one account); --csv for spreadsheets."""
    items = [t.to_dict() for t in _ledger().transfers(account_id=account, limit=1000)]
    if csv_out:
        out = io.StringIO()
        if items:
            w = csv.DictWriter(out, fieldnames=list(items[0]))
            w.writeheader()
            w.writerows(items)
        typer.echo(out.getvalue(), nl=False)
    else:
        typer.echo(json.dumps(items, indent=2))


def _settlement() -> Any:
    from connector.settings import Settings
    from metering._settlement import Settlement

    # listing only: nothing is signed here, so no key is loaded
    return Settlement(_ledger(), did=Settings().did, sign=lambda payload: "")


def _emit(items: list[dict[str, Any]], csv_out: bool) -> None:
    if not csv_out:
        typer.echo(json.dumps(items, indent=2))
        return
    out = io.StringIO()
    if items:
        w = csv.DictWriter(out, fieldnames=list(items[0]))
        w.writeheader()
        w.writerows(items)
    typer.echo(out.getvalue(), nl=False)


@app.command("receipts")
def receipts_cmd(
    party: str | None = typer.Option(None, help="Only this counterparty's receipts."),
    agreement: str | None = typer.Option(None, help="Only this agreement's receipts."),
    csv_out: bool = typer.Option(False, "--csv"),
) -> None:
    """List usage receipts with their status (issued, settled, disputed, countersigned) and amounts."""
    items = _settlement().receipts(agreement_id=agreement, party=party)
    _emit(
        [{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in i.items()} for i in items],
        csv_out,
    )


@app.command("statements")
def statements_cmd(
    party: str | None = typer.Option(None, help="Only this counterparty's statements."),
    csv_out: bool = typer.Option(False, "--csv", help="One row per statement line."),
) -> None:
    """List the periodic settlement statements as exchanged (signed by both, or with the dispute)."""
    kept = _settlement().stored_statements(party)
    if not csv_out:
        typer.echo(json.dumps(kept, indent=2))
        return
    rows = [
        {"party": st["party"], "periodStart": st["periodStart"], "signedBy": st["signedBy"], **line}
        for st in kept
        for line in st["statement"]["lines"]
    ]
    _emit(rows, True)


@app.command("verify")
def verify_cmd() -> None:
    """Recompute the audit chain, checkpoints and balances; exit 1 naming every altered row."""
    problems = verify_bank(_ledger().engine)
    if problems:
        for p in problems:
            typer.echo(f"FAIL {p}", err=True)
        raise typer.Exit(1)
    typer.echo("ok: audit chain, checkpoints, transfer rows and balances verified")


@app.command("periods")
def periods_cmd(
    count: int = typer.Option(10, help="How many periods, newest first"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Accounting periods (DADAM_BANK_PERIOD_SECONDS): status, events, unbilled, adjustments, receipts."""
    from connector.settings import Settings
    from metering._periods import list_periods

    result = list_periods(_ledger().engine, period_s=Settings().bank_period_seconds, count=count)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for p in result["items"]:
        typer.echo(
            f"{p['start']:>12} {p['status']:6} events {p['events']:>8} unbilled {p['unbilled']:>8} "
            f"adjustments {p['adjustments']:>6} receipts {p['receipts']:>4}"
        )


@app.command("close-period")
def close_period_cmd(start: int = typer.Argument(..., help="The period's start (epoch seconds)")) -> None:
    """Close an ended period and every earlier one: usage arriving later for it is billed as an adjustment."""
    from connector.errors import ValidationError
    from connector.settings import Settings
    from metering._periods import close_period

    try:
        result = close_period(_ledger().engine, start, period_s=Settings().bank_period_seconds)
    except ValidationError as exc:
        typer.echo(f"FAIL {': '.join(exc.reasons())}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result))


def settlement_router(
    settlement: Any,
    *,
    exchange: Callable[[str, str, dict[str, Any]], dict[str, Any]] | None = None,
    exchange_statement_with: Callable[[str, str, dict[str, Any]], dict[str, Any]] | None = None,
    sign: Callable[[bytes], str],
    verify: Callable[[str, bytes, str], bool],
    price_for: Callable[[str, str], Any],
    require_read: Callable[..., Any],
    require_write: Callable[..., Any],
    period_s: int = 86400,
    receipt_events: int = 0,
    period_grace_s: float | None = 3600,
    dsp_base_url: str | None = None,
) -> APIRouter:
    """Settlement routes: deposits, reservations, receipts (issue, list, issue due, countersign, settle),
    accounting periods (list, close), statements. ``period_s``, ``receipt_events`` and ``period_grace_s``
    as :func:`~metering._periods.issue_due_receipts` takes them."""
    import time
    from decimal import Decimal

    from connector.errors import ValidationError
    from connector.identity import canonical_json
    from metering._periods import close_period, issue_due_receipts, list_periods
    from metering._settlement import Settlement, countersign
    from metering._usage import (
        PriceTerms,
        UnitOfCount,
        UsageEvent,
        record_usage_events,
    )

    assert isinstance(settlement, Settlement)
    router = APIRouter(prefix="/bank", tags=["data bank"])
    read, write = [Depends(require_read)], [Depends(require_write)]

    def _need(body: dict[str, Any], *keys: str) -> None:
        missing = [f"{k}: required" for k in keys if body.get(k) in (None, "")]
        if missing:
            raise ValidationError("incomplete request", errors=missing)

    @router.post("/deposits", dependencies=write, summary="Record money a consumer paid in (minor units)")
    async def deposit(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        _need(body, "party", "amount")
        return await run_in_threadpool(
            settlement.deposit, str(body["party"]), int(body["amount"]), body.get("ref")
        )

    @router.post(
        "/reservations", dependencies=write, summary="Reserve funds (pending transfer) for a transfer"
    )
    async def reserve(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        _need(body, "ref", "party", "amount")
        result = await run_in_threadpool(
            settlement.reserve, str(body["ref"]), str(body["party"]), int(body["amount"])
        )
        return {"ref": body["ref"], "result": str(result)}

    def _terms(body: dict[str, Any]) -> PriceTerms:
        price = body.get("price")
        if isinstance(price, dict):
            _need(price, "payAmount")
            return PriceTerms(
                Decimal(str(price["payAmount"])),
                str(price.get("currency", settlement.currency)),
                UnitOfCount(str(price.get("unitOfCount", "call"))),
            )
        terms = price_for(str(body["agreementId"]), str(body["party"]))
        if terms is not None:
            return terms  # type: ignore[no-any-return]
        raise ValidationError("no price: give 'price' or conclude an agreement with a compensate duty")

    @router.post("/receipts", dependencies=write, summary="Price, sign and store a usage receipt")
    async def issue(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        _need(body, "agreementId", "party")
        terms = await run_in_threadpool(_terms, body)
        return await run_in_threadpool(
            lambda: settlement.issue_receipt(
                str(body["agreementId"]), str(body["party"]), terms, reserve_ref=body.get("reserveRef")
            )
        )

    @router.get("/receipts", dependencies=read, summary="Receipts with the period they bill, oldest first")
    async def list_receipts(
        agreement: str | None = None,
        party: str | None = None,
        period: int | None = None,
        offset: int = 0,
        limit: int = Query(100, le=1000),
    ) -> dict[str, Any]:
        items = await run_in_threadpool(lambda: settlement.receipts(
            agreement_id=agreement, party=party, period_start=period, offset=offset, limit=limit))  # fmt: skip
        return {"items": items, "offset": offset, "limit": limit}

    @router.post(
        "/receipts/due",
        dependencies=write,
        summary="Close the period that ended a grace ago and issue every due receipt now (as housekeeping does)",
    )
    async def issue_due() -> dict[str, Any]:
        result = await run_in_threadpool(lambda: issue_due_receipts(
            settlement, period_s=period_s, price_for=price_for, every_events=receipt_events,
            grace_s=period_grace_s))  # fmt: skip
        result["issued"] = [{k: v for k, v in i.items() if k != "document"} for i in result["issued"]]
        return result

    @router.get("/periods", dependencies=read, summary="Accounting periods, newest first")
    async def periods(count: int = Query(30, ge=1, le=366), before: float | None = None) -> dict[str, Any]:
        return await run_in_threadpool(
            lambda: list_periods(settlement.engine, period_s=period_s, count=count, before=before)
        )

    @router.post(
        "/periods/{start}/close",
        dependencies=write,
        summary="Close an ended period (and every earlier one): later usage in it becomes an adjustment",
    )
    async def close(start: int) -> dict[str, Any]:
        return await run_in_threadpool(
            lambda: close_period(settlement.engine, start, period_s=period_s, now=time.time())
        )

    @router.post(
        "/receipts/{receipt_id}/settle", dependencies=write, summary="Settle with the countersignature"
    )
    async def settle(receipt_id: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return await run_in_threadpool(settlement.settle, receipt_id, body, verify)

    @router.post("/price-plans", dependencies=write, status_code=201,
                 summary="Publish an immutable price plan; reference it from a compensate duty")  # fmt: skip
    async def publish_plan(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        from metering._priceplan import PLAN_OPERAND, store_price_plan

        _need(body, "id", "plan")
        stored = await run_in_threadpool(store_price_plan, settlement.engine, str(body["id"]), body["plan"])
        base = (dsp_base_url or "").rstrip("/")
        reference = f"{base}/bank/price-plans/{stored['id']}#sha256={stored['hash'].removeprefix('sha256:')}"
        return {**stored, "reference": reference,
                "constraint": {"leftOperand": PLAN_OPERAND, "operator": "eq", "rightOperand": reference}}  # fmt: skip

    @router.get("/price-plans/{plan_id}", dependencies=read, summary="A published price plan")
    async def read_plan(plan_id: str) -> dict[str, Any]:
        from metering._priceplan import get_price_plan

        return await run_in_threadpool(get_price_plan, settlement.engine, plan_id)

    @router.post(
        "/receipts/{receipt_id}/exchange",
        dependencies=write,
        summary="Send the receipt to the consumer's connector (DSP-authenticated) and settle with its answer",
    )
    async def exchange_receipt(receipt_id: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        _need(body, "counterPartyAddress")
        if exchange is None:
            raise ValidationError("this connector cannot reach peers (no identity)")
        document = await run_in_threadpool(settlement.receipt_document, receipt_id)
        answer = await run_in_threadpool(
            exchange, str(body["counterPartyAddress"]), document["consumer"], document
        )
        settled = await run_in_threadpool(settlement.settle, receipt_id, answer, verify)
        cosigned = await run_in_threadpool(settlement.record_cosignature, document, answer, verify)
        return {**settled, "consumerAnswer": answer, "checkpointCosigned": cosigned}

    @router.post(
        "/statements/{party:path}/exchange",
        dependencies=write,
        summary="Send the statement to the consumer's connector and return it signed by both",
    )
    async def exchange_statement(party: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        _need(body, "counterPartyAddress")
        if exchange_statement_with is None:
            raise ValidationError("this connector cannot reach peers (no identity)")
        document = await run_in_threadpool(settlement.statement, party)
        answer = await run_in_threadpool(
            exchange_statement_with, str(body["counterPartyAddress"]), party, document
        )
        if "signature" not in answer:
            return {**document, "consumer_dispute": answer.get("dispute", [])}
        if not verify(answer["signature"], canonical_json(document["statement"]), party):
            raise ValidationError("the consumer's signature on the statement does not verify")
        return {**document, "consumer_signature": answer["signature"], "signedBy": "both"}

    @router.get("/statements", dependencies=read, summary="Periodic statements as exchanged (signed by both)")
    async def stored(party: str | None = None) -> dict[str, Any]:
        return {"items": await run_in_threadpool(settlement.stored_statements, party)}

    @router.get(
        "/statements/{party:path}", dependencies=read, summary="Signed settlement statement (JSON or CSV)"
    )
    async def statement(
        party: str, period: int | None = None, format: str = Query("json", pattern="^(json|csv)$")
    ) -> Any:
        document = await run_in_threadpool(
            lambda: settlement.statement(
                party, period_start=period, period_s=period_s if period is not None else None
            )
        )
        if format == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=["receipt", "agreement", "status", "amount", "signedBy"])
            writer.writeheader()
            writer.writerows(document["statement"]["lines"])
            return Response(out.getvalue(), media_type="text/csv")
        return document

    @router.post("/usage", dependencies=write, summary="Record usage events metered on this side")
    async def record(events: list[dict[str, Any]] = Body(...)) -> dict[str, Any]:
        try:
            parsed = [UsageEvent(**e) for e in events]
        except TypeError as exc:
            raise ValidationError("invalid usage events", errors=[str(exc)]) from None

        def work() -> list[str]:
            with settlement.engine.begin() as conn:
                return [str(r) for r in record_usage_events(conn, parsed)]

        return {"results": await run_in_threadpool(work)}

    @router.post(
        "/receipts/countersign", dependencies=write, summary="Consumer: check a receipt, countersign"
    )
    async def check(document: dict[str, Any] = Body(...)) -> dict[str, Any]:
        _need(document, "receipt", "event_ids", "provider_signature", "provider")

        def work() -> dict[str, Any]:
            mine = settlement.own_unbilled_events(
                str(document["receipt"]["agreement_id"]), str(document["provider"]),
                except_receipt=document.get("id"),
            )  # fmt: skip
            answer = countersign(document, mine, sign=sign, verify=verify)
            settlement.record_countersigned(document, answer)
            return answer

        return await run_in_threadpool(work)

    return router


def bank_peer_router(
    settlement: Any, caller_dependency: Callable[..., Any], *, sign: Callable[[bytes], str],
    verify: Callable[[str, bytes, str], bool],
) -> APIRouter:  # fmt: skip
    """``POST <dsp>/bank/receipts``: a provider sends us (the consumer) a signed receipt; we answer
    with our countersignature or the list of event ids we disagree on. Authenticated like DSP."""
    from connector.errors import NotFoundError, ValidationError
    from connector.identity import Caller
    from metering._settlement import countersign

    router = APIRouter(tags=["data bank (peer)"])

    @router.post("/bank/receipts")
    async def receive_receipt(
        document: dict[str, Any] = Body(...), caller: Caller = Depends(caller_dependency)
    ) -> dict[str, Any]:
        missing = [
            k
            for k in ("receipt", "event_ids", "provider_signature", "provider", "consumer")
            if k not in document
        ]
        if missing:
            raise ValidationError("incomplete receipt", errors=[f"{k}: required" for k in missing])
        if document["provider"] != caller.did:
            raise ValidationError(
                f"the receipt names provider {document['provider']}, but {caller.did} sent it"
            )
        if document["consumer"] != settlement.did:
            raise NotFoundError("this receipt is for another consumer")

        def work() -> dict[str, Any]:
            mine = settlement.own_unbilled_events(
                str(document["receipt"]["agreement_id"]), str(document["provider"]),
                except_receipt=document.get("id"),
            )  # fmt: skip
            answer = countersign(document, mine, sign=sign, verify=verify)
            settlement.record_countersigned(document, answer)
            return answer

        return await run_in_threadpool(work)

    @router.get("/bank/price-plans/{plan_id}")
    async def peer_plan(plan_id: str, caller: Caller = Depends(caller_dependency)) -> dict[str, Any]:
        """A price plan an agreement references: partners fetch it and check its hash."""
        from metering._priceplan import get_price_plan

        return await run_in_threadpool(get_price_plan, settlement.engine, plan_id)

    @router.post("/bank/statements")
    async def receive_statement(
        document: dict[str, Any] = Body(...), caller: Caller = Depends(caller_dependency)
    ) -> dict[str, Any]:
        body = document.get("statement")
        if not isinstance(body, dict) or "provider_signature" not in document:
            raise ValidationError(
                "incomplete statement", errors=["statement and provider_signature: required"]
            )
        if body.get("provider") != caller.did:
            raise ValidationError(
                f"the statement names provider {body.get('provider')}, but {caller.did} sent it"
            )
        if body.get("consumer") != settlement.did:
            raise NotFoundError("this statement is for another consumer")
        return await run_in_threadpool(settlement.countersign_statement, document, verify)

    return router
