"""Price plans: tiered prices kept as a document, referenced from an agreement by link and hash.

An agreement's ``compensate`` duty can say ``{"leftOperand": "https://w3id.org/dadam/v1/pricePlan",
"operator": "eq", "rightOperand": "<dsp>/bank/price-plans/<id>#sha256=<hex>"}`` instead of a
single ``payAmount``. The document is immutable (a new price is a new plan id), its hash is the
SHA-256 of its RFC 8785 canonical JSON, and the data bank bills with it only when the stored
document still has the hash the agreement names.

A plan::

    {"currency": "EUR", "unitOfCount": "call",
     "tiers": [{"upTo": 1000, "unitPrice": "0.010"}, {"upTo": null, "unitPrice": "0.005"}]}

Tiers are graduated: the first 1,000 units of a receipt cost 0.010 each, the rest 0.005. A plan
for a dataset contributed by several firms adds ``"revenueShare": {"did:web:a": 70, "did:web:b": 30}``:
each settled receipt is then split between them with :func:`~metering.split_revenue` (integer parts
that always sum to the amount) into their ``revenue:<did>`` accounts, in the same linked batch.
"""

from __future__ import annotations

import hashlib
import json
import time
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.errors import ConflictError, NotFoundError, ValidationError
from connector.identity import canonical_json
from metering._tables import price_plans
from metering._usage import PriceTerms, UnitOfCount

__all__ = [
    "PLAN_OPERAND",
    "get_price_plan",
    "plan_hash",
    "plan_terms",
    "store_price_plan",
    "verify_reference",
]

PLAN_OPERAND = "https://w3id.org/dadam/v1/pricePlan"


def plan_hash(plan: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(plan)).hexdigest()


def plan_terms(plan: Any) -> PriceTerms:
    """The plan as metering PriceTerms (graduated tiers); ValidationError naming every problem."""
    errors: list[str] = []
    if not isinstance(plan, dict):
        raise ValidationError("a price plan is a JSON object", errors=["plan: object"])
    currency = plan.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        errors.append("currency: a three-letter code such as EUR")
    unit = plan.get("unitOfCount")
    if unit not in (UnitOfCount.CALL, UnitOfCount.MB, UnitOfCount.RECORD):
        errors.append("unitOfCount: call, MB or record")
    tiers_in = plan.get("tiers")
    tiers: list[tuple[Decimal | None, Decimal]] = []
    if not isinstance(tiers_in, list) or not tiers_in:
        errors.append("tiers: a non-empty list of {upTo, unitPrice}")
        tiers_in = []
    last: Decimal | None = Decimal(0)
    for i, tier in enumerate(tiers_in):
        if not isinstance(tier, dict):
            errors.append(f"tiers[{i}]: an object")
            continue
        price: Decimal | None = None
        try:
            price = Decimal(str(tier.get("unitPrice")))
            if not price.is_finite() or price < 0:
                raise InvalidOperation
        except InvalidOperation:
            errors.append(f"tiers[{i}].unitPrice: a decimal >= 0 (as a string)")
            price = None
        up_to_raw = tier.get("upTo")
        up_to = None
        if up_to_raw is not None:
            try:
                up_to = Decimal(str(up_to_raw))
            except InvalidOperation:
                errors.append(f"tiers[{i}].upTo: a number or null")
                continue
        if last is None:
            errors.append(f"tiers[{i}]: follows an unbounded tier")
        elif up_to is not None and up_to <= last:
            errors.append(f"tiers[{i}].upTo: must grow ({up_to} after {last})")
        last = up_to
        if price is not None:
            tiers.append((up_to, price))
    if tiers and tiers[-1][0] is not None:
        errors.append("tiers: the last tier must be unbounded (upTo: null)")
    shares_in = plan.get("revenueShare")
    shares: list[tuple[str, int]] = []
    if shares_in is not None:
        if not isinstance(shares_in, dict) or not shares_in:
            errors.append("revenueShare: an object of contributor DID -> positive integer weight")
        else:
            for did, weight in sorted(shares_in.items()):
                if (
                    not str(did).startswith("did:")
                    or not isinstance(weight, int)
                    or isinstance(weight, bool)
                    or weight <= 0
                ):
                    errors.append(f"revenueShare.{did}: a DID with a positive integer weight")
                else:
                    shares.append((str(did), weight))
    extra = sorted(set(plan) - {"currency", "unitOfCount", "tiers", "description", "revenueShare"})
    errors += [f"{k}: unknown field" for k in extra]
    if errors:
        raise ValidationError("invalid price plan", errors=errors)
    return PriceTerms(
        tiers[0][1], str(currency), UnitOfCount(str(unit)), tiers=tuple(tiers), shares=tuple(shares)
    )


def store_price_plan(engine: Engine, plan_id: str, plan: Any) -> dict[str, Any]:
    """Store an immutable plan under ``plan_id``; the same id again with the same plan answers
    the stored one, with another plan a ConflictError (publish a new id instead)."""
    if not plan_id or len(plan_id) > 200 or any(c in plan_id for c in "/#?% "):
        raise ValidationError("bad plan id", errors=["id: 1-200 characters, no / # ? % or spaces"])
    plan_terms(plan)  # validates
    digest = plan_hash(plan)
    with engine.begin() as conn:
        found = conn.execute(sa.select(price_plans).where(price_plans.c.id == plan_id)).mappings().first()
        if found is not None:
            if found["hash"] != digest:
                raise ConflictError(f"price plan {plan_id!r} exists with other terms: publish a new id")
        else:
            conn.execute(
                price_plans.insert().values(
                    id=plan_id, hash=digest, body=json.dumps(plan, sort_keys=True), created_at=time.time()
                )
            )
    return {"id": plan_id, "hash": digest, "plan": plan}


def get_price_plan(engine: Engine, plan_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        found = conn.execute(sa.select(price_plans).where(price_plans.c.id == plan_id)).mappings().first()
    if found is None:
        raise NotFoundError(f"no price plan {plan_id!r}")
    plan = json.loads(found["body"])
    if plan_hash(plan) != found["hash"]:  # edited behind the API's back: never bill with it
        raise ValidationError(f"stored price plan {plan_id!r} no longer matches its hash")
    return {"id": plan_id, "hash": found["hash"], "plan": plan}


def verify_reference(engine: Engine, reference: str) -> PriceTerms:
    """The terms of the plan an agreement references (``<link>/<id>#sha256=<hex>``), after checking
    the stored document still has that hash; ValidationError saying what does not match."""
    link, _, fragment = reference.partition("#")
    plan_id = link.rstrip("/").rsplit("/", 1)[-1]
    if not fragment.startswith("sha256="):
        raise ValidationError(f"price plan reference {reference!r} carries no sha256= hash")
    stored = get_price_plan(engine, plan_id)
    if stored["hash"] != "sha256:" + fragment.removeprefix("sha256="):
        raise ValidationError(f"price plan {plan_id!r} does not have the hash the agreement names")
    return plan_terms(stored["plan"])
