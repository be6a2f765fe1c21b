"""Accounting periods and periodic receipts: late usage is an adjustment, never lost, never billed twice."""

from __future__ import annotations

import json
import threading
import warnings
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector.errors import ValidationError
from connector.identity import Identity, verify_jws
from metering import (
    Ledger,
    PriceTerms,
    Settlement,
    UnitOfCount,
    UsageEvent,
    countersign,
    events_root,
    record_usage_events,
    verify_bank,
)
from metering._periods import close_period, issue_due_receipts, list_periods, period_of
from metering._settlement import _receipt_from
from metering._tables import event_billing, receipts

P = 100  # period length in these tests: periods [1000, 1100), [1100, 1200), ...
CALL = PriceTerms(Decimal("0.50"), "EUR", UnitOfCount.CALL)
CONSUMER = "did:web:c"


def ev(name: str, at: float, agreement: str = "agr", **kw: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "id": f"{agreement}:{name}", "agreement_id": agreement, "transfer_id": "tp", "dataset_id": "pcf",
        "category": "carbon", "bytes": 1000, "records": 2, "calls": 1, "started_at": at, "ended_at": at + 0.5,
        "outcome": "ok", "consumer": CONSUMER, "provider": "did:web:p",
    }  # fmt: skip
    fields.update(kw)
    return UsageEvent(**fields)


def record(engine: sa.Engine, *events: UsageEvent) -> None:
    with engine.begin() as conn:
        record_usage_events(conn, list(events))


@pytest.fixture
def provider(tmp_path: Path) -> Identity:
    return Identity.load_or_create("did:web:p", tmp_path / "p")


def bank_of(engine: sa.Engine, ident: Identity) -> Settlement:
    return Settlement(Ledger(engine), did=ident.did, sign=lambda b: ident.sign_jws(b, detached=True))


def issue(bank: Settlement, now: float, *, every: int = 0, price: PriceTerms = CALL) -> dict[str, Any]:
    return issue_due_receipts(
        bank, period_s=P, price_for=lambda agreement, consumer: price, now=now, every_events=every, grace_s=50
    )


def created(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in result["issued"] if i["result"] == "created"]


def billed_ids(engine: sa.Engine) -> Counter[str]:
    """How many receipts list each event id (must never exceed one)."""
    with engine.connect() as conn:
        lists = conn.execute(sa.select(receipts.c.event_ids)).scalars().all()
    return Counter(i for text in lists for i in json.loads(text))


def check_signed(doc: dict[str, Any], ident: Identity) -> None:
    receipt = _receipt_from(doc["receipt"])
    assert events_root(doc["event_ids"]) == receipt.events_root
    assert verify_jws(doc["provider_signature"], key_resolver=ident.resolve_own,
                      detached_payload=receipt.payload()) == receipt.payload()  # fmt: skip


def test_events_are_billed_in_their_own_period_once_it_closes(engine: sa.Engine, provider: Identity) -> None:
    bank = bank_of(engine, provider)
    record(engine, ev("a", 1010), ev("b", 1020), ev("c", 1110), ev("x", 1030, outcome="error"))
    # 1000-1100 has ended but the grace (50 s) has not passed: still open for late usage, nothing billed
    assert created(issue(bank, now=1140)) == []
    assert list_periods(engine, period_s=P, now=1140, count=2)["items"][1]["status"] == "ended"
    first = issue(bank, now=1160)
    assert first["closed"]["start"] == 1000
    [item] = created(first)
    doc = item["document"]
    r = doc["receipt"]
    assert (r["period_start"], r["period_end"], r["sequence"]) == (1000, 1100, 1)
    assert doc["event_ids"] == ["agr:a", "agr:b"]  # the failed request is not billed
    assert (r["calls"], r["amount"], r["adjustments"]) == (2, 100, None)
    check_signed(doc, provider)
    assert bank.receipt_document(doc["id"]) == doc
    # idempotent: a second run (or a second replica) finds nothing due
    assert issue(bank, now=1160)["issued"] == []
    assert issue(bank, now=1199)["issued"] == []
    listed = bank.receipts(period_start=1000)
    assert [(x["id"], x["period"], x["sequence"]) for x in listed] == [
        (doc["id"], {"start": 1000, "end": 1100}, 1)
    ]
    assert verify_bank(engine) == []


