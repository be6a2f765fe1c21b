"""Wires the packages into a running connector: identity adapters and the negotiation manager.

Kept apart from :mod:`connector.app` so that embedding code and tests can build the same pieces.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx

from connector.identity import Identity, IdentityService
from connector.runtime import Runtime
from connector.store import read_only
from contracts import NegotiationConfig, NegotiationManager, RetryPolicy
from contracts._signing import DidWebKeyResolver

log = logging.getLogger("dadam.wiring")

__all__ = [
    "IdentitySigner",
    "agreement_lookup",
    "bank_worker",
    "build_negotiations",
    "build_pushes",
    "build_transfers",
    "did_verifier",
    "due_receipts",
    "install_signaling",
    "prepaid_account_exists",
    "price_lookup",
    "receipt_exchange",
    "reserve_at_transfer_start",
    "s3_config",
    "shares_lookup",
    "thread_worker",
]


class IdentitySigner:
    """The contracts ``Signer`` protocol over our :class:`~connector.identity.Identity` (DID key)."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity

    @property
    def did(self) -> str:
        return self._identity.did

    @property
    def kid(self) -> str:
        return self._identity.kid

    def sign_detached(self, payload: bytes) -> str:
        return self._identity.sign_jws(payload, detached=True)

    def public_jwk(self) -> dict[str, Any]:
        current = self._identity.kid
        for pk in self._identity.public_keys():
            if pk.id == current:
                return dict(pk.jwk)
        raise LookupError(current)  # pragma: no cover - the current key is always listed


def build_negotiations(runtime: Runtime, **overrides: Any) -> NegotiationManager:
    """The negotiation manager of ``runtime`` (identity required: agreements are signed)."""
    settings = runtime.settings
    identity = runtime.identity
    if not isinstance(identity, IdentityService):
        raise TypeError("negotiations need the runtime's IdentityService")

    signal_auth = None
    if settings.dataplane_signaling_url and settings.dataplane_signaling_secret is not None:
        from connector.dataplane._signal_auth import CONTROL_PLANE, SignalAuth

        signal_auth = SignalAuth(
            settings.dataplane_signaling_secret.get_secret_value().encode(), CONTROL_PLANE
        )

    def auth_for(peer: str | None) -> httpx.Auth | None:
        if (
            signal_auth is not None and peer == "urn:dadam:dataplane-signaling"
        ):  # contracts._dataflow.AUDIENCE
            return signal_auth
        return identity.auth_for(peer) if peer else None

    kwargs: dict[str, Any] = {
        "offers": runtime.catalog,
        "signer": IdentitySigner(identity.identity),
        "keys": DidWebKeyResolver(allow_http=settings.did_web_allow_http),
        "auth_for": auth_for,
        "direct_http": settings.dsp_sender == "direct",
        "claims_for": identity.partners.claims_for,
        "retry": RetryPolicy(limit=settings.send_retry_limit, base_s=settings.send_retry_base_ms / 1000),
        "lease_s": float(settings.lease_seconds),
        "batch_size": settings.worker_batch_size,
        "poll_s": settings.worker_poll_ms / 1000,
    }
    kwargs.update(overrides)
    config = kwargs.pop(
        "config",
        NegotiationConfig(
            participant_id=settings.did,
            dsp_base_url=settings.dsp_base_url,
            state_timeout_s=float(settings.state_timeout_seconds),
            manual_approval=settings.negotiation_manual_approval,
            # Consumer choices (settings DADAM_NEGOTIATION_COUNTER_OFFERS / _INITIAL_OFFERS when present).
            accept_counter_offers=settings.negotiation_counter_offers,
            accept_initial_offers=settings.negotiation_initial_offers,
        ),
    )
    return NegotiationManager(runtime.engine, config, **kwargs)


def thread_worker(start: Callable[[], None], stop: Callable[[], None]) -> Callable[[], Any]:
    """An async runtime worker around a thread-based start/stop pair (runs until cancelled)."""

    async def worker() -> None:
        start()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.to_thread(stop)

    return worker


def s3_config(settings: Any) -> Any:
    """This connector's S3 endpoint (``DADAM_S3_*``), or None when none is configured."""
    from connector.dataplane import S3Config

    if not settings.s3_endpoint:
        return None
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else ""
    return S3Config(settings.s3_endpoint, settings.s3_access_key or "", secret, settings.s3_region)


