"""Usage events (exactly once), pricing from ODRL duties, receipts with Merkle roots, disputes, splits."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import ValidationError
from connector.identity import Identity, verify_jws
from metering import (
    IngestResult,
    Ledger,
    PriceTerms,
    UnitOfCount,
    UsageEvent,
    charge_minor_units,
    compare_receipt,
    make_checkpoint,
    make_receipt,
    merkle_root,
    price_terms_from_odrl,
    query_usage_events,
    record_usage_events,
    split_revenue,
    verify_audit,
)
from metering._audit import leaf_hash


def ev(i: int, **kw: object) -> UsageEvent:
    base: dict[str, object] = {
        "id": f"e{i}", "agreement_id": "agr-1", "transfer_id": "tp-1", "dataset_id": "pcf", "category": "carbon",
        "bytes": 1_500_000, "records": 10, "calls": 1, "started_at": 1000.0 + i, "ended_at": 1000.5 + i,
        "outcome": "ok", "consumer": "did:web:c", "provider": "did:web:p",
    }  # fmt: skip
    base.update(kw)
    return UsageEvent(**base)  # type: ignore[arg-type]


def test_usage_events_are_recorded_exactly_once(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        assert record_usage_events(conn, [ev(1), ev(2)]) == [IngestResult.CREATED] * 2
    with engine.begin() as conn:  # a retry of the same batch, and a conflicting id
        assert record_usage_events(conn, [ev(1), ev(2, bytes=1), ev(3)]) == [
            IngestResult.EXISTS,
            IngestResult.CONFLICT,
            IngestResult.CREATED,
        ]
    got = query_usage_events(engine, agreement_id="agr-1")
    assert [e.id for e in got] == ["e1", "e2", "e3"]
    assert got[1].bytes == 1_500_000  # the conflicting write changed nothing


def test_usage_event_in_the_callers_transaction_rolls_back_with_it(engine: sa.Engine) -> None:
    def failing_write() -> None:
        with engine.begin() as conn:
            record_usage_events(conn, [ev(9)])
            raise RuntimeError("the data plane's own write failed")

    with pytest.raises(RuntimeError):
        failing_write()
    assert query_usage_events(engine) == []


def test_bad_usage_event_is_refused() -> None:
    with pytest.raises(ValidationError, match="invalid usage event"):
        ev(1, category="weather")


@pytest.mark.parametrize(
    ("duty", "unit", "amount"),
    [
        ({"action": "compensate", "constraint": [{"leftOperand": "payAmount", "operator": "eq", "rightOperand": "0.10"},
          {"leftOperand": "unit", "operator": "eq", "rightOperand": "EUR"}]}, UnitOfCount.CALL, Decimal("0.10")),
        ({"action": "odrl:compensate", "constraint": [{"leftOperand": "odrl:payAmount", "operator": "eq",
          "rightOperand": {"@value": "2.5", "@type": "xsd:decimal"}}, {"leftOperand": "unitOfCount", "operator": "eq",
          "rightOperand": "MB"}]}, UnitOfCount.MB, Decimal("2.5")),
    ],
)  # fmt: skip
def test_price_terms_from_odrl(duty: dict[str, object], unit: UnitOfCount, amount: Decimal) -> None:
    terms = price_terms_from_odrl(duty)
    assert (terms.unit_of_count, terms.pay_amount, terms.currency) == (unit, amount, "EUR")


def test_price_terms_name_every_problem() -> None:
    with pytest.raises(ValidationError) as err:
        price_terms_from_odrl(
            {
                "action": "compensate",
                "constraint": [{"leftOperand": "unitOfCount", "operator": "eq", "rightOperand": "litre"}],
            }
        )
    assert any("payAmount: required" in e for e in err.value.errors)
    assert any("unitOfCount" in e for e in err.value.errors)


def test_charges_in_minor_units() -> None:
    events = [ev(i) for i in range(3)] + [ev(9, outcome="error")]
    assert charge_minor_units(PriceTerms(Decimal("0.10"), "EUR", UnitOfCount.CALL), events) == 30
    assert (
        charge_minor_units(PriceTerms(Decimal("2"), "EUR", UnitOfCount.MB), events) == 900
    )  # 4.5 MB x 2 EUR
    assert charge_minor_units(PriceTerms(Decimal("0.005"), "EUR", UnitOfCount.RECORD), events) == 15
    assert charge_minor_units(PriceTerms(Decimal("99"), "EUR", UnitOfCount.LUMP_SUM), events) == 9900


def test_receipt_signed_by_both_and_disputes_list_the_differing_events(tmp_path: Path) -> None:
    provider = Identity.load_or_create("did:web:p", tmp_path / "p")
    consumer = Identity.load_or_create("did:web:c", tmp_path / "c")
    events = [ev(i) for i in range(5)]
    receipt = make_receipt(
        "agr-1", (1000.0, 2000.0), events, PriceTerms(Decimal("0.10"), "EUR", UnitOfCount.CALL)
    )
    assert (receipt.calls, receipt.amount, receipt.event_count) == (5, 50, 5)
    provider_sig = provider.sign_jws(receipt.payload(), detached=True)
    # the consumer metered the same events: no difference, it countersigns
    assert compare_receipt(receipt, [e.id for e in events], events) == []
    consumer_sig = consumer.sign_jws(receipt.payload(), detached=True)
    for ident, sig in ((provider, provider_sig), (consumer, consumer_sig)):
        assert verify_jws(sig, key_resolver=ident.resolve_own, detached_payload=receipt.payload())
    # the consumer saw one event less and one the provider did not bill: both ids are named
    mine = [*events[:4], ev(7)]
    assert compare_receipt(receipt, [e.id for e in events], mine) == ["e4", "e7"]


def test_merkle_root_follows_rfc6962() -> None:
    import hashlib

    a, b, c = b"a", b"b", b"c"
    node = lambda x, y: hashlib.sha256(b"\x01" + x + y).digest()  # noqa: E731
    assert merkle_root([]) == hashlib.sha256(b"").digest()
    assert merkle_root([a]) == leaf_hash(a)
    assert merkle_root([a, b, c]) == node(node(leaf_hash(a), leaf_hash(b)), leaf_hash(c))


def test_signed_checkpoints_detect_a_rewritten_history(engine: sa.Engine, tmp_path: Path) -> None:
    from metering import Account, Transfer

    ident = Identity.load_or_create("did:web:bank", tmp_path)
    lg = Ledger(engine)
    lg.create_accounts([Account("a", "EUR"), Account("b", "EUR")])
    lg.create_transfer(Transfer("t1", "a", "b", 5, "EUR"))
    cp = make_checkpoint(engine, lambda payload: ident.sign_jws(payload, detached=True))
    assert cp is not None
    assert cp.size == 2

    def check(payload: bytes, sig: str) -> bool:
        return verify_jws(sig, key_resolver=ident.resolve_own, detached_payload=payload) == payload

    assert verify_audit(engine, verify_signature=check) == []
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE bank_audit_checkpoints SET root = :r"), {"r": "00" * 32})
    assert any("checkpoint 2" in p for p in verify_audit(engine, verify_signature=check))


@given(
    total=st.integers(0, 10**12),
    shares=st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 10**6), min_size=1, max_size=8),
)
def test_revenue_split_always_sums_exactly(total: int, shares: dict[str, int]) -> None:
    parts = split_revenue(total, shares)
    assert sum(parts.values()) == total
    assert set(parts) == set(shares)
    whole = sum(shares.values())
    for k, w in shares.items():  # nobody is more than one minor unit away from the exact share
        assert abs(parts[k] * whole - total * w) < whole