def test_late_event_after_close_is_an_adjustment_of_the_next_receipt(
    engine: sa.Engine, provider: Identity
) -> None:
    bank = bank_of(engine, provider)
    record(engine, ev("a", 1010), ev("b", 1110))
    with pytest.raises(ValidationError, match="has not ended"):
        close_period(engine, 1100, period_s=P, now=1150)
    with pytest.raises(ValidationError, match="not the start of a period"):
        close_period(engine, 1050, period_s=P, now=1150)
    assert (
        close_period(engine, 1000, period_s=P, now=1101)["result"] == "created"
    )  # by hand, before the grace
    assert close_period(engine, 1000, period_s=P, now=1102)["result"] == "exists"
    [p1] = created(issue(bank, now=1105))
    assert p1["document"]["event_ids"] == ["agr:a"]
    record(engine, ev("late", 1050))  # usage of the closed period arrives: accepted, not lost
    second = issue(bank, now=1120)
    assert second["adjustments"] == 1
    assert second["issued"] == []  # billed with the open period 1100-1200, when that one is billed
    periods = {p["start"]: p for p in list_periods(engine, period_s=P, now=1120, count=3)["items"]}
    assert (periods[1000]["status"], periods[1000]["closedBy"], periods[1000]["receipts"]) == (
        "closed",
        "manual",
        1,
    )
    assert (periods[1100]["status"], periods[1100]["adjustments"]) == ("open", 1)
    [p2] = created(issue(bank, now=1260))  # 1100-1200 closes automatically after the grace
    doc = p2["document"]
    r = doc["receipt"]
    assert (r["period_start"], r["sequence"], r["event_count"], r["amount"]) == (1100, 1, 2, 100)
    assert r["adjustments"] == {"event_count": 1, "calls": 1, "bytes": 1000, "records": 2, "amount": 50,
                                "event_ids": ["agr:late"], "of_periods": [1000]}  # fmt: skip
    assert doc["event_ids"] == ["agr:b", "agr:late"]
    check_signed(doc, provider)
    # the first receipt did not change; every event is billed exactly once
    assert bank.receipt_document(p1["id"]) == p1["document"]
    assert billed_ids(engine) == Counter({"agr:a": 1, "agr:b": 1, "agr:late": 1})
    assert issue(bank, now=1400)["issued"] == []
    # a manual receipt for the agreement bills only what no receipt bills yet
    record(engine, ev("new", 1410))
    manual = bank.issue_receipt("agr", CONSUMER, CALL)
    assert manual["event_ids"] == ["agr:new"]
    assert issue(bank, now=1600)["issued"] == []
    assert max(billed_ids(engine).values()) == 1
    assert verify_bank(engine) == []


def test_receipt_as_soon_as_an_agreement_has_n_unbilled_events(engine: sa.Engine, provider: Identity) -> None:
    bank = bank_of(engine, provider)
    record(engine, ev("1", 1001), ev("2", 1002))
    assert issue(bank, now=1010, every=3)["issued"] == []
    record(engine, ev("3", 1003))
    [first] = created(issue(bank, now=1011, every=3))
    assert first["document"]["event_ids"] == ["agr:1", "agr:2", "agr:3"]
    assert first["document"]["receipt"]["sequence"] == 1
    record(engine, ev("4", 1004), ev("5", 1005))
    assert issue(bank, now=1012, every=3)["issued"] == []  # two unbilled, the period still open
    [rest] = created(issue(bank, now=1200, every=3))  # the period closed: the rest, as its second receipt
    assert (rest["document"]["event_ids"], rest["sequence"]) == (["agr:4", "agr:5"], 2)
    assert rest["id"] != first["id"]
    assert billed_ids(engine) == Counter({f"agr:{i}": 1 for i in range(1, 6)})


