"""Usage events, pricing, usage receipts with Merkle roots, disputes and revenue splits."""

from __future__ import annotations

import builtins
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector.errors import ValidationError
from connector.identity import canonical_json
from metering._audit import merkle_root
from metering._tables import usage_events, usage_totals

__all__ = [
    "IngestResult",
    "PriceTerms",
    "Receipt",
    "UnitOfCount",
    "UsageEvent",
    "charge_minor_units",
    "compare_receipt",
    "events_root",
    "make_period_receipt",
    "make_receipt",
    "price_terms_from_engine",
    "price_terms_from_odrl",
    "query_usage_events",
    "record_usage_events",
    "split_revenue",
    "usage_so_far",
]

CATEGORIES = ("carbon", "process", "supply-chain", "other")


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One served request or push, with a stable id chosen by the data plane."""

    id: str
    agreement_id: str
    transfer_id: str
    dataset_id: str
    category: str
    bytes: int
    records: int
    calls: int
    started_at: float
    ended_at: float
    outcome: str
    consumer: str
    provider: str

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValidationError("invalid usage event", errors=[f"category: one of {', '.join(CATEGORIES)}"])
        if min(self.bytes, self.records, self.calls) < 0:
            raise ValidationError("invalid usage event", errors=["bytes, records and calls must be >= 0"])


class IngestResult(enum.StrEnum):
    CREATED = "created"
    #: the same id with the same fields: a retry, counted once
    EXISTS = "exists"
    #: the same id with other fields: refused, nothing changed
    CONFLICT = "exists_with_different_fields"


def record_usage_events(conn: Connection, events: Sequence[UsageEvent]) -> list[IngestResult]:
    """Store ``events`` in the caller's transaction, deduplicated by id (set-based)."""
    if not events:
        return []
    ids = [e.id for e in events]
    found = {
        r.id: dict(r._mapping)
        for r in conn.execute(sa.select(usage_events).where(usage_events.c.id.in_(ids)))
    }
    results: list[IngestResult] = []
    rows = []
    for e in events:
        row = asdict(e)
        have = found.get(e.id)
        if have is None:
            rows.append(row)
            found[e.id] = row
            results.append(IngestResult.CREATED)
        else:
            results.append(IngestResult.EXISTS if have == row else IngestResult.CONFLICT)
    if rows:
        conn.execute(usage_events.insert(), rows)
        _add_to_totals(conn, rows)
    return results


