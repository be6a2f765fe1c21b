"""Accounting periods and periodic receipts: late usage becomes an adjustment, never a lost or double charge.

Periods have a fixed length (``DADAM_BANK_PERIOD_SECONDS``) and are aligned to the epoch: period
``s`` covers ``[s, s + length)`` of a usage event's ``started_at``. They close in order, by hand
(:func:`close_period`) or once they ended more than a grace ago (:func:`close_due_periods`); closing
a period closes every earlier one. Closing stamps the events the period has at that moment as its
own (``bank_event_billing``); an event of a closed period that arrives later is still recorded (the
data plane never refuses usage) and is marked as an **adjustment** of its period, billed with the
period open at that time, on a separate line of that period's receipt.

:func:`issue_due_receipts` (the housekeeping worker calls it) issues a signed receipt per agreement
for every closed period with unbilled events and, with ``every_events`` > 0, as soon as an agreement
has that many unbilled events. Every step runs under one billing lock (a PostgreSQL advisory lock;
SQLite has one writer), receipt ids are derived from agreement, consumer, period and sequence, and
``bank_event_billing`` keys each event once, so several replicas may call it at the same time: each
receipt is issued once and no event is billed twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector.errors import ValidationError
from metering._audit import append_audit
from metering._tables import event_billing, periods, receipts, usage_events
from metering._usage import PriceTerms, UnitOfCount, UsageEvent, make_period_receipt

if TYPE_CHECKING:
    from metering._settlement import Settlement

__all__ = [
    "bill_events",
    "billing_lock",
    "close_due_periods",
    "close_period",
    "closed_until",
    "event_of",
    "issue_due_receipts",
    "list_periods",
    "mark_adjustments",
    "period_of",
    "unbilled_events",
]

#: "dadn": serialises closing periods and issuing receipts on PostgreSQL
_BILLING_LOCK = 0x6461646E
_CHUNK = 500
_EVENT_FIELDS = list(usage_events.c)

PriceFor = Callable[[str, str], PriceTerms | None]


def billing_lock(conn: Connection) -> None:
    """Take the billing lock for the caller's transaction (SQLite: its BEGIN IMMEDIATE already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _BILLING_LOCK})


def period_of(t: float, period_s: int) -> int:
    """Start of the period containing time ``t`` (periods of ``period_s`` seconds from the epoch)."""
    return math.floor(t / period_s) * period_s


def closed_until(conn: Connection) -> int | None:
    """The end of the latest closed period: every usage time before it lies in a closed period."""
    end = conn.execute(sa.select(sa.func.max(periods.c.end))).scalar()
    return None if end is None else int(end)


def _unbilled() -> sa.Select[Any]:
    """Billable (``ok``) events no receipt bills yet, with their billing row's fields if any."""
    return (
        sa.select(*_EVENT_FIELDS, event_billing.c.event_id.label("b_event"),
                  event_billing.c.period_start.label("b_period"), event_billing.c.adjustment_of)
        .select_from(usage_events.outerjoin(event_billing, event_billing.c.event_id == usage_events.c.id))
        .where(usage_events.c.outcome == "ok", event_billing.c.receipt_id.is_(None))
    )  # fmt: skip


# the table's columns are the event's fields, in order: a row's first columns build the event
assert [c.name for c in _EVENT_FIELDS] == list(UsageEvent.__dataclass_fields__)


def event_of(row: Any) -> UsageEvent:
    """The usage event of a row of :func:`unbilled_events`."""
    return UsageEvent(*row[: len(_EVENT_FIELDS)])


def unbilled_events(
    conn: Connection, *, agreement_id: str, consumer: str | None = None,
    since: float | None = None, until: float | None = None,
) -> list[Any]:  # fmt: skip
    """Rows of :func:`_unbilled` for one agreement (``b_event`` None: no billing row yet)."""
    stmt = _unbilled().where(usage_events.c.agreement_id == agreement_id)
    if consumer is not None:
        stmt = stmt.where(usage_events.c.consumer == consumer)
    if since is not None:
        stmt = stmt.where(usage_events.c.started_at >= since)
    if until is not None:
        stmt = stmt.where(usage_events.c.started_at < until)
    return list(conn.execute(stmt.order_by(usage_events.c.started_at, usage_events.c.id)))


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def bill_events(
    conn: Connection, receipt_id: str, rows: Sequence[Any], *, period_start: int | None, now: float
) -> None:
    """Record that ``receipt_id`` bills the events of ``rows`` (from :func:`unbilled_events`, read under
    the billing lock). Refuses (and so rolls the caller's transaction back) if any is billed already."""
    have = [r.id for r in rows if r.b_event is not None]
    new = [r.id for r in rows if r.b_event is None]
    done = 0
    for part in _chunks(have):
        result = conn.execute(
            event_billing.update()
            .where(event_billing.c.event_id.in_(part), event_billing.c.receipt_id.is_(None))
            .values(receipt_id=receipt_id)
        )
        done += result.rowcount
    if done != len(have):
        raise ValidationError(f"receipt {receipt_id}: some events are billed by another receipt already")
    if new:
        conn.execute(event_billing.insert(), [
            {"event_id": i, "period_start": period_start, "adjustment_of": None, "receipt_id": receipt_id,
             "created_at": now} for i in new
        ])  # fmt: skip