def test_fixed_fees_are_charged_once_per_period_or_agreement(engine: sa.Engine, provider: Identity) -> None:
    bank = bank_of(engine, provider)
    flat = PriceTerms(Decimal("10"), "EUR", UnitOfCount.FLAT_PERIOD)
    lump = PriceTerms(Decimal("99"), "EUR", UnitOfCount.LUMP_SUM)
    prices = {"flat": flat, "lump": lump}
    record(engine, *(ev(str(i), 1000 + i, agreement=a) for a in prices for i in range(3)))

    def run(now: float) -> dict[tuple[str, int], int]:
        result = issue_due_receipts(bank, period_s=P, price_for=lambda agreement, _c: prices[agreement], now=now,
                                    every_events=2, grace_s=50)  # fmt: skip
        return {(i["agreement"], i["sequence"]): i["amount"] for i in created(result)}

    assert run(1010) == {("flat", 1): 1000, ("lump", 1): 9900}  # 3 unbilled >= 2: billed early
    record(engine, *(ev(str(i), 1010 + i, agreement=a) for a in prices for i in range(3, 5)))
    assert run(1020) == {("flat", 2): 0, ("lump", 2): 0}  # the same period: the fee is paid
    record(engine, *(ev(str(i), 1100 + i, agreement=a) for a in prices for i in range(5, 7)))
    assert run(1120) == {("flat", 1): 1000, ("lump", 1): 0}  # a new period: flat fee again, lump sum never


def test_two_issuers_at_once_issue_each_receipt_exactly_once(engine: sa.Engine, provider: Identity) -> None:
    bank = bank_of(engine, provider)
    agreements = [f"agr-{n}" for n in range(12)]
    record(engine, *(ev(str(i), 1000 + i, agreement=a) for a in agreements for i in range(4)))
    record(engine, *(ev(str(i), 1100 + i, agreement=a) for a in agreements[:6] for i in range(4, 6)))
    start = threading.Barrier(2)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def replica() -> None:
        other = bank_of(engine, provider)  # each replica its own Settlement over the same database
        try:
            start.wait()
            results.append(issue(other, now=1160, every=5))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = [i["id"] for r in results for i in created(r)]
    # per agreement: the closed period 1000-1100; the six with two more events reach 5 unbilled: 1100 too
    assert len(ids) == len(set(ids)) == 12 + 6
    assert sum(1 for r in results if r["closed"] is not None) == 1  # one of them closed the period
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(receipts)).scalar() == 18
        assert conn.execute(sa.select(sa.func.count()).select_from(event_billing)
                            .where(event_billing.c.receipt_id.is_(None))).scalar() == 0  # fmt: skip
    counts = billed_ids(engine)
    assert len(counts) == 12 * 4 + 6 * 2
    assert set(counts.values()) == {1}
    assert issue(bank, now=1160, every=5)["issued"] == []
    assert verify_bank(engine) == []


def test_consumer_countersigns_consecutive_period_receipts(
    engine: sa.Engine, provider: Identity, tmp_path: Path
) -> None:
    from connector.store import create_engine, migrate

    consumer = Identity.load_or_create(CONSUMER, tmp_path / "c")
    idents = {provider.did: provider, consumer.did: consumer}

    def verify(sig: str, payload: bytes, did: str) -> bool:
        return verify_jws(sig, key_resolver=idents[did].resolve_own, expected_did=did,
                          detached_payload=payload) == payload  # fmt: skip

    bank = bank_of(engine, provider)
    bank.deposit(CONSUMER, 1_000)
    own = create_engine(f"sqlite:///{(tmp_path / 'consumer.db').as_posix()}")  # the consumer's metering
    migrate(own)
    theirs = bank_of(own, consumer)
    usage = [ev("a", 1010), ev("b", 1020), ev("c", 1110)]
    record(own, *usage, ev("late", 1050))
    record(engine, *usage)
    [first] = created(issue(bank, now=1160))
    record(engine, ev("late", 1050))  # the provider gets this one only after 1000-1100 closed
    assert issue(bank, now=1170)["adjustments"] == 1  # an adjustment billed with 1100-1200
    [second] = created(issue(bank, now=1260))
    assert second["document"]["receipt"]["adjustments"]["event_ids"] == ["agr:late"]

    def answer(doc: dict[str, Any]) -> dict[str, Any]:
        mine = theirs.own_unbilled_events("agr", provider.did, except_receipt=doc["id"])
        result = countersign(doc, mine, sign=lambda b: consumer.sign_jws(b, detached=True), verify=verify)
        theirs.record_countersigned(doc, result)
        return result

    for item, amount in ((first, 100), (second, 100)):
        result = answer(item["document"])
        assert "signature" in result, result
        assert "signature" in answer(item["document"])  # answering the same receipt again: the same answer
        assert bank.settle(item["id"], result, verify)["amount"] == amount
    # billing events it paid for already, under another receipt id, is disputed by name
    again = {**first["document"], "id": "receipt:again"}
    assert answer(again) == {"dispute": ["agr:a", "agr:b"]}
    statement = bank.statement(CONSUMER)["statement"]
    assert (statement["settled"], statement["prepaidBalance"]) == (200, 800)
    assert verify_bank(engine) == []
    own.dispose()