def _add_to_totals(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add newly inserted events to their agreements' running totals (successful events only)."""
    add: dict[str, list[Any]] = {}
    for r in rows:
        if r["outcome"] != "ok":
            continue
        t = add.setdefault(r["agreement_id"], [0, 0, r["started_at"]])
        t[0] += 1
        t[1] += r["bytes"]
        t[2] = min(t[2], r["started_at"])
    if not add:
        return
    # one upsert per agreement, in a fixed order, so concurrent writers lock rows alike
    stmt = _totals_upsert(conn.dialect.name)
    for agreement_id in sorted(add):
        events, nbytes, first = add[agreement_id]
        conn.execute(
            stmt, {"agreement_id": agreement_id, "events": events, "bytes": nbytes, "first_started_at": first}
        )


def _totals_upsert(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (agreement_id) DO UPDATE`` adding to the running totals."""
    from sqlalchemy.dialects import postgresql, sqlite

    stmt: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(usage_totals)
    tot, new = usage_totals.c, stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[tot.agreement_id],
        set_={
            "events": tot.events + new.events,
            "bytes": tot.bytes + new.bytes,
            "first_started_at": sa.case(
                (new.first_started_at < tot.first_started_at, new.first_started_at),
                else_=tot.first_started_at,
            ),
        },
    )


def usage_so_far(conn: Connection, agreement_id: str) -> tuple[int, float | None, int]:
    """(successful events, start of the first one or None, bytes) of an agreement, from the
    running totals kept by :func:`record_usage_events`: one row, however long the history."""
    row = conn.execute(
        sa.select(usage_totals.c.events, usage_totals.c.first_started_at, usage_totals.c.bytes).where(
            usage_totals.c.agreement_id == agreement_id
        )
    ).first()
    if row is None:
        return 0, None, 0
    return int(row.events), float(row.first_started_at), int(row.bytes)


def query_usage_events(
    engine: Engine, *, agreement_id: str | None = None, since: float | None = None, until: float | None = None
) -> list[UsageEvent]:
    stmt = sa.select(usage_events).order_by(usage_events.c.started_at, usage_events.c.id)
    if agreement_id is not None:
        stmt = stmt.where(usage_events.c.agreement_id == agreement_id)
    if since is not None:
        stmt = stmt.where(usage_events.c.started_at >= since)
    if until is not None:
        stmt = stmt.where(usage_events.c.started_at < until)
    with engine.connect() as conn:
        return [UsageEvent(**dict(r._mapping)) for r in conn.execute(stmt)]


class UnitOfCount(enum.StrEnum):
    CALL = "call"
    MB = "MB"
    RECORD = "record"
    FLAT_PERIOD = "flat-period"
    LUMP_SUM = "lump-sum"


@dataclass(frozen=True, slots=True)
class PriceTerms:
    """What the ``compensate`` duty of an agreement asks: a decimal price per unit, in a currency."""

    pay_amount: Decimal
    currency: str
    unit_of_count: UnitOfCount
    #: minor units per major unit (EUR: 100)
    minor_per_major: int = 100
    #: graduated tiers from a price plan: (up to this many units, unit price); the last unbounded.
    #: When set, ``pay_amount`` is ignored.
    tiers: tuple[tuple[Decimal | None, Decimal], ...] = ()
    #: revenue share of a price plan: (contributor DID, weight); settlement splits each receipt
    shares: tuple[tuple[str, int], ...] = ()


_ODRL = "http://www.w3.org/ns/odrl/2/"


def _local(term: Any) -> str:
    text = str(term.get("@id") if isinstance(term, Mapping) else term)
    for prefix in (_ODRL, "odrl:"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text.rsplit("/", 1)[-1].rsplit("#", 1)[-1]


def price_terms_from_odrl(duty: Mapping[str, Any]) -> PriceTerms:
    """Price terms from an ODRL ``compensate`` duty in DSP compact form.

    ``payAmount`` (eq, a decimal) is required; ``unit`` (a currency code) defaults to EUR;
    ``unitOfCount`` defaults to ``call``. Names every problem found.
    """
    if _local(duty.get("action", "")) != "compensate":
        raise ValidationError("not a compensate duty", errors=[f"action: {duty.get('action')!r}"])
    values: dict[str, Any] = {}
    problems = []
    for c in duty.get("constraint") or []:
        if not isinstance(c, Mapping):
            continue
        name = _local(c.get("leftOperand", ""))
        if _local(c.get("operator", "")) != "eq":
            problems.append(f"{name}: only 'eq' fixes a price, got {c.get('operator')!r}")
            continue
        right = c.get("rightOperand")
        values[name] = right.get("@value") if isinstance(right, Mapping) else right
    if "payAmount" not in values:
        problems.append("payAmount: required")
    try:
        amount = Decimal(str(values.get("payAmount", "0")))
    except InvalidOperation:
        problems.append(f"payAmount: not a decimal: {values.get('payAmount')!r}")
        amount = Decimal(0)
    if amount < 0:
        problems.append("payAmount: must not be negative")
    unit_text = str(values.get("unitOfCount", "call"))
    try:
        unit = UnitOfCount(_local(unit_text))
    except ValueError:
        problems.append(f"unitOfCount: one of {', '.join(u.value for u in UnitOfCount)}, got {unit_text!r}")
        unit = UnitOfCount.CALL
    if problems:
        raise ValidationError("invalid compensate duty", errors=problems)
    return PriceTerms(amount, str(values.get("unit", "EUR")), unit)


def price_terms_from_engine(terms: Any) -> PriceTerms:
    """Our PriceTerms from the policy engine's (``usage_policy`` ``Decision.price_terms`` item)."""
    mode = str(getattr(terms, "mode", ""))
    if mode == "revenue_share" or terms.amount is None:
        raise ValidationError("a revenue share is settled with split_revenue, not per use")
    unit = {"metered": UnitOfCount(terms.unit_of_count or "call"), "flat_fee": UnitOfCount.FLAT_PERIOD,
            "lump_sum": UnitOfCount.LUMP_SUM}[mode]  # fmt: skip
    return PriceTerms(Decimal(terms.amount), str(terms.currency or "EUR"), unit)


def charge_minor_units(terms: PriceTerms, events: Iterable[UsageEvent]) -> int:
    """The charge for ``events`` in minor units (rounded half up once, on the total)."""
    evs = [e for e in events if e.outcome == "ok"]
    if terms.unit_of_count == UnitOfCount.CALL:
        quantity = Decimal(sum(e.calls for e in evs))
    elif terms.unit_of_count == UnitOfCount.MB:
        quantity = Decimal(sum(e.bytes for e in evs)) / Decimal(1_000_000)
    elif terms.unit_of_count == UnitOfCount.RECORD:
        quantity = Decimal(sum(e.records for e in evs))
    else:  # flat per period or lump sum: the amount once, whatever the use
        quantity = Decimal(1)
    if terms.tiers:
        total = _graduated(terms.tiers, quantity) * terms.minor_per_major
        return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    total = terms.pay_amount * quantity * terms.minor_per_major
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _graduated(tiers: tuple[tuple[Decimal | None, Decimal], ...], quantity: Decimal) -> Decimal:
    """Each tier's units at its own price: 1,500 units over (1,000 @ a, rest @ b) = 1,000a + 500b."""
    total, below = Decimal(0), Decimal(0)
    for up_to, price in tiers:
        top = quantity if up_to is None else min(quantity, up_to)
        if top > below:
            total += (top - below) * price
        if up_to is None or quantity <= up_to:
            break
        below = up_to
    return total


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the provider bills for an agreement and period, signed by the provider (and the consumer)."""

    agreement_id: str
    period_start: float
    period_end: float
    calls: int
    bytes: int
    records: int
    amount: int
    currency: str
    event_count: int
    events_root: str
    #: periodic receipts only: the receipt's number within its period (1, 2, ...)
    sequence: int | None = None
    #: periodic receipts only: the events that arrived after their own period closed, billed here
    #: (included in the totals above): ``event_count``, ``calls``, ``bytes``, ``records``, ``amount``,
    #: ``event_ids`` and ``of_periods`` (the closed periods they belong to)
    adjustments: dict[str, Any] | None = None

    def payload(self) -> builtins.bytes:
        """What both parties sign (fields left at None are omitted: older receipts keep their bytes)."""
        fields = {k: v for k, v in asdict(self).items() if v is not None}
        return canonical_json({"type": "dadam:UsageReceipt", **fields})


def events_root(event_ids: Iterable[str]) -> str:
    """RFC 6962 Merkle root over the sorted event ids: both parties compute it independently."""
    return merkle_root([i.encode() for i in sorted(set(event_ids))]).hex()


def make_receipt(
    agreement_id: str, period: tuple[float, float], events: Sequence[UsageEvent], terms: PriceTerms
) -> Receipt:
    ok = [e for e in events if e.outcome == "ok" and e.agreement_id == agreement_id]
    return Receipt(
        agreement_id=agreement_id,
        period_start=period[0],
        period_end=period[1],
        calls=sum(e.calls for e in ok),
        bytes=sum(e.bytes for e in ok),
        records=sum(e.records for e in ok),
        amount=charge_minor_units(terms, ok),
        currency=terms.currency,
        event_count=len(ok),
        events_root=events_root(e.id for e in ok),
    )


def _totals(events: Sequence[UsageEvent]) -> dict[str, int]:
    return {
        "event_count": len(events),
        "calls": sum(e.calls for e in events),
        "bytes": sum(e.bytes for e in events),
        "records": sum(e.records for e in events),
    }


def make_period_receipt(
    agreement_id: str,
    period: tuple[float, float],
    events: Sequence[UsageEvent],
    adjustments: Mapping[str, int],
    terms: PriceTerms,
    *,
    sequence: int,
    fixed_fee_due: bool,
) -> Receipt:
    """A periodic receipt: the period's own events plus late ones (``adjustments``: event id -> the
    closed period it belongs to) as a separate line. Totals, amount and Merkle root cover both.

    Per call / MB / record, each line is priced on its own (rounded once per line). A flat fee per
    period or a lump sum is charged only when ``fixed_fee_due`` (the period's, resp. the agreement's,
    first receipt), never on adjustments.
    """
    ok = [e for e in events if e.outcome == "ok" and e.agreement_id == agreement_id]
    late = [e for e in ok if e.id in adjustments]
    regular = [e for e in ok if e.id not in adjustments]
    usage_priced = terms.unit_of_count in (UnitOfCount.CALL, UnitOfCount.MB, UnitOfCount.RECORD)
    if usage_priced:
        regular_amount, late_amount = charge_minor_units(terms, regular), charge_minor_units(terms, late)
    else:
        regular_amount, late_amount = (charge_minor_units(terms, []) if fixed_fee_due else 0), 0
    adj = None
    if late:
        adj = {
            **_totals(late),
            "amount": late_amount,
            "event_ids": sorted(e.id for e in late),
            "of_periods": sorted({int(adjustments[e.id]) for e in late}),
        }
    return Receipt(
        agreement_id=agreement_id,
        period_start=period[0],
        period_end=period[1],
        calls=sum(e.calls for e in ok),
        bytes=sum(e.bytes for e in ok),
        records=sum(e.records for e in ok),
        amount=regular_amount + late_amount,
        currency=terms.currency,
        event_count=len(ok),
        events_root=events_root(e.id for e in ok),
        sequence=sequence,
        adjustments=adj,
    )


def compare_receipt(
    receipt: Receipt, provider_ids: Iterable[str], own_events: Sequence[UsageEvent], *, complete: bool = True
) -> list[str]:
    """The consumer's check: ids only one side metered (empty: the receipt matches its own metering).

    ``own_events``: the consumer's events not yet billed to it. ``complete=False`` (a periodic receipt
    bills part of them; the rest comes with later receipts or as adjustments): only ids the receipt
    bills that are not among them are named.
    """
    mine = {e.id for e in own_events if e.outcome == "ok"}
    theirs = set(provider_ids)
    differing = sorted(theirs ^ mine) if complete else sorted(theirs - mine)
    if events_root(theirs) != receipt.events_root:
        return differing or ["<provider's event list does not match its own receipt root>"]
    return differing


def split_revenue(total: int, shares: Mapping[str, int]) -> dict[str, int]:
    """Integer split of ``total`` by weights (largest remainder; ties by name): always sums to ``total``."""
    if total < 0:
        raise ValidationError("cannot split a negative amount")
    weights = {k: v for k, v in shares.items() if v > 0}
    if not weights:
        raise ValidationError("revenue split needs at least one positive share")
    whole = sum(weights.values())
    base = {k: total * w // whole for k, w in weights.items()}
    rest = total - sum(base.values())
    order = sorted(weights, key=lambda k: (-(total * weights[k] % whole), k))
    for k in order[:rest]:
        base[k] += 1
    return base