# ---------------------------------------------------------------------------- periods
def _close(conn: Connection, start: int, period_s: int, now: float, by: str) -> dict[str, Any]:
    end = start + period_s
    watermark = closed_until(conn)
    if watermark is not None and end <= watermark:
        return {"start": start, "end": end, "status": "closed", "result": "exists", "events": 0}
    # the events the closing periods have now are theirs; a later one of them will be an adjustment
    stmt = (
        sa.select(usage_events.c.id, usage_events.c.started_at)
        .select_from(usage_events.outerjoin(event_billing, event_billing.c.event_id == usage_events.c.id))
        .where(event_billing.c.event_id.is_(None), usage_events.c.outcome == "ok", usage_events.c.started_at < end)
    )  # fmt: skip
    if watermark is not None:
        stmt = stmt.where(usage_events.c.started_at >= watermark)
    stamped = [
        {"event_id": r.id, "period_start": period_of(r.started_at, period_s), "adjustment_of": None,
         "receipt_id": None, "created_at": now}
        for r in conn.execute(stmt)
    ]  # fmt: skip
    for part in _chunks(stamped):
        conn.execute(event_billing.insert(), list(part))
    closing = sorted({int(s["period_start"]) for s in stamped} | {start})
    have = {int(s) for (s,) in conn.execute(sa.select(periods.c.start).where(periods.c.start.in_(closing)))}
    conn.execute(periods.insert(), [
        {"start": s, "end": s + period_s, "closed_at": now, "closed_by": by} for s in closing if s not in have
    ])  # fmt: skip
    append_audit(conn, "period", {"start": start, "end": end, "closed_by": by, "periods": closing,
                                  "events": len(stamped)}, now=now)  # fmt: skip
    return {"start": start, "end": end, "status": "closed", "result": "created", "events": len(stamped)}


def close_period(
    engine: Engine, start: int, *, period_s: int, now: float | None = None, by: str = "manual"
) -> dict[str, Any]:
    """Close the period starting at ``start`` (and every earlier one). It must have ended; closing a
    closed period answers ``result: exists``. Its usage events so far are its own from now on."""
    now = time.time() if now is None else now
    if start % period_s:
        raise ValidationError(
            f"{start} is not the start of a period of {period_s} s",
            errors=[f"start: the period containing {start} starts at {period_of(start, period_s)}"],
        )
    if start + period_s > now:
        raise ValidationError(
            f"period {start} has not ended yet",
            errors=[f"start: the period ends at {start + period_s}, it is {int(now)} now"],
        )
    with engine.begin() as conn:
        billing_lock(conn)
        return _close(conn, int(start), period_s, now, by)


def close_due_periods(engine: Engine, *, now: float, period_s: int, grace_s: float) -> dict[str, Any] | None:
    """Close (``closed_by: auto``) the latest period that ended at least ``grace_s`` ago, with every
    earlier one; None when it is closed already."""
    start = period_of(now - grace_s - period_s, period_s)
    with engine.begin() as conn:
        billing_lock(conn)
        watermark = closed_until(conn)
        if watermark is not None and start + period_s <= watermark:
            return None
        return _close(conn, start, period_s, now, "auto")


def mark_adjustments(conn: Connection, *, now: float, period_s: int, agreement_id: str | None = None) -> int:
    """Mark the unmarked events of closed periods (they arrived after the close) as adjustments billed
    in the period open at ``now`` (of one agreement, or all); returns how many. Call under
    :func:`billing_lock`."""
    watermark = closed_until(conn)
    if watermark is None:
        return 0
    stmt = (
        sa.select(usage_events.c.id, usage_events.c.started_at)
        .select_from(usage_events.outerjoin(event_billing, event_billing.c.event_id == usage_events.c.id))
        .where(event_billing.c.event_id.is_(None), usage_events.c.outcome == "ok",
               usage_events.c.started_at < watermark)
    )  # fmt: skip
    if agreement_id is not None:
        stmt = stmt.where(usage_events.c.agreement_id == agreement_id)
    late = list(conn.execute(stmt))
    current = period_of(max(now, watermark), period_s)
    rows = [{"event_id": r.id, "period_start": current, "adjustment_of": period_of(r.started_at, period_s),
             "receipt_id": None, "created_at": now} for r in late]  # fmt: skip
    for part in _chunks(rows):
        conn.execute(event_billing.insert(), list(part))
    return len(rows)