def test_periods_and_receipts_through_the_management_api(engine: sa.Engine, provider: Identity) -> None:
    import time

    from fastapi import FastAPI

    from connector.api import install_error_handlers
    from metering._api import settlement_router

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    bank = bank_of(engine, provider)
    current = period_of(time.time(), P)
    past = current - 3 * P
    record(engine, ev("a", past + 1), ev("b", past + 2), ev("now", current + 1))

    def allow() -> None:
        return None

    app = FastAPI()
    install_error_handlers(app, dsp_path="/dsp")
    app.include_router(
        settlement_router(bank, sign=lambda b: provider.sign_jws(b, detached=True), verify=lambda *a: True,
                          price_for=lambda a, c: CALL, require_read=allow, require_write=allow, period_s=P,
                          period_grace_s=None),
    )  # fmt: skip
    with TestClient(app) as c:
        assert c.post(f"/bank/periods/{current}/close").status_code == 400  # not ended yet
        assert c.post(f"/bank/periods/{past + 1}/close").status_code == 400  # not a period start
        closed = c.post(f"/bank/periods/{past}/close")
        assert closed.status_code == 200, closed.text
        assert (closed.json()["result"], closed.json()["events"]) == ("created", 2)
        due = c.post("/bank/receipts/due").json()
        [item] = due["issued"]
        assert (item["period"], item["events"], "document" not in item) == (past, 2, True)
        listed = c.get("/bank/receipts", params={"period": past}).json()["items"]
        assert [(x["period"], x["amount"], x["events"], x["status"]) for x in listed] == [
            ({"start": past, "end": past + P}, 100, 2, "issued")
        ]
        periods = {p["start"]: p for p in c.get("/bank/periods", params={"count": 5}).json()["items"]}
        assert (periods[past]["status"], periods[past]["receipts"], periods[past]["unbilled"]) == (
            "closed",
            1,
            0,
        )
        assert (periods[current]["status"], periods[current]["unbilled"]) == ("open", 1)
        assert c.get("/bank/receipts", params={"period": current}).json()["items"] == []


def test_metering_migrations_match_the_table_definitions(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from connector.store import metadata

    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    ours = [d for d in diffs if any(t in repr(d) for t in ("'bank_", "'ledger_", "'usage_events'"))]
    assert ours == []


def test_cli_lists_and_closes_periods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from typer.testing import CliRunner

    from connector.store import create_engine, migrate
    from metering._api import app

    db = f"sqlite:///{(tmp_path / 'bank.db').as_posix()}"
    monkeypatch.setenv("DADAM_DATABASE_URL", db)
    monkeypatch.setenv("DADAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DADAM_BANK_PERIOD_SECONDS", "3600")
    engine = create_engine(db)
    migrate(engine)
    previous = period_of(time.time(), 3600) - 3600
    record(engine, ev("a", previous + 5))
    engine.dispose()
    runner = CliRunner()
    refused = runner.invoke(app, ["close-period", str(previous + 1)])
    assert refused.exit_code == 1
    assert "not the start of a period" in refused.output
    ok = runner.invoke(app, ["close-period", str(previous)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["events"] == 1
    listed = runner.invoke(app, ["periods", "--count", "3", "--json"])
    closed = next(p for p in json.loads(listed.output)["items"] if p["start"] == previous)
    assert (closed["status"], closed["events"], closed["unbilled"]) == ("closed", 1, 1)
