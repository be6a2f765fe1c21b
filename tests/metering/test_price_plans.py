"""Price plans: graduated tiers, validation naming every problem, immutable ids, and the link#hash
reference an agreement carries (billing refuses a plan whose document changed)."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa

from connector.errors import ConflictError, NotFoundError, ValidationError
from metering import UnitOfCount, UsageEvent, charge_minor_units
from metering._priceplan import get_price_plan, plan_hash, plan_terms, store_price_plan, verify_reference

PLAN = {"currency": "EUR", "unitOfCount": "call",
        "tiers": [{"upTo": 2, "unitPrice": "0.30"}, {"upTo": 5, "unitPrice": "0.20"}, {"upTo": None, "unitPrice": "0.10"}]}  # fmt: skip


def _calls(n: int) -> list[UsageEvent]:
    return [
        UsageEvent(f"e{i}", "agr", "tp", "ds", "carbon", 10, 1, 1, 1.0, 2.0, "ok", "did:web:c", "did:web:p")
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("calls", "cents"), [(0, 0), (1, 30), (2, 60), (3, 80), (5, 120), (6, 130), (10, 170)]
)
def test_tiers_are_graduated(calls: int, cents: int) -> None:
    terms = plan_terms(PLAN)
    assert terms.unit_of_count == UnitOfCount.CALL and terms.currency == "EUR"
    assert charge_minor_units(terms, _calls(calls)) == cents


def test_a_bad_plan_names_every_problem() -> None:
    bad = {"currency": "euro", "unitOfCount": "hour", "colour": "red",
           "tiers": [{"upTo": 5, "unitPrice": "-1"}, {"upTo": 3, "unitPrice": "0.1"}]}  # fmt: skip
    with pytest.raises(ValidationError) as info:
        plan_terms(bad)
    text = " ".join(info.value.errors)
    for part in ("currency", "unitOfCount", "tiers[0].unitPrice", "tiers[1].upTo", "last tier", "colour"):
        assert part in text, text


def test_plans_are_immutable_and_referenced_by_hash(engine: sa.Engine) -> None:
    stored = store_price_plan(engine, "pcf-2027", PLAN)
    assert stored["hash"] == plan_hash(PLAN) and stored["hash"].startswith("sha256:")
    assert store_price_plan(engine, "pcf-2027", dict(PLAN)) == stored  # same terms again: fine
    cheaper = {**PLAN, "tiers": [{"upTo": None, "unitPrice": "0.01"}]}
    with pytest.raises(ConflictError):
        store_price_plan(engine, "pcf-2027", cheaper)
    with pytest.raises(ValidationError):
        store_price_plan(engine, "a/b", PLAN)
    ref = f"https://p.example/api/dsp/2025-1/bank/price-plans/pcf-2027#sha256={stored['hash'][7:]}"
    assert verify_reference(engine, ref).tiers[0] == (Decimal(2), Decimal("0.30"))
    with pytest.raises(ValidationError, match="does not have the hash"):
        verify_reference(engine, ref[:-4] + "0000")
    with pytest.raises(ValidationError, match="no sha256"):
        verify_reference(engine, ref.split("#")[0])
    with pytest.raises(NotFoundError):
        get_price_plan(engine, "nope")
    # the stored document edited behind our back: billing refuses it
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE bank_price_plans SET body = :b WHERE id = 'pcf-2027'"),
                     {"b": '{"currency": "EUR", "unitOfCount": "call", "tiers": [{"upTo": null, "unitPrice": "9"}]}'})  # fmt: skip
    with pytest.raises(ValidationError, match="no longer matches its hash"):
        verify_reference(engine, ref)