def list_periods(
    engine: Engine, *, period_s: int, now: float | None = None, count: int = 30, before: float | None = None
) -> dict[str, Any]:
    """The ``count`` periods up to the current one (or to the one before ``before``), newest first:
    status (``open``: not ended; ``ended``: awaiting its close, late usage still counts as its own;
    ``closed``), when and how it closed, its events, how many are unbilled, adjustments billed in it,
    and its receipts."""
    now = time.time() if now is None else now
    last = period_of(now, period_s) if before is None else period_of(before, period_s) - period_s
    starts = [last - i * period_s for i in range(max(count, 0))]
    items = []
    with engine.connect() as conn:
        watermark = closed_until(conn)
        closed = {
            int(r.start): r for r in conn.execute(sa.select(periods).where(periods.c.start.in_(starts)))
        }
        for s in starts:
            in_period = (usage_events.c.outcome == "ok", usage_events.c.started_at >= s,
                         usage_events.c.started_at < s + period_s)  # fmt: skip
            events = conn.execute(sa.select(sa.func.count()).where(*in_period)).scalar() or 0
            unbilled = conn.execute(sa.select(sa.func.count()).select_from(_unbilled().where(
                *in_period).subquery())).scalar() or 0  # fmt: skip
            adjustments = conn.execute(sa.select(sa.func.count()).where(
                event_billing.c.period_start == s, event_billing.c.adjustment_of.is_not(None))).scalar() or 0  # fmt: skip
            issued = (
                conn.execute(sa.select(sa.func.count()).where(receipts.c.period_start == s)).scalar() or 0
            )
            if watermark is not None and s + period_s <= watermark:
                status = "closed"
            elif s + period_s > now:
                status = "open"
            else:
                status = "ended"
            row = closed.get(s)
            items.append({
                "start": s, "end": s + period_s, "status": status,
                "closedAt": row.closed_at if row is not None else None,
                "closedBy": row.closed_by if row is not None else None,
                "events": int(events), "unbilled": int(unbilled), "adjustments": int(adjustments),
                "receipts": int(issued),
            })  # fmt: skip
    return {"periodSeconds": period_s, "closedUntil": watermark, "items": items}


# ---------------------------------------------------------------------------- periodic receipts
def receipt_id_for(agreement_id: str, consumer: str, period_start: int, sequence: int) -> str:
    """Deterministic: every replica derives the same id for the same receipt."""
    digest = hashlib.sha256(f"{agreement_id}\n{consumer}\n{period_start}\n{sequence}".encode()).hexdigest()
    return f"receipt:{period_start}-{sequence}:{digest[:24]}"


