"""Settlement: prepaid balances, reservations at transfer start, receipts signed by both, statements.

Provider side (:class:`Settlement` with the provider's key):

1. ``deposit`` records money the consumer paid in (from the ``deposits`` account into its
   ``prepaid:<did>`` account, which may never go below zero);
2. ``reserve`` puts a pending transfer from the prepaid account to ``revenue`` when a transfer
   starts (two-phase: nothing is spent yet);
3. ``issue_receipt`` prices the agreement's usage events for a period, signs the receipt (JWS over
   RFC 8785 JSON, with a Merkle root of the event ids) and stores it;
4. ``settle`` takes the consumer's countersignature, verifies it and posts the reservation for the
   receipt's amount (the rest is released); a dispute stores the differing event ids instead.

Consumer side: :func:`countersign` checks the provider's signature and compares the receipt with
the consumer's own metering; it signs only when both agree, else it names the differing events.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.errors import DadamError, LedgerError, NotFoundError, ValidationError
from metering._audit import Checkpoint, append_audit
from metering._ledger import Account, AccountFlags, Ledger, Result, Transfer, TransferFlags
from metering._periods import bill_events, billing_lock, event_of, unbilled_events
from metering._tables import checkpoints, receipts
from metering._usage import (
    PriceTerms,
    Receipt,
    UsageEvent,
    compare_receipt,
    make_receipt,
    query_usage_events,
    split_revenue,
)

__all__ = ["Settlement", "countersign"]

Sign = Callable[[bytes], str]
#: verify(signature, payload, signer_did) -> True, or raise / False
Verify = Callable[[str, bytes, str], bool]


def _verifies(verify: Verify, signature: str, payload: bytes, did: str) -> bool:
    """A verifier may answer False or raise (bad signature, unknown key): both mean 'no'."""
    try:
        return bool(verify(signature, payload, did))
    except DadamError:
        return False


def _receipt_from(body: dict[str, Any]) -> Receipt:
    fields = {k: body[k] for k in Receipt.__dataclass_fields__ if k in body}
    return Receipt(**fields)


def countersign(
    document: dict[str, Any], own_events: Sequence[Any], *, sign: Sign, verify: Verify
) -> dict[str, Any]:
    """Consumer: ``{"signature": ...}`` when the receipt matches our metering, else ``{"dispute": [...]}``.

    ``own_events``: our events of the agreement not billed by another receipt we countersigned
    (:meth:`Settlement.own_unbilled_events`). A periodic receipt (it has a ``sequence``) bills part of
    them: only events it bills that we did not meter (or already paid for) are disputed.
    """
    receipt = _receipt_from(document["receipt"])
    if not _verifies(verify, document["provider_signature"], receipt.payload(), document["provider"]):
        raise ValidationError("the provider's signature on the receipt does not verify")
    differing = compare_receipt(receipt, document["event_ids"], own_events, complete=receipt.sequence is None)
    answer: dict[str, Any] = {"dispute": differing} if differing else {"signature": sign(receipt.payload())}
    answer |= _witness(document.get("checkpoint"), str(document["provider"]), sign=sign, verify=verify)
    return answer


def _checkpoint_of(data: Any) -> Checkpoint | None:
    if not isinstance(data, dict):
        return None
    try:
        return Checkpoint(int(data["size"]), str(data["root"]), str(data["signature"]))
    except (KeyError, TypeError, ValueError):
        return None


def _witness(data: Any, provider: str, *, sign: Sign, verify: Verify) -> dict[str, Any]:
    """Consumer: cosign the provider's audit checkpoint sent with a receipt, if its signature holds.

    The cosignature says "we saw your log with this many entries and this Merkle root": the provider
    can no longer rewrite any entry before it without the copy we keep disagreeing."""
    if data is None:
        return {}
    cp = _checkpoint_of(data)
    if cp is None:
        return {"checkpoint_error": "malformed checkpoint: size, root and signature are required"}
    if not _verifies(verify, cp.signature, cp.payload(), provider):
        return {"checkpoint_error": "the provider's signature on the checkpoint does not verify"}
    return {"checkpoint_cosignature": sign(cp.payload())}


log = logging.getLogger("dadam.bank")


class Settlement:
    """The provider's side of the data bank for its consumers."""

    REVENUE = "revenue"
    DEPOSITS = "deposits"

    def __init__(
        self,
        ledger: Ledger,
        *,
        did: str,
        sign: Sign,
        currency: str = "EUR",
        shares_for: Callable[[str, str], Sequence[tuple[str, int]]] | None = None,
    ) -> None:
        #: shares_for(agreement id, consumer DID): revenue shares of its price plan (empty: none)
        self.shares_for = shares_for
        self.ledger = ledger
        self.engine: Engine = ledger.engine
        self.did = did
        self.sign = sign
        self.currency = currency
        ledger.create_accounts([Account(self.REVENUE, currency), Account(self.DEPOSITS, currency)])

    @staticmethod
    def prepaid(party: str) -> str:
        return f"prepaid:{party}"

    def _check(self, result: Result, what: str) -> None:
        if not result.ok:
            raise LedgerError(f"{what}: {result}", code=str(result))

    def deposit(self, party: str, amount: int, ref: str | None = None) -> dict[str, Any]:
        """Money ``party`` paid in (minor units); idempotent on ``ref``."""
        self.ledger.create_accounts(
            [Account(self.prepaid(party), self.currency, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)]
        )
        tid = ref or f"deposit:{uuid.uuid4()}"
        self._check(
            self.ledger.create_transfer(
                Transfer(tid, self.DEPOSITS, self.prepaid(party), amount, self.currency)
            ),
            "deposit",
        )
        return self.ledger.account(self.prepaid(party)).to_dict()

    def reserve(self, ref: str, party: str, amount: int, *, timeout_s: int = 0) -> Result:
        """A pending transfer prepaid -> revenue (e.g. at transfer start); ``exceeds_credits`` if unfunded."""
        t = Transfer(f"reserve:{ref}", self.prepaid(party), self.REVENUE, amount, self.currency,
                     flags=TransferFlags.PENDING, timeout_s=timeout_s)  # fmt: skip
        return self.ledger.create_transfer(t)

    def issue_receipt(
        self, agreement_id: str, party: str, terms: PriceTerms, *, period: tuple[float, float] | None = None,
        reserve_ref: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Price and sign the agreement's usage for ``period`` (default: everything so far) that no other
        receipt bills yet (the events are then billed by this one)."""
        start, end = period or (0.0, time.time() + 1)
        with self.engine.begin() as conn:
            billing_lock(conn)
            rows = unbilled_events(conn, agreement_id=agreement_id, since=start, until=end)
            events = [event_of(r) for r in rows]
            receipt = make_receipt(agreement_id, (start, end), events, terms)
            ids = sorted(e.id for e in events)
            rid = f"receipt:{uuid.uuid4()}"
            doc = {
                "id": rid,
                "provider": self.did,
                "consumer": party,
                "receipt": asdict(receipt),
                "event_ids": ids,
                "provider_signature": self.sign(receipt.payload()),
            }
            bill_events(conn, rid, rows, period_start=None, now=time.time())
            conn.execute(
                receipts.insert().values(
                    id=doc["id"], agreement_id=agreement_id, counterparty=party, body=json.dumps(doc["receipt"]),
                    event_ids=json.dumps(ids), provider_signature=doc["provider_signature"], status="issued",
                    reserve_ref=reserve_ref, created_at=time.time(),
                )
            )  # fmt: skip
            append_audit(conn, "receipt", {"id": doc["id"], "receipt": doc["receipt"], "signed": "provider"})
        return doc

    def receipts(
        self, *, agreement_id: str | None = None, party: str | None = None, period_start: int | None = None,
        offset: int = 0, limit: int = 100,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Receipts (issued or answered here), oldest first, with the period they bill."""
        stmt = sa.select(receipts).order_by(receipts.c.created_at, receipts.c.id).offset(offset).limit(limit)
        if agreement_id is not None:
            stmt = stmt.where(receipts.c.agreement_id == agreement_id)
        if party is not None:
            stmt = stmt.where(receipts.c.counterparty == party)
        if period_start is not None:
            stmt = stmt.where(receipts.c.period_start == period_start)
        with self.engine.connect() as conn:
            rows = list(conn.execute(stmt).mappings())
        items = []
        for r in rows:
            body = json.loads(r["body"])
            items.append({
                "id": r["id"], "agreement": r["agreement_id"], "counterparty": r["counterparty"],
                "status": r["status"], "period": {"start": body["period_start"], "end": body["period_end"]},
                "sequence": r["sequence"], "amount": body["amount"], "currency": body["currency"],
                "events": body["event_count"], "adjustments": body.get("adjustments"),
                "signedBy": "both" if r["consumer_signature"] else "provider", "createdAt": r["created_at"],
                "dispute": json.loads(r["dispute"]) if r["dispute"] else None,
            })  # fmt: skip
        return items

    def own_unbilled_events(
        self, agreement_id: str, provider: str, *, except_receipt: str | None = None
    ) -> list[UsageEvent]:
        """Consumer: our events of the agreement that no receipt of ``provider`` we countersigned bills
        (``except_receipt``: leave that one out, so answering the same receipt again gives the same answer)."""
        with self.engine.connect() as conn:
            paid = conn.execute(
                sa.select(receipts.c.id, receipts.c.event_ids).where(
                    receipts.c.counterparty == provider, receipts.c.agreement_id == agreement_id,
                    receipts.c.status == "countersigned",
                )
            ).all()  # fmt: skip
        billed = {i for r in paid if r.id != except_receipt for i in json.loads(r.event_ids)}
        return [e for e in query_usage_events(self.engine, agreement_id=agreement_id) if e.id not in billed]

    def receipt_document(self, receipt_id: str) -> dict[str, Any]:
        """The signed receipt document as issued (what the consumer is sent)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(receipts).where(receipts.c.id == receipt_id)).mappings().first()
            latest = conn.execute(
                sa.select(checkpoints.c.size, checkpoints.c.root, checkpoints.c.signature)
                .order_by(checkpoints.c.size.desc())
                .limit(1)
            ).first()
        if row is None:
            raise NotFoundError(f"no receipt {receipt_id!r}")
        document: dict[str, Any] = {
            "id": row["id"],
            "provider": self.did,
            "consumer": row["counterparty"],
            "receipt": json.loads(row["body"]),
            "event_ids": json.loads(row["event_ids"]),
            "provider_signature": row["provider_signature"],
        }
        if latest is not None:  # our newest signed tree head, for the consumer to cosign
            document["checkpoint"] = {
                "size": int(latest.size),
                "root": latest.root,
                "signature": latest.signature,
            }
        return document

    def record_cosignature(self, document: dict[str, Any], answer: dict[str, Any], verify: Verify) -> bool:
        """Provider: keep the consumer's cosignature of the checkpoint sent with ``document``."""
        cp = _checkpoint_of(document.get("checkpoint"))
        cosig = answer.get("checkpoint_cosignature")
        consumer = str(document["consumer"])
        if cp is None or not isinstance(cosig, str) or not _verifies(verify, cosig, cp.payload(), consumer):
            return False
        with self.engine.begin() as conn:
            current = conn.execute(
                sa.select(checkpoints.c.cosignature).where(checkpoints.c.size == cp.size)
            ).scalar()
            if current is None:
                return False
            cosigs = json.loads(current) if current else {}
            cosigs[consumer] = cosig
            conn.execute(
                checkpoints.update()
                .where(checkpoints.c.size == cp.size)
                .values(cosignature=json.dumps(cosigs, sort_keys=True))
            )
            append_audit(conn, "checkpoint_cosigned", {"size": cp.size, "root": cp.root, "by": consumer})
        return True

    def settle(self, receipt_id: str, answer: dict[str, Any], verify: Verify) -> dict[str, Any]:
        """Apply the consumer's answer: post the reservation with its countersignature, or record the dispute."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(receipts).where(receipts.c.id == receipt_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no receipt {receipt_id!r}")
        if row["status"] != "issued":
            raise LedgerError(f"receipt {receipt_id} is already {row['status']}", code="receipt_closed")
        receipt = _receipt_from(json.loads(row["body"]))
        if "dispute" in answer:
            with self.engine.begin() as conn:
                conn.execute(receipts.update().where(receipts.c.id == receipt_id).values(
                    status="disputed", dispute=json.dumps(answer["dispute"])))  # fmt: skip
                append_audit(conn, "dispute", {"id": receipt_id, "event_ids": answer["dispute"]})
            return {"status": "disputed", "event_ids": answer["dispute"]}
        signature = str(answer.get("signature") or "")
        if not _verifies(verify, signature, receipt.payload(), row["counterparty"]):
            raise ValidationError("the consumer's countersignature does not verify")
        if row["reserve_ref"]:
            post = Transfer(f"settle:{receipt_id}", "", "", receipt.amount, self.currency,
                            flags=TransferFlags.POST_PENDING, pending_id=f"reserve:{row['reserve_ref']}")  # fmt: skip
        else:
            post = Transfer(
                f"settle:{receipt_id}",
                self.prepaid(row["counterparty"]),
                self.REVENUE,
                receipt.amount,
                self.currency,
            )
        if receipt.amount:
            shares = (
                list(self.shares_for(receipt.agreement_id, row["counterparty"])) if self.shares_for else []
            )
            batch = [post]
            if shares:  # contributors' parts leave our revenue account in the same linked batch
                parts = split_revenue(receipt.amount, dict(shares))
                self.ledger.create_accounts(
                    [Account(f"revenue:{did}", self.currency) for did in sorted(parts)]
                )
                post = replace(post, flags=post.flags | TransferFlags.LINKED)
                moves = [
                    Transfer(f"share:{receipt_id}:{did}", self.REVENUE, f"revenue:{did}", part, self.currency,
                             flags=TransferFlags.LINKED)
                    for did, part in sorted(parts.items()) if part > 0
                ]  # fmt: skip
                if moves:
                    moves[-1] = replace(moves[-1], flags=TransferFlags(0))
                    batch = [post, *moves]
                else:
                    batch = [replace(post, flags=post.flags & ~TransferFlags.LINKED)]
            for result in self.ledger.create_transfers(batch):
                self._check(result, "settlement")
        with self.engine.begin() as conn:
            conn.execute(receipts.update().where(receipts.c.id == receipt_id).values(
                status="settled", consumer_signature=signature))  # fmt: skip
            append_audit(
                conn, "receipt", {"id": receipt_id, "signed": "both", "consumer_signature": signature}
            )
        return {"status": "settled", "amount": receipt.amount, "currency": receipt.currency}

    # ------------------------------------------------------------------ consumer side
    def record_countersigned(self, document: dict[str, Any], answer: dict[str, Any]) -> None:
        """Consumer: remember a receipt we answered (to check the provider's statements later)."""
        status = "countersigned" if "signature" in answer else "disputed-by-us"
        with self.engine.begin() as conn:
            if conn.execute(sa.select(receipts.c.id).where(receipts.c.id == document["id"])).first():
                return
            conn.execute(
                receipts.insert().values(
                    id=document["id"], agreement_id=str(document["receipt"]["agreement_id"]),
                    counterparty=document["provider"], body=json.dumps(document["receipt"]),
                    event_ids=json.dumps(document["event_ids"]), provider_signature=document["provider_signature"],
                    consumer_signature=answer.get("signature"), status=status,
                    dispute=json.dumps(answer["dispute"]) if "dispute" in answer else None, reserve_ref=None,
                    created_at=time.time(),
                )
            )  # fmt: skip
            append_audit(conn, "receipt", {"id": document["id"], "answered": status})
            if "checkpoint_cosignature" in answer:
                cp = document["checkpoint"]
                append_audit(conn, "witnessed_checkpoint", {
                    "provider": document["provider"], "size": cp["size"], "root": cp["root"],
                    "signature": cp["signature"], "cosignature": answer["checkpoint_cosignature"]})  # fmt: skip

    def send_period_statements(
        self,
        *,
        period_s: int,
        address_of: Callable[[str], str | None],
        exchange: Callable[[str, str, dict[str, Any]], dict[str, Any]],
        verify: Verify,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """Provider: for every closed period whose receipts to a counterparty are all answered, send
        that counterparty its statement of the period (once; an unreachable one again next time)
        and keep it with the countersignature or the dispute. ``address_of(agreement id)``: the
        counterparty's DSP address."""
        from connector.identity import canonical_json
        from metering._periods import closed_until
        from metering._tables import statements

        with self.engine.connect() as conn:
            watermark = closed_until(conn)
            if watermark is None:
                return []
            rows = conn.execute(
                sa.select(
                    receipts.c.counterparty,
                    receipts.c.period_start,
                    receipts.c.status,
                    receipts.c.agreement_id,
                ).where(receipts.c.period_start.is_not(None), receipts.c.period_start + period_s <= watermark)
            ).all()
            done = {
                (r.party, int(r.period_start))
                for r in conn.execute(sa.select(statements.c.party, statements.c.period_start))
            }
        due: dict[tuple[str, int], list[Any]] = {}
        for r in rows:
            due.setdefault((r.counterparty, int(r.period_start)), []).append(r)
        out = []
        for (party, start), lines in sorted(due.items(), key=lambda kv: kv[0][1])[: limit * 4]:
            if (party, start) in done or any(r.status == "issued" for r in lines):
                continue
            address = next((a for a in (address_of(r.agreement_id) for r in lines) if a), None)
            if address is None:
                continue
            document = self.statement(party, period_start=start, period_s=period_s)
            try:
                answer = exchange(address, party, document)
            except DadamError as exc:
                log.warning("statement of %s for period %s not exchanged yet: %s", party, start, exc.message)
                continue
            signature = answer.get("signature")
            if signature is not None and not _verifies(
                verify, str(signature), canonical_json(document["statement"]), party
            ):
                log.warning("statement of %s: the countersignature does not verify", party)
                continue
            with self.engine.begin() as conn:
                if conn.execute(sa.select(statements.c.party).where(
                        statements.c.party == party, statements.c.period_start == start)).first():  # fmt: skip
                    continue
                conn.execute(statements.insert().values(
                    party=party, period_start=start, body=json.dumps(document["statement"]),
                    provider_signature=document["provider_signature"], consumer_signature=signature,
                    dispute=None if signature else json.dumps(answer.get("dispute", [])), created_at=time.time()))  # fmt: skip
                append_audit(conn, "statement", {"party": party, "period_start": start,
                                                 "signedBy": "both" if signature else "provider"})  # fmt: skip
            out.append(
                {"party": party, "period_start": start, "signedBy": "both" if signature else "provider"}
            )
            if len(out) >= limit:
                break
        return out

    def stored_statements(self, party: str | None = None) -> list[dict[str, Any]]:
        from metering._tables import statements

        stmt = sa.select(statements).order_by(statements.c.period_start)
        if party is not None:
            stmt = stmt.where(statements.c.party == party)
        with self.engine.connect() as conn:
            return [
                {"party": r["party"], "periodStart": r["period_start"], "statement": json.loads(r["body"]),
                 "provider_signature": r["provider_signature"], "consumer_signature": r["consumer_signature"],
                 "dispute": json.loads(r["dispute"]) if r["dispute"] else None,
                 "signedBy": "both" if r["consumer_signature"] else "provider"}
                for r in conn.execute(stmt).mappings()
            ]  # fmt: skip

    def countersign_statement(self, document: dict[str, Any], verify: Verify) -> dict[str, Any]:
        """Consumer: countersign a provider's statement if every settled line is a receipt we countersigned
        with the same amount; else name the lines we disagree with."""
        from connector.identity import canonical_json

        body = document["statement"]
        if not _verifies(verify, document["provider_signature"], canonical_json(body), body["provider"]):
            raise ValidationError("the provider's signature on the statement does not verify")
        with self.engine.connect() as conn:
            mine = {r["id"]: r for r in conn.execute(sa.select(receipts).where(
                receipts.c.counterparty == body["provider"])).mappings()}  # fmt: skip
        problems = []
        for line in body["lines"]:
            if line["status"] != "settled":
                continue
            local = mine.get(line["receipt"])
            if local is None or local["status"] != "countersigned":
                problems.append(f"{line['receipt']}: we did not countersign this receipt")
            elif json.loads(local["body"])["amount"] != line["amount"]:
                problems.append(
                    f"{line['receipt']}: amount {line['amount']} differs from the receipt we signed"
                )
        if problems:
            return {"dispute": problems}
        return {"signature": self.sign(canonical_json(body))}

    def statement(
        self, party: str, *, period_start: int | None = None, period_s: int | None = None
    ) -> dict[str, Any]:
        """Every receipt of ``party`` (of one accounting period when ``period_start`` is given) with
        status and amounts, the balances, signed by us."""
        stmt = sa.select(receipts).where(receipts.c.counterparty == party)
        if period_start is not None:
            stmt = stmt.where(receipts.c.period_start == period_start)
        with self.engine.connect() as conn:
            rows = list(conn.execute(stmt.order_by(receipts.c.created_at)).mappings())
        lines = [
            {"receipt": r["id"], "agreement": r["agreement_id"], "status": r["status"],
             "amount": json.loads(r["body"])["amount"], "signedBy": "both" if r["consumer_signature"] else "provider"}
            for r in rows
        ]  # fmt: skip
        account = self.ledger.account(self.prepaid(party)).to_dict()
        body = {
            "type": "dadam:SettlementStatement",
            "provider": self.did,
            "consumer": party,
            "currency": self.currency,
            "lines": lines,
            "settled": sum(x["amount"] for x in lines if x["status"] == "settled"),
            "prepaidBalance": account["balance"],
            "reserved": account["debits_pending"],
            "issuedAt": int(time.time()),
        }
        if period_start is not None:
            body["period"] = {"start": period_start, "end": period_start + int(period_s or 0)}
        from connector.identity import canonical_json

        return {"statement": body, "provider_signature": self.sign(canonical_json(body))}
