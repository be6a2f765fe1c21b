"""Settlement: deposit, reserve, receipt signed by both, partial post, disputes, statements."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.errors import LedgerError, ValidationError
from connector.identity import Identity, verify_jws
from metering import (
    Ledger,
    PriceTerms,
    Result,
    Settlement,
    UnitOfCount,
    UsageEvent,
    countersign,
    query_usage_events,
    record_usage_events,
    verify_bank,
)

PRICE = PriceTerms(Decimal("0.50"), "EUR", UnitOfCount.CALL)


def _verify(idents: dict[str, Identity]):  # type: ignore[no-untyped-def]
    def verify(sig: str, payload: bytes, did: str) -> bool:
        return (
            verify_jws(sig, key_resolver=idents[did].resolve_own, expected_did=did, detached_payload=payload)
            == payload
        )

    return verify


def _event(i: int, consumer: str) -> UsageEvent:
    return UsageEvent(
        f"tp:{i}", "agr", "tp", "pcf", "carbon", 100, 1, 1, 10.0 + i, 11.0 + i, "ok", consumer, "did:web:p"
    )


def test_receipt_countersigned_then_settled_against_the_reservation(
    engine: sa.Engine, tmp_path: Path
) -> None:
    provider = Identity.load_or_create("did:web:p", tmp_path / "p")
    consumer = Identity.load_or_create("did:web:c", tmp_path / "c")
    verify = _verify({"did:web:p": provider, "did:web:c": consumer})
    bank = Settlement(Ledger(engine), did=provider.did, sign=lambda b: provider.sign_jws(b, detached=True))
    bank.deposit(consumer.did, 1_000, ref="dep-1")
    bank.deposit(consumer.did, 1_000, ref="dep-1")  # idempotent on its reference
    assert bank.reserve("tp", consumer.did, 400) == Result.CREATED
    assert bank.reserve("tp-big", consumer.did, 10_000) == Result.EXCEEDS_CREDITS  # unfunded
    with engine.begin() as conn:
        record_usage_events(conn, [_event(i, consumer.did) for i in range(3)])
    doc = bank.issue_receipt("agr", consumer.did, PRICE, reserve_ref="tp")
    assert doc["receipt"]["amount"] == 150
    answer = countersign(doc, query_usage_events(engine, agreement_id="agr"),
                         sign=lambda b: consumer.sign_jws(b, detached=True), verify=verify)  # fmt: skip
    assert "signature" in answer
    with pytest.raises(ValidationError, match="countersignature does not verify"):
        bank.settle(doc["id"], {"signature": provider.sign_jws(b"other", detached=True)}, verify)
    assert bank.settle(doc["id"], answer, verify) == {"status": "settled", "amount": 150, "currency": "EUR"}
    with pytest.raises(LedgerError, match="already settled"):
        bank.settle(doc["id"], answer, verify)
    st = bank.statement(consumer.did)["statement"]
    assert (st["settled"], st["prepaidBalance"], st["reserved"]) == (
        150,
        850,
        0,
    )  # the rest of the hold is released
    assert verify_bank(engine) == []


def test_consumer_disputes_a_receipt_that_differs_from_its_metering(
    engine: sa.Engine, tmp_path: Path
) -> None:
    provider = Identity.load_or_create("did:web:p", tmp_path / "p")
    consumer = Identity.load_or_create("did:web:c", tmp_path / "c")
    verify = _verify({"did:web:p": provider, "did:web:c": consumer})
    bank = Settlement(Ledger(engine), did=provider.did, sign=lambda b: provider.sign_jws(b, detached=True))
    bank.deposit(consumer.did, 1_000)
    with engine.begin() as conn:
        record_usage_events(conn, [_event(i, consumer.did) for i in range(3)])
    doc = bank.issue_receipt("agr", consumer.did, PRICE)
    consumer_saw = [_event(0, consumer.did), _event(1, consumer.did)]
    answer = countersign(doc, consumer_saw, sign=lambda b: consumer.sign_jws(b, detached=True), verify=verify)
    assert answer == {"dispute": ["tp:2"]}
    assert bank.settle(doc["id"], answer, verify) == {"status": "disputed", "event_ids": ["tp:2"]}
    # the dispute stays visible with its event ids (management API and `dadam bank receipts`)
    [listed] = bank.receipts(party=consumer.did)
    assert (listed["status"], listed["dispute"]) == ("disputed", ["tp:2"])
    assert bank.statement(consumer.did)["statement"]["settled"] == 0
    tampered = {**doc, "receipt": {**doc["receipt"], "amount": 1}}
    with pytest.raises(ValidationError, match="provider's signature"):
        countersign(tampered, consumer_saw, sign=lambda b: consumer.sign_jws(b, detached=True), verify=verify)


def test_peer_endpoint_answers_only_the_provider_named_in_the_receipt(
    engine: sa.Engine, tmp_path: Path
) -> None:
    import warnings

    from fastapi import FastAPI

    from connector.api import install_error_handlers
    from connector.identity import Caller
    from metering import bank_peer_router

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    provider = Identity.load_or_create("did:web:p", tmp_path / "p")
    consumer = Identity.load_or_create("did:web:c", tmp_path / "c")
    verify = _verify({"did:web:p": provider, "did:web:c": consumer})
    provider_bank = Settlement(
        Ledger(engine), did=provider.did, sign=lambda b: provider.sign_jws(b, detached=True)
    )
    provider_bank.deposit(consumer.did, 1_000)
    with engine.begin() as conn:
        record_usage_events(conn, [_event(i, consumer.did) for i in range(2)])
    doc = provider_bank.issue_receipt("agr", consumer.did, PRICE)
    # the consumer's connector (same test database: it metered the same events)
    consumer_bank = Settlement(
        Ledger(engine), did=consumer.did, sign=lambda b: consumer.sign_jws(b, detached=True)
    )
    caller = {"did": provider.did}

    async def who() -> Caller:
        return Caller(did=caller["did"])

    app = FastAPI()
    install_error_handlers(app, dsp_path="/dsp")
    app.include_router(
        bank_peer_router(
            consumer_bank, who, sign=lambda b: consumer.sign_jws(b, detached=True), verify=verify
        ),
        prefix="/dsp",
    )
    with TestClient(app) as c:
        ok = c.post("/dsp/bank/receipts", json=doc)
        assert ok.status_code == 200
        assert provider_bank.settle(doc["id"], ok.json(), verify)["status"] == "settled"
        caller["did"] = "did:web:someone-else"
        wrong = c.post("/dsp/bank/receipts", json=doc)
        assert wrong.status_code == 400
        assert "did:web:someone-else sent it" in wrong.text
        caller["did"] = provider.did
        other = c.post("/dsp/bank/receipts", json={**doc, "consumer": "did:web:x"})
        assert other.status_code == 404


def test_consumer_countersigns_only_statements_matching_its_receipts(
    engine: sa.Engine, tmp_path: Path
) -> None:
    from connector.identity import canonical_json

    provider = Identity.load_or_create("did:web:p", tmp_path / "p")
    consumer = Identity.load_or_create("did:web:c", tmp_path / "c")
    verify = _verify({"did:web:p": provider, "did:web:c": consumer})
    bank = Settlement(Ledger(engine), did=provider.did, sign=lambda b: provider.sign_jws(b, detached=True))
    bank.deposit(consumer.did, 1_000)
    with engine.begin() as conn:
        record_usage_events(conn, [_event(i, consumer.did) for i in range(2)])
    doc = bank.issue_receipt("agr", consumer.did, PRICE)
    from connector.store import create_engine, migrate

    own = create_engine(f"sqlite:///{(tmp_path / 'consumer.db').as_posix()}")  # the consumer's own database
    migrate(own)
    consumer_bank = Settlement(
        Ledger(own), did=consumer.did, sign=lambda b: consumer.sign_jws(b, detached=True)
    )
    answer = countersign(doc, query_usage_events(engine, agreement_id="agr"),
                         sign=lambda b: consumer.sign_jws(b, detached=True), verify=verify)  # fmt: skip
    consumer_bank.record_countersigned(doc, answer)
    bank.settle(doc["id"], answer, verify)
    statement = bank.statement(consumer.did)
    signed = consumer_bank.countersign_statement(statement, verify)
    assert "signature" in signed, signed
    assert verify(signed["signature"], canonical_json(statement["statement"]), consumer.did)
    # a statement claiming more than the consumer signed for is disputed, naming the line
    body = {**statement["statement"], "lines": [{**statement["statement"]["lines"][0], "amount": 999}]}
    forged = {"statement": body, "provider_signature": provider.sign_jws(canonical_json(body), detached=True)}
    assert (
        "differs from the receipt we signed"
        in consumer_bank.countersign_statement(forged, verify)["dispute"][0]
    )
    own.dispose()


def test_the_consumer_cosigns_the_providers_checkpoint_only_when_it_verifies(
    engine: sa.Engine, tmp_path: Path
) -> None:
    from metering import make_checkpoint

    provider = Identity.load_or_create("did:web:p", tmp_path / "p")
    consumer = Identity.load_or_create("did:web:c", tmp_path / "c")
    verify = _verify({"did:web:p": provider, "did:web:c": consumer})
    sign_c = lambda b: consumer.sign_jws(b, detached=True)  # noqa: E731
    bank = Settlement(Ledger(engine), did=provider.did, sign=lambda b: provider.sign_jws(b, detached=True))
    bank.deposit(consumer.did, 1_000, ref="dep-1")
    with engine.begin() as conn:
        record_usage_events(conn, [_event(i, consumer.did) for i in range(2)])
    cp = make_checkpoint(engine, lambda b: provider.sign_jws(b, detached=True))
    assert cp is not None
    doc = bank.issue_receipt("agr", consumer.did, PRICE)
    sent = bank.receipt_document(doc["id"])
    assert sent["checkpoint"] == {"size": cp.size, "root": cp.root, "signature": cp.signature}
    mine = query_usage_events(engine, agreement_id="agr")
    # a checkpoint whose signature is not the provider's is not cosigned (the receipt still is)
    forged = {**sent, "checkpoint": {**sent["checkpoint"], "root": "00" * 32}}
    answer = countersign(forged, mine, sign=sign_c, verify=verify)
    assert "signature" in answer and "checkpoint_cosignature" not in answer
    assert "does not verify" in answer["checkpoint_error"]
    assert bank.record_cosignature(forged, answer, verify) is False
    # the real one is cosigned, and the provider keeps the cosignature (checked again there)
    answer = countersign(sent, mine, sign=sign_c, verify=verify)
    assert bank.record_cosignature(sent, {"checkpoint_cosignature": answer["signature"]}, verify) is False
    assert bank.record_cosignature(sent, answer, verify) is True
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT cosignature FROM bank_audit_checkpoints WHERE size = :s"), {"s": cp.size}
        ).scalar()
    assert json.loads(stored) == {consumer.did: answer["checkpoint_cosignature"]}
    assert verify_bank(engine) == []


def test_a_settled_receipt_is_split_between_contributors_exactly(engine: sa.Engine, tmp_path: Path) -> None:
    provider = Identity.load_or_create("did:web:p", tmp_path / "p")
    consumer = Identity.load_or_create("did:web:c", tmp_path / "c")
    verify = _verify({"did:web:p": provider, "did:web:c": consumer})
    shares = [("did:web:a", 2), ("did:web:b", 1)]  # a dataset contributed by two firms, 2:1
    bank = Settlement(Ledger(engine), did=provider.did, sign=lambda b: provider.sign_jws(b, detached=True),
                      shares_for=lambda agreement, party: shares if agreement == "agr" else ())  # fmt: skip
    bank.deposit(consumer.did, 1_000, ref="dep-1")
    with engine.begin() as conn:
        record_usage_events(conn, [_event(i, consumer.did) for i in range(3)])  # 3 calls at 0.50: 150
    doc = bank.issue_receipt("agr", consumer.did, PRICE)
    answer = countersign(doc, query_usage_events(engine, agreement_id="agr"),
                         sign=lambda b: consumer.sign_jws(b, detached=True), verify=verify)  # fmt: skip
    assert bank.settle(doc["id"], answer, verify)["status"] == "settled"
    lg = bank.ledger
    parts = {did: lg.account(f"revenue:{did}").balance for did, _ in shares}
    assert parts == {"did:web:a": 100, "did:web:b": 50}
    assert sum(parts.values()) == 150 and lg.account(Settlement.REVENUE).balance == 0
    assert lg.account(Settlement.prepaid(consumer.did)).balance == 850
    assert verify_bank(engine) == []


def test_a_price_plan_with_revenue_shares_is_validated() -> None:
    from metering._priceplan import plan_terms

    plan = {"currency": "EUR", "unitOfCount": "call", "tiers": [{"upTo": None, "unitPrice": "0.1"}],
            "revenueShare": {"did:web:a": 70, "did:web:b": 30}}  # fmt: skip
    assert plan_terms(plan).shares == (("did:web:a", 70), ("did:web:b", 30))
    with pytest.raises(ValidationError) as info:
        plan_terms({**plan, "revenueShare": {"acme": 70, "did:web:b": 0}})
    assert len(info.value.errors) == 2


def test_periodic_statements_are_sent_once_per_closed_period_and_kept_signed_by_both(
    engine: sa.Engine, tmp_path: Path
) -> None:
    from connector.store import create_engine, migrate
    from metering._periods import issue_due_receipts

    provider = Identity.load_or_create("did:web:p", tmp_path / "p")
    consumer = Identity.load_or_create("did:web:c", tmp_path / "c")
    verify = _verify({"did:web:p": provider, "did:web:c": consumer})
    sign_c = lambda b: consumer.sign_jws(b, detached=True)  # noqa: E731
    bank_p = Settlement(Ledger(engine), did=provider.did, sign=lambda b: provider.sign_jws(b, detached=True))
    engine_c = create_engine(f"sqlite:///{(tmp_path / 'consumer.db').as_posix()}")
    migrate(engine_c)
    bank_c = Settlement(Ledger(engine_c), did=consumer.did, sign=sign_c)
    bank_p.deposit(consumer.did, 1_000, ref="dep-1")
    for eng in (engine, engine_c):  # both sides metered the same three calls, in period [0, 60)
        with eng.begin() as conn:
            record_usage_events(conn, [_event(i, consumer.did) for i in range(3)])
    issued = issue_due_receipts(bank_p, period_s=60, price_for=lambda a, c: PRICE, now=1_000.0, grace_s=0)
    assert [i["document"]["receipt"]["amount"] for i in issued["issued"]] == [150]
    nothing = bank_p.send_period_statements(period_s=60, address_of=lambda a: "http://c", verify=verify,
                                            exchange=lambda *a: pytest.fail("receipt not answered yet"))  # fmt: skip
    assert nothing == []  # its receipt is not answered yet
    doc = bank_p.receipt_document(issued["issued"][0]["document"]["id"])
    answer = countersign(doc, bank_c.own_unbilled_events("agr", provider.did, except_receipt=doc["id"]),
                         sign=sign_c, verify=verify)  # fmt: skip
    bank_c.record_countersigned(doc, answer)
    assert bank_p.settle(doc["id"], answer, verify)["status"] == "settled"
    calls: list[dict[str, object]] = []

    def exchange(address: str, party: str, document: dict[str, object]) -> dict[str, object]:
        calls.append(document)
        return bank_c.countersign_statement(document, verify)

    sent = bank_p.send_period_statements(
        period_s=60, address_of=lambda a: "http://c", exchange=exchange, verify=verify
    )
    assert sent == [{"party": consumer.did, "period_start": 0, "signedBy": "both"}]
    assert bank_p.send_period_statements(period_s=60, address_of=lambda a: "http://c", exchange=exchange,
                                         verify=verify) == []  # fmt: skip
    assert len(calls) == 1
    [kept] = bank_p.stored_statements(consumer.did)
    assert kept["signedBy"] == "both" and kept["statement"]["period"] == {"start": 0, "end": 60}
    assert kept["statement"]["settled"] == 150 and [ln["status"] for ln in kept["statement"]["lines"]] == [
        "settled"
    ]
    assert verify_bank(engine) == []
    engine_c.dispose()