def _issue_for(
    settlement: Settlement, agreement_id: str, consumer: str, terms: PriceTerms, *,
    now: float, period_s: int, every_events: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Under the billing lock: bill the agreement's unbilled events of closed periods (and of every
    period once ``every_events`` are unbilled), one receipt per period, in one transaction."""
    issued: list[dict[str, Any]] = []
    with settlement.engine.begin() as conn:
        billing_lock(conn)
        mark_adjustments(
            conn, now=now, period_s=period_s, agreement_id=agreement_id
        )  # came since the first pass
        watermark = closed_until(conn)
        rows = unbilled_events(conn, agreement_id=agreement_id, consumer=consumer)
        by_period: dict[int, list[Any]] = {}
        for r in rows:
            billed_in = int(r.b_period) if r.b_period is not None else period_of(r.started_at, period_s)
            by_period.setdefault(billed_in, []).append(r)
        all_due = every_events > 0 and len(rows) >= every_events
        for start in sorted(by_period):
            closed = watermark is not None and start + period_s <= watermark
            if not (closed or all_due):
                continue
            group = by_period[start]
            earlier = conn.execute(sa.select(sa.func.count()).where(
                receipts.c.agreement_id == agreement_id, receipts.c.period_start == start)).scalar() or 0  # fmt: skip
            if terms.unit_of_count == UnitOfCount.LUMP_SUM:
                fixed_due = not conn.execute(
                    sa.select(receipts.c.id).where(receipts.c.agreement_id == agreement_id).limit(1)
                ).first()
            else:
                fixed_due = earlier == 0
            sequence = int(earlier) + 1
            rid = receipt_id_for(agreement_id, consumer, start, sequence)
            if conn.execute(sa.select(receipts.c.id).where(receipts.c.id == rid)).first():
                issued.append({"id": rid, "agreement": agreement_id, "period": start, "sequence": sequence,
                               "result": "exists"})  # fmt: skip
                continue
            adjustments = {r.id: int(r.adjustment_of) for r in group if r.adjustment_of is not None}
            receipt = make_period_receipt(
                agreement_id, (float(start), float(start + period_s)), [event_of(r) for r in group], adjustments,
                terms, sequence=sequence, fixed_fee_due=fixed_due,
            )  # fmt: skip
            ids = sorted(r.id for r in group)
            doc = {
                "id": rid,
                "provider": settlement.did,
                "consumer": consumer,
                "receipt": asdict(receipt),
                "event_ids": ids,
                "provider_signature": settlement.sign(receipt.payload()),
            }
            conn.execute(
                receipts.insert().values(
                    id=rid, agreement_id=agreement_id, counterparty=consumer, body=json.dumps(doc["receipt"]),
                    event_ids=json.dumps(ids), provider_signature=doc["provider_signature"], status="issued",
                    reserve_ref=None, created_at=now, period_start=start, sequence=sequence,
                )
            )  # fmt: skip
            bill_events(conn, rid, group, period_start=start, now=now)
            append_audit(
                conn, "receipt", {"id": rid, "receipt": doc["receipt"], "signed": "provider"}, now=now
            )
            issued.append({"id": rid, "agreement": agreement_id, "period": start, "sequence": sequence,
                           "result": "created", "amount": receipt.amount, "events": receipt.event_count,
                           "adjustments": len(adjustments), "document": doc})  # fmt: skip
    return issued


def _due_pairs(engine: Engine, *, every_events: int) -> list[tuple[str, str]]:
    """(agreement, consumer) with unbilled events in closed periods, or with at least ``every_events``."""
    with engine.connect() as conn:
        watermark = closed_until(conn)
        pairs: set[tuple[str, str]] = set()
        if watermark is not None:
            stmt = (
                sa.select(usage_events.c.agreement_id, usage_events.c.consumer).distinct()
                .select_from(usage_events.join(event_billing, event_billing.c.event_id == usage_events.c.id))
                .where(event_billing.c.receipt_id.is_(None), event_billing.c.period_start < watermark,
                       usage_events.c.outcome == "ok")
            )  # fmt: skip
            pairs |= {(r.agreement_id, r.consumer) for r in conn.execute(stmt)}
        if every_events > 0:
            sub = _unbilled().subquery()
            stmt2 = (
                sa.select(sub.c.agreement_id, sub.c.consumer)
                .group_by(sub.c.agreement_id, sub.c.consumer)
                .having(sa.func.count() >= every_events)
            )
            pairs |= {(r.agreement_id, r.consumer) for r in conn.execute(stmt2)}
    return sorted(pairs)


def issue_due_receipts(
    settlement: Settlement, *, period_s: int, price_for: PriceFor, now: float | None = None,
    every_events: int = 0, grace_s: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Housekeeping: close the period that ended ``grace_s`` ago (None: only closes by hand), mark late
    events as adjustments, and issue every receipt that is due (see the module doc). Idempotent and safe
    to run on several replicas at once.

    ``price_for(agreement id, consumer DID)`` gives the agreement's price (None: not billed; its events
    wait). Returns ``{"closed", "adjustments", "issued": [...], "unpriced": [agreement ids]}``; each
    issued item carries the signed ``document`` (what :meth:`Settlement.receipt_document` returns).
    """
    now = time.time() if now is None else now
    closed = close_due_periods(settlement.engine, now=now, period_s=period_s, grace_s=grace_s) \
        if grace_s is not None else None  # fmt: skip
    with settlement.engine.begin() as conn:
        billing_lock(conn)
        marked = mark_adjustments(conn, now=now, period_s=period_s)
    issued: list[dict[str, Any]] = []
    unpriced: list[str] = []
    for agreement_id, consumer in _due_pairs(settlement.engine, every_events=every_events):
        terms = price_for(agreement_id, consumer)
        if terms is None:
            unpriced.append(agreement_id)
            continue
        issued += _issue_for(settlement, agreement_id, consumer, terms, now=now, period_s=period_s,
                             every_events=every_events)  # fmt: skip
    return {"closed": closed, "adjustments": marked, "issued": issued, "unpriced": unpriced}