def build_transfers(runtime: Runtime, negotiations: NegotiationManager) -> tuple[Any, Any]:
    """The transfer manager (sharing the negotiation worker) and the data plane's EDR service."""
    from connector.dataplane import EdrService
    from contracts._transfer import TransferManager

    identity = runtime.identity
    if not isinstance(identity, IdentityService):
        raise TypeError("transfers need the runtime's IdentityService")
    settings = runtime.settings
    edr = EdrService(
        identity.identity, settings.dataplane_url, ttl_seconds=settings.edr_ttl_seconds, engine=runtime.engine
    )

    def formats_for(dataset_id: str) -> frozenset[str] | None:
        try:
            return frozenset(runtime.catalog_store.get_dataset(dataset_id).transfer_types)
        except Exception:  # the dataset was deleted: the request fails later with the reason
            return None

    manager = TransferManager(
        runtime.engine,
        participant_id=settings.did,
        dsp_base_url=settings.dsp_base_url,
        worker=negotiations.worker,
        edr=edr,
        state_timeout_s=float(settings.state_timeout_seconds),
        formats_for=formats_for,
    )
    return manager, edr


def prepaid_account_exists(rt: Runtime) -> Callable[[str], bool]:
    """Whether the data bank keeps a prepaid account for a consumer (compensate duties then bill in arrears)."""
    from connector.errors import LedgerError
    from metering import Ledger, Settlement

    def exists(did: str) -> bool:
        if not isinstance(rt.bank, Ledger):
            return False
        try:
            rt.bank.account(Settlement.prepaid(did))
        except LedgerError:
            return False
        return True

    return exists


def build_pushes(runtime: Runtime, manager: Any, cls: Any = None, **extra: Any) -> Any:
    """The provider's push worker (registers itself on the transfer manager's STARTED hook);
    ``cls`` / ``extra``: another PushService class and its own arguments (signaling mode)."""
    from connector.dataplane import PushService

    identity = runtime.identity
    assert isinstance(identity, IdentityService)
    settings = runtime.settings
    return (cls or PushService)(
        runtime.engine,
        runtime.catalog_store,
        manager,
        provider_did=settings.did,
        s3=s3_config(settings),
        claims_for=identity.partners.claims_for,
        account_open=prepaid_account_exists(runtime),
        retry_limit=settings.send_retry_limit,
        retry_base_s=settings.send_retry_base_ms / 1000,
        part_size=settings.push_part_bytes,
        lease_s=float(settings.lease_seconds),
        poll_s=settings.worker_poll_ms / 1000,
        **extra,
    )


def install_signaling(runtime: Runtime, manager: Any) -> Any:
    """Signaling mode on the control plane (decision 0452): provider transfers drive the data plane
    at ``DADAM_DATAPLANE_SIGNALING_URL`` over HTTP; the returned DataPlaneSignals takes its callbacks."""
    from contracts._dataflow import DataPlaneSignals

    settings = runtime.settings
    assert settings.dataplane_signaling_url
    return DataPlaneSignals(manager, settings.dataplane_signaling_url, settings.signaling_callback_url)


def did_verifier(allow_http: bool) -> Callable[[str, bytes, str], bool]:
    """verify(detached JWS, payload, signer DID): resolves the signer's did:web key (cached)."""
    from connector.errors import TokenError
    from connector.identity import PublicKey, verify_jws

    resolver = DidWebKeyResolver(allow_http=allow_http)

    def verify(signature: str, payload: bytes, did: str) -> bool:
        def key(d: str, kid: str) -> PublicKey:
            full = kid if kid.startswith("did:") else f"{d}#{kid.split('#')[-1]}"
            jwk = resolver.public_jwk(full)
            if jwk is None:
                raise TokenError(f"cannot find key {full}")
            return PublicKey(id=full, controller=d, jwk=jwk)

        return verify_jws(signature, key_resolver=key, expected_did=did, detached_payload=payload) == payload

    return verify


def agreement_lookup(runtime: Runtime) -> Callable[[str], dict[str, Any] | None]:
    """The agreement (compact JSON) with this id, from either role's negotiation rows."""
    import orjson
    import sqlalchemy as sa

    from contracts._tables import negotiations

    def lookup(agreement_id: str) -> dict[str, Any] | None:
        with read_only(runtime.engine) as conn:
            raw = conn.execute(
                sa.select(negotiations.c.agreement)
                .where(negotiations.c.agreement_id == agreement_id)
                .limit(1)
            ).scalar()
        found: dict[str, Any] | None = orjson.loads(raw) if raw else None
        return found

    return lookup


def price_lookup(runtime: Runtime) -> Callable[[str, str], Any]:
    """price_for(agreement id, consumer DID): the agreement's compensate duty as metering PriceTerms
    (the policy engine reads the duty; None when the agreement has no price)."""
    import usage_policy as up
    from metering import price_terms_from_engine

    lookup = agreement_lookup(runtime)

    def price_for(agreement_id: str, party: str) -> Any:
        agreement = lookup(agreement_id)
        if agreement is None:
            return None
        identity = runtime.identity
        claims = identity.partners.claims_for(party) if isinstance(identity, IdentityService) else {}
        rules: dict[str, Any] = {
            k: agreement[k] for k in ("permission", "prohibition", "obligation") if k in agreement
        }
        decision = up.evaluate(
            up.parse_policy({"@type": "Set", **rules}),
            up.Scope.NEGOTIATION,
            up.EvaluationContext(
                did=party,
                memberships=frozenset(claims.get("memberships") or ()),
                framework_agreements=frozenset(claims.get("framework_agreements") or ()),
                purpose=claims.get("purpose"),
                claims=claims,
            ),
        )
        terms = [t for t in decision.price_terms if t.mode != "revenue_share"]
        if not terms:
            return None
        if terms[0].mode == "price_plan":  # our own plan, by link and hash: bill only if unchanged
            from connector.errors import DadamError
            from metering._priceplan import verify_reference

            try:
                return verify_reference(runtime.engine, str(terms[0].plan))
            except DadamError as exc:
                log.warning("agreement %s is not billed: %s", agreement_id, exc.message)
                return None
        return price_terms_from_engine(terms[0])

    return price_for


def shares_lookup(runtime: Runtime) -> Callable[[str, str], Any]:
    """shares_for(agreement id, consumer DID): the revenue shares of the agreement's price plan."""
    price_for = price_lookup(runtime)

    def shares_for(agreement_id: str, consumer: str) -> Any:
        terms = price_for(agreement_id, consumer)
        return getattr(terms, "shares", ()) if terms is not None else ()

    return shares_for


def bank_worker(
    ledger: Any,
    sign: Callable[[bytes], str],
    every_s: float,
    every_entries: int = 0,
    *,
    poll_s: float = 1.0,
    receipts: Callable[[], Any] | None = None,
) -> Callable[[], Any]:
    """Every ``every_s``: expire timed-out reservations, issue the usage receipts that are due
    (``receipts``: closed periods, agreements with N unbilled events) and sign a checkpoint of new
    audit entries.

    With ``every_entries`` > 0 it also looks every ``poll_s`` (two index lookups) and signs a
    checkpoint as soon as that many entries are unsigned, without waiting for the period.
    """
    from metering import make_checkpoint

    async def worker() -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time() + every_s
        poll_from = loop.time()  # entry polling pauses until the next round after a failure
        while True:
            wait = next_round - loop.time()
            if every_entries > 0 and loop.time() >= poll_from:
                wait = min(wait, poll_s)
            await asyncio.sleep(max(wait, 0.0))
            try:
                if loop.time() >= next_round:
                    next_round = loop.time() + every_s
                    await asyncio.to_thread(ledger.expire_pending)
                    # sign first: the receipts sent next carry this checkpoint for the consumer to cosign
                    await asyncio.to_thread(make_checkpoint, ledger.engine, sign)
                    if receipts is not None:
                        await asyncio.to_thread(receipts)
                elif every_entries > 0 and loop.time() >= poll_from:
                    await asyncio.to_thread(make_checkpoint, ledger.engine, sign, min_entries=every_entries)
            except Exception:  # logged and retried next round: the worker never dies silently
                poll_from = next_round
                log.exception("data bank housekeeping failed; retrying in %s s", every_s)

    return worker


def due_receipts(runtime: Runtime) -> Callable[[], Any]:
    """Issue the receipts that are due (provider side), as the bank worker calls it each round."""
    from metering import Ledger, Settlement
    from metering._periods import issue_due_receipts

    identity = runtime.identity
    assert isinstance(identity, IdentityService) and isinstance(runtime.bank, Ledger)
    ident = identity.identity
    settings = runtime.settings
    settlement = Settlement(
        runtime.bank,
        did=settings.did,
        sign=lambda p: ident.sign_jws(p, detached=True),
        shares_for=shares_lookup(runtime),
    )
    price_for = price_lookup(runtime)

    exchange = receipt_exchange(identity)
    exchange_statement = receipt_exchange(identity, "/bank/statements")
    verify = did_verifier(settings.did_web_allow_http)

    def consumer_address(agreement_id: str) -> str | None:
        import sqlalchemy as sa

        from contracts._tables import negotiations

        with read_only(runtime.engine) as conn:
            found = conn.execute(
                sa.select(negotiations.c.counterparty_address).where(
                    negotiations.c.role == "provider", negotiations.c.agreement_id == agreement_id
                )
            ).scalar()
        return str(found) if found else None

    def issue() -> Any:
        result = issue_due_receipts(
            settlement,
            period_s=settings.bank_period_seconds,
            price_for=price_for,
            every_events=settings.bank_receipt_events,
            grace_s=settings.bank_period_grace_seconds,
        )
        result["sent"] = send_issued_receipts(runtime, settlement, exchange, verify)
        result["statements"] = settlement.send_period_statements(
            period_s=settings.bank_period_seconds, address_of=consumer_address, exchange=exchange_statement,
            verify=verify,
        )  # fmt: skip
        return result

    return issue


def send_issued_receipts(
    runtime: Runtime, settlement: Any, exchange: Any, verify: Any, limit: int = 20
) -> list[dict[str, Any]]:
    """Send receipts we issued and the consumer has not answered yet to the consumer's connector
    (its DSP address is the one it negotiated the agreement from) and settle with the answer. A
    consumer that cannot be reached is tried again on the next round; nothing is lost."""
    import sqlalchemy as sa

    from contracts._tables import negotiations
    from metering._tables import receipts

    with read_only(runtime.engine) as conn:
        pending = conn.execute(
            sa.select(receipts.c.id, receipts.c.agreement_id, receipts.c.counterparty)
            .where(receipts.c.status == "issued")
            .order_by(receipts.c.created_at)
            .limit(limit)
        ).all()
        addresses = {
            r.agreement_id: r.counterparty_address
            for r in conn.execute(
                sa.select(negotiations.c.agreement_id, negotiations.c.counterparty_address).where(
                    negotiations.c.role == "provider",
                    negotiations.c.agreement_id.in_({p.agreement_id for p in pending}),
                )
            )
        } if pending else {}  # fmt: skip
    out = []
    for row in pending:
        address = addresses.get(row.agreement_id)
        if not address:
            continue  # issued by hand for an agreement we did not negotiate as provider
        try:
            document = settlement.receipt_document(row.id)
            answer = exchange(address, document["consumer"], document)
            settled = settlement.settle(row.id, answer, verify)
            settlement.record_cosignature(document, answer, verify)
            out.append({"id": row.id, **settled})
        except Exception as exc:  # the consumer is down or refused: try again next round
            log.warning("receipt %s not exchanged yet: %s", row.id, exc)
    return out


def reserve_at_transfer_start(transfers: Any, settlement: Any, settings: Any) -> None:
    """Two-phase payment for transfers: reserve at start, release when the peer terminates.

    A consumer with a prepaid account gets ``DADAM_BANK_RESERVATION_MINOR_UNITS`` reserved when its
    transfer starts (a pending ledger transfer ``reserve:<transfer id>``, expiring with the state
    timeout); if the balance does not cover it, the transfer is TERMINATED with that reason. A
    consumer without an account is not charged here (unpaid data). A receipt settles the reservation
    (``reserveRef`` = the transfer id); a termination by the peer releases it.
    """
    from metering import Result, Transfer, TransferFlags

    amount = int(settings.bank_reservation_minor_units)

    def before_start(transfer_id: str, consumer: str, agreement_id: str) -> str | None:
        try:
            settlement.ledger.account(settlement.prepaid(consumer))
        except Exception:
            return None  # no prepaid account: this exchange is not billed by the data bank
        result = settlement.reserve(
            transfer_id, consumer, amount, timeout_s=int(settings.state_timeout_seconds)
        )
        if result.ok:
            return None
        return f"the data bank could not reserve {amount} (minor units) from {consumer}'s prepaid account: {result}"

    def after_end(transfer_id: str) -> None:
        void = Transfer(f"release:{transfer_id}", "", "", 0, settlement.currency,
                        flags=TransferFlags.VOID_PENDING, pending_id=f"reserve:{transfer_id}")  # fmt: skip
        result = settlement.ledger.create_transfer(void)
        if result not in (Result.CREATED, Result.EXISTS, Result.PENDING_TRANSFER_NOT_FOUND,
                          Result.PENDING_TRANSFER_ALREADY_POSTED, Result.PENDING_TRANSFER_ALREADY_VOIDED,
                          Result.PENDING_TRANSFER_EXPIRED):  # fmt: skip
            log.warning("could not release the reservation of transfer %s: %s", transfer_id, result)

    transfers.before_start = before_start
    transfers.after_end = after_end


def receipt_exchange(
    identity: IdentityService, path: str = "/bank/receipts"
) -> Callable[[str, str, dict[str, Any]], dict[str, Any]]:
    """exchange(consumer DSP base, consumer DID, document) -> the consumer's answer, over a
    DCP-authenticated POST to ``<base><path>`` (``/bank/receipts`` or ``/bank/statements``)."""
    from connector.errors import RemoteProtocolError, TransportError

    def exchange(address: str, consumer: str, document: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = httpx.post(address.rstrip("/") + path, json=document,
                              auth=identity.auth_for(consumer), timeout=30)  # fmt: skip
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach the consumer's connector: {exc}") from None
        if resp.status_code >= 400:
            raise RemoteProtocolError(
                f"the consumer refused the receipt ({resp.status_code}): {resp.text[:300]}"
            )
        answer: dict[str, Any] = resp.json()
        return answer

    return exchange
