"""The negotiation driver: DSP messages in, durable state changes, outbox messages out.

:class:`NegotiationManager` is the only thing that touches the database for negotiations. Every
public method runs one transaction that locks the negotiation row, asks the sans-IO machine
(:func:`contracts._negotiation_states.handle`) whether the event is allowed, stores the new state
and puts any message for the peer into the outbox (:mod:`contracts._process`). The DSP ACK is
returned only after that commit; the :class:`~contracts._process.Worker` sends the outbox
afterwards, and its callbacks (:meth:`on_delivered`, :meth:`on_failed`, :meth:`on_timeout`)
move "-ING" states to "-ED" or to TERMINATED with a reason.

Reactions ("what do we do next") are decided here too, inside the same transaction:

* provider, on a ContractRequestMessage: resolve the offer (unknown -> 400), check the requested
  policy is within the offered one and evaluate the contract policy for the caller's verified
  identity and claims (:class:`PolicyDecider`); permitted -> agree (or park as *pending* for
  manual approval when ``manual_approval`` is set), denied -> terminate with the engine's
  explanation as the reason;
* provider, on ACCEPTED -> agree; on verification -> check the consumer's countersignature, finalize;
* consumer, on an offer -> accept when it is within what we asked for, else terminate with why
  (or wait for the operator with ``accept_counter_offers="manual"``); on a provider-initiated
  offer -> wait for the operator (or accept unconditional use with ``accept_initial_offers="auto"``);
* provider, on ACCEPTED of an offer it started -> evaluate the offer's contract policy for the
  caller's verified claims, agree or terminate with the engine's explanation;
  on an agreement -> check target, parties, policy and the provider's signature, countersign
  and verify; else terminate with the reason.

A conformance *script* (see :mod:`contracts.conformance`) can replace these reactions per dataset.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

import httpx
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector.errors import (
    ConflictError,
    DadamError,
    LocalProtocolError,
    NotFoundError,
    PolicyError,
    RemoteProtocolError,
    TokenError,
    ValidationError,
)
from connector.identity import Caller, ReplayClaim
from connector.store import autocommit_tx, is_postgres, read_only, run
from contracts._messages import (
    AgreementMessage,
    AgreementVerificationMessage,
    ContractRequestMessage,
    NegotiationEventMessage,
    NegotiationMessage,
    OfferMessage,
    TerminationMessage,
    negotiation_body,
    parse_message,
)
from contracts._negotiation_states import (
    TERMINAL_STATES,
    Event,
    Role,
    State,
    acked,
    handle,
    wire_state,
)
from contracts._process import (
    AckTransition,
    Delivery,
    HttpSender,
    OutboxMessage,
    RetryPolicy,
    StaleWrite,
    StateWrite,
    Worker,
    body_digest,
    cached_statement,
    cancel_pending,
    enqueue,
    enqueue_claimed,
    insert_locked_process,
    lock_process,
    new_process_row,
    on_commit,
    record_received,
    save_guarded,
    save_state,
    write_tx,
)
from contracts._sender import DirectSender
from contracts._signing import (
    KeyResolver,
    Signer,
    export_agreement,
    sign_agreement,
    verify_agreement_signature,
)
from contracts._tables import negotiations

__all__ = [
    "KIND",
    "EventFilter",
    "NegotiationConfig",
    "NegotiationManager",
    "OfferResolver",
    "PolicyDecider",
    "PolicyVerdict",
    "Script",
    "UsagePolicyDecider",
    "export_row",
]

log = logging.getLogger("dadam.contracts")


def _camel(column: str) -> str:
    """``consumer_pid`` -> ``consumerPid`` (the DSP property a pid column holds)."""
    head, _, tail = column.partition("_")
    return head + tail.capitalize()


def _offer(q: asyncio.Queue[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """Put events for an SSE client; a client too slow to read 1,000 events misses the newest."""
    with contextlib.suppress(asyncio.QueueFull):
        for ev in events:
            q.put_nowait(ev)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which state changes an SSE subscriber wants: empty sets accept everything.

    ``states`` holds DSP state names as events show them (``wire_state``), ``roles`` "provider"
    and/or "consumer", ``ids`` negotiation ids. :meth:`accepts` reads only an event's ``id``,
    ``role`` and ``state`` (``NegotiationManager._announce`` asks it before building the event).
    """

    states: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()

    def accepts(self, ev: Mapping[str, Any]) -> bool:
        return (
            (not self.states or ev["state"] in self.states)
            and (not self.roles or ev["role"] in self.roles)
            and (not self.ids or ev["id"] in self.ids)
        )

    @classmethod
    def parse(
        cls, *, states: Iterable[str] = (), roles: Iterable[str] = (), ids: Iterable[str] = ()
    ) -> EventFilter:
        """From query parameters (each repeated or comma-separated); ValidationError names every
        unknown state or role."""

        def split(values: Iterable[str]) -> list[str]:
            return [v.strip() for value in values for v in value.split(",") if v.strip()]

        wire = sorted({wire_state(s) for s in State})
        st = [v.upper().removeprefix("DSPACE:") for v in split(states)]
        rl = [v.lower() for v in split(roles)]
        errors = [f"state {v!r}: one of {', '.join(wire)}" for v in st if v not in wire]
        errors += [f"role {v!r}: provider or consumer" for v in rl if v not in ("provider", "consumer")]
        if errors:
            raise ValidationError("bad event filter", errors=errors)
        return cls(frozenset(st), frozenset(rl), frozenset(split(ids)))


@dataclass(frozen=True, slots=True)
class _Listener:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any]]
    wanted: EventFilter


#: The SSE change poll: rows changed after ``since`` (an index scan, contracts_0005).
CHANGES_SINCE = (
    sa.select(negotiations)
    .where(negotiations.c.updated_at > sa.bindparam("since"))
    .order_by(negotiations.c.updated_at)
    .limit(1000)
)

#: A negotiation row (as read, or as updated in memory after a write in the same transaction).
Row = Mapping[Any, Any]

KIND = "cn"
#: How long the worker holds back the record of a delivered message's ACK (PostgreSQL, optimistic
#: receive): the peer's next message, which records it with its own write, usually comes within
#: a few milliseconds; without one the ACK is recorded after this.
ACK_HOLD_S = 0.5
WEBHOOK_KIND = "cn-webhook"


class OfferResolver(Protocol):
    """Resolves an offer id for a caller (``catalog.CatalogService`` implements it).

    The result has ``.dataset.id`` and ``.offer_policy_json`` (the offer as the catalog shows it).
    Raises NotFoundError when the offer does not exist or the caller may not see it.
    """

    def resolve_offer(self, offer_id: str, caller: Caller) -> Any: ...


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    permitted: bool
    reasons: list[str] = field(default_factory=list)


class PolicyDecider(Protocol):
    """Decides whether ``caller`` may get a contract for ``requested`` given the ``offered`` policy."""

    def decide(
        self, offered: Mapping[str, Any], requested: Mapping[str, Any], caller: Caller
    ) -> PolicyVerdict: ...

    def matches(self, requested: Mapping[str, Any], received: Mapping[str, Any]) -> PolicyVerdict:
        """Consumer side: may we accept the ``received`` offer/agreement automatically?

        Only if it grants at least what we ``requested`` and adds no constraint, duty or
        prohibition we did not ask for (fail closed: anything narrower or costlier is refused
        with the differences as the reason)."""
        ...


class UsagePolicyDecider:
    """The real engine: :mod:`usage_policy` (fail closed: anything it cannot parse is a denial)."""

    def decide(
        self, offered: Mapping[str, Any], requested: Mapping[str, Any], caller: Caller
    ) -> PolicyVerdict:
        import usage_policy as up

        try:
            off = up.parse_policy(_policy_part(offered))
            req = up.parse_policy(_policy_part(requested))
        except (PolicyError, DadamError) as exc:
            return PolicyVerdict(False, [f"policy not understood: {r}" for r in exc.reasons()])
        match = up.is_within(req, off)
        if not match.within:
            return PolicyVerdict(False, ["the requested policy is not within the offer", *match.reasons])
        claims = dict(caller.claims)
        ctx = up.EvaluationContext(
            did=caller.did,
            bpn=claims.get("bpn"),
            memberships=frozenset(claims.get("memberships") or ()),
            framework_agreements=frozenset(claims.get("framework_agreements") or ()),
            credentials=frozenset(claims.get("credentials") or ()),
            groups=frozenset(claims.get("bpn_groups") or claims.get("groups") or ()),
            claims=claims,
            region=claims.get("region"),
            purpose=claims.get("purpose"),
            target=str(requested.get("target")) if requested.get("target") else None,
        )
        decision = up.evaluate(off, up.Scope.NEGOTIATION, ctx)
        return PolicyVerdict(decision.permitted, decision.reasons())

    def matches(self, requested: Mapping[str, Any], received: Mapping[str, Any]) -> PolicyVerdict:
        import usage_policy as up

        try:
            got = up.parse_policy(_policy_part(received))
            want = up.parse_policy(_policy_part(requested))
        except (PolicyError, DadamError) as exc:
            return PolicyVerdict(False, [f"policy not understood: {r}" for r in exc.reasons()])
        # Our request must be within what they give: nothing we asked for is missing, and every
        # duty or restriction of theirs was already in our request.
        match = up.is_within(want, got)
        return PolicyVerdict(match.within, list(match.reasons))


_RULE_KEYS = ("permission", "prohibition", "obligation")

#: What an offer must grant, with nothing added, to be accepted unasked (``accept_initial_offers="auto"``).
_UNCONDITIONAL_USE: dict[str, Any] = {"permission": [{"action": "use"}]}


def _policy_part(policy: Mapping[str, Any]) -> dict[str, Any]:
    """Rules (and type) of an offer or agreement, for comparison: ids, parties and timestamps dropped."""
    out: dict[str, Any] = {"@type": "Set"}
    for k in _RULE_KEYS:
        if policy.get(k):
            out[k] = policy[k]
    return out


#: A conformance script: trigger -> commands. Triggers: "request", "counter", "accepted",
#: "verification", "offer", "agreement", "ack:<command>"; commands: "offer", "agree",
#: "finalize", "terminate", "accept", "verify", "counter", "nothing".
Script = Mapping[str, Sequence[str]]


@dataclass
class NegotiationConfig:
    """What the manager needs to know about this connector."""

    participant_id: str
    #: Our DSP base URL: consumer callbackAddress, and where peers reach our provider endpoints.
    dsp_base_url: str
    state_timeout_s: float = 3600.0
    #: Park permitted requests as pending until approved in the management API.
    manual_approval: bool = False
    #: Consumer, on a provider's counter-offer: "auto" accepts it when it grants at least what we
    #: asked for and adds nothing (else terminates with the differences); "manual" leaves the
    #: negotiation OFFERED and pending until the operator accepts, counter-offers or rejects it.
    accept_counter_offers: Literal["auto", "manual"] = "auto"
    #: Consumer, on a provider-initiated offer (``POST /negotiations/offers``): "manual" leaves it
    #: OFFERED and pending for the operator; "auto" accepts it if it grants unconditional use with
    #: no duty (anything else still waits for the operator, with the reason).
    accept_initial_offers: Literal["manual", "auto"] = "manual"
    #: Delay before a reply to a received message is sent (the ACK must reach the peer first).
    reply_delay_s: float = 0.0
    #: Delay before a scripted follow-up message (TCK: handlers are registered late).
    script_delay_s: float = 0.5


@dataclass
class _Effects:
    """Collected during a transaction, acted on after commit."""

    wake: bool = False
    #: Messages leased to our worker, to send right after the commit.
    dispatch: list[OutboxMessage] = field(default_factory=list)
    #: A state change of ``_set(defer=True)`` not yet written: (process id, save_state kwargs).
    unsaved: tuple[str, dict[str, Any]] | None = None
    #: Optimistic receive: (version read, (kind, message id, digest)). Every state change is
    #: then held back and written once, guarded by that version, with the message id recorded.
    #: For a new row (``new``) the version is unused and the message is optional.
    guard: tuple[int, tuple[str, str, str] | None] | None = None
    #: A new row not written yet (PostgreSQL): (its values as created, the column values no
    #: existing row may have); the one guarded write INSERTs it with its changes.
    new: tuple[Row, Mapping[str, Any] | None] | None = None
    #: With ``new``: a row of another table that must exist (table, column values) for the
    #: INSERT to happen, e.g. the catalog at the revision the offer was resolved on.
    require: tuple[sa.Table, Mapping[str, Any]] | None = None
    #: A delivery of ours to this negotiation that the worker held back (its ACK not recorded
    #: yet, :meth:`Worker.take_held`): the guarded write records it (``StateWrite.acked``).
    held: tuple[OutboxMessage, Delivery] | None = None
    #: A message of ours to this negotiation whose outcome is not recorded yet: held back by
    #: the worker (``held``) or still being sent (:meth:`Worker.in_flight`). The peer's message
    #: shows the peer has it, so the guarded write marks it sent (``StateWrite.acked``).
    acked: str | None = None
    acked_owner: str = ""  # the worker that leased it
    acked_process: str = ""
    acked_used: bool = False
    #: The guarded write was made (committed): nothing else may be written.
    guard_spent: bool = False
    #: The row as the last ``_set`` left it (as stored once the transaction or guarded write is).
    final: Row | None = None
    #: Optimistic receive without a read: the caller's token id goes in with the guarded write
    #: (``StateWrite.token``).
    token: tuple[sa.Table, Any] | None = None


#: Rows :meth:`NegotiationManager._keep_row` remembers at most (the oldest go first).
ROW_CACHE_SIZE = 2048
_TERMINAL_INTS = frozenset(int(s) for s in TERMINAL_STATES)


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _extra_with(row: Row, **values: Any) -> str:
    """The row's ``extra`` JSON with ``values`` merged in (None values are dropped)."""
    extra = dict(_loads(row["extra"]) or {})
    extra.update({k: v for k, v in values.items() if v is not None})
    return _dumps(extra)


class NegotiationManager:
    """Drives provider and consumer negotiations (see the module docstring).

    Outbox messages go out on ``http.client`` keep-alive connections (:class:`DirectSender`)
    unless ``http`` is given (tests give a client for its transport) or ``direct_http=False``;
    either way ``http`` (or a default httpx client) serves proxies, auth without
    ``request_headers`` and the other requests of the manager.
    """

    kind = KIND
    table = negotiations
    terminal_states = frozenset(int(s) for s in TERMINAL_STATES)
    #: The worker may hold back a delivery's record for :meth:`receive` to make (Worker.take_held).
    coalesce_acks = True

    def __init__(
        self,
        engine: Engine,
        config: NegotiationConfig,
        *,
        offers: OfferResolver | None = None,
        decider: PolicyDecider | None = None,
        signer: Signer | None = None,
        keys: KeyResolver | None = None,
        http: httpx.Client | None = None,
        auth_for: Callable[[str | None], httpx.Auth | None] | None = None,
        retry: RetryPolicy | None = None,
        scripts: Callable[[str | None], Script | None] | None = None,
        worker_owner: str | None = None,
        lease_s: float = 30.0,
        batch_size: int = 20,
        poll_s: float = 0.2,
        concurrency: int = 8,
        direct_dispatch: bool = True,
        direct_http: bool | None = None,
        claims_for: Callable[[str], Mapping[str, Any]] | None = None,
    ) -> None:
        self.engine = engine
        #: Provider: what we know (verified) about a partner, to check an offer we start is for them.
        self.claims_for = claims_for
        #: Send a message from this process right after the commit that produced it (leased to
        #: our worker). False: leave every message to whichever worker claims it (API-only replicas).
        self.direct_dispatch = direct_dispatch
        self._roles: dict[str, Role] = {}
        #: PostgreSQL: rows as our last guarded write stored them, by (role, pid) (see _take_row).
        self._rows: OrderedDict[tuple[str, str], Row] = OrderedDict()
        self._rows_lock = threading.Lock()
        self.config = config
        self.offers = offers
        self.decider: PolicyDecider = decider or UsagePolicyDecider()
        self.signer = signer
        self.keys = keys
        self.http = http or httpx.Client(timeout=10.0)
        self.auth_for = auth_for
        self.scripts = scripts
        sender: HttpSender | DirectSender = HttpSender(self.http, auth_for)
        # Our own client (not one given for its transport): send on http.client (decision 0404).
        if direct_http if direct_http is not None else http is None:
            sender = DirectSender(HttpSender(self.http, auth_for), timeout_s=10.0)
        self.sender = sender
        self.worker = Worker(
            engine,
            [self],
            sender,
            owner=worker_owner,
            retry=retry,
            lease_s=lease_s,
            batch_size=batch_size,
            poll_s=poll_s,
            concurrency=concurrency,
        )
        self._listeners: list[_Listener] = []
        #: SSE across replicas: a poller reads changes from the database while anyone listens
        self._poller: threading.Thread | None = None
        self._seen: dict[str, float] = {}
        self.sse_poll_s = 0.5
        self._lock = threading.Lock()
        self._tx_local = threading.local()
        #: Receive without a transaction where nothing but the one guarded write is needed
        #: (decision 0408): PostgreSQL, replies sent at once by this process, no TCK scripts.
        self._optimistic = (
            is_postgres(engine)
            and self.direct_dispatch
            and self.scripts is None
            and config.reply_delay_s <= 0
        )
        # Where messages are received optimistically, the ACK of a message we sent is held
        # back a moment: the peer's answer usually comes first and records it (decision 0410).
        self.worker.hold_acks_s = ACK_HOLD_S if self._optimistic else 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()
        if isinstance(self.sender, DirectSender):
            self.sender.close()

    # -- observers (SSE) ---------------------------------------------------------------------
    def subscribe(self, wanted: EventFilter | None = None) -> asyncio.Queue[dict[str, Any]]:
        """A queue receiving every state change ``wanted`` accepts (all without a filter), made by
        this process (at once) or by another replica on the same database (within
        ``sse_poll_s``; call from the event loop). Changes the filter refuses are dropped before
        they reach the event loop."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        with self._lock:
            self._listeners.append(_Listener(asyncio.get_running_loop(), q, wanted or EventFilter()))
            if self._poller is None or not self._poller.is_alive():
                self._poller = threading.Thread(target=self._poll_changes, name="dadam-sse-poll", daemon=True)
                self._poller.start()
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._listeners = [x for x in self._listeners if x.queue is not q]

    def _poll_changes(self) -> None:
        """While anyone listens: read rows changed since the last look (other replicas' work too)
        and publish those not already published by this process. Stops with the last listener."""
        cursor = time.time() - 1.0
        while True:
            time.sleep(self.sse_poll_s)
            with self._lock:
                if not self._listeners:
                    self._poller = None
                    return
            try:
                with read_only(self.engine) as conn:
                    rows = conn.execute(CHANGES_SINCE, {"since": cursor}).mappings().all()
            except Exception:  # the database is away: try again next tick
                log.warning("SSE change poll failed", exc_info=True)
                continue
            events = []
            for row in rows:
                cursor = max(cursor, float(row["updated_at"]))
                if self._seen.get(row["id"], -1.0) >= float(row["updated_at"]):
                    continue  # published by this process when it made the change
                self._note_seen(row["id"], float(row["updated_at"]))
                events.append(self._view(row))
            if events:
                self._deliver(events)
            # rows committed late with an older timestamp are picked up by a small overlap
            cursor -= 0.5 if rows else 0.0

    def _note_seen(self, nid: str, updated_at: float) -> None:
        self._seen[nid] = updated_at
        if len(self._seen) > 50_000:  # bounded: forget the oldest half
            for key in list(self._seen)[: len(self._seen) // 2]:
                del self._seen[key]

    def _announce(self, row: Row) -> None:
        """A state change this process committed (``row`` as stored): to the SSE listeners (see
        :func:`on_commit`). The event (with the offer and agreement parsed) is built only when a
        listener's filter takes it; the filters need the id, role and state only."""
        self._note_seen(str(row["id"]), float(row["updated_at"]))
        if self._listeners:
            key = {"id": row["id"], "role": row["role"], "state": wire_state(State(row["state"]))}
            with self._lock:
                wanted = any(listener.wanted.accepts(key) for listener in self._listeners)
            if wanted:
                self._deliver([self._view(row)])

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            wanted = [ev for ev in events if listener.wanted.accepts(ev)]
            if wanted:
                with contextlib.suppress(RuntimeError):  # loop closed
                    listener.loop.call_soon_threadsafe(_offer, listener.queue, wanted)

    def _publish(self, fx: _Effects, *, defer: Callable[[Callable[[], None]], None] | None = None) -> None:
        """After a commit: send claimed messages and wake the worker (the SSE listeners were
        notified by the commit itself, see :func:`connector.store.on_commit`).

        ``defer`` postpones the sending (the HTTP edge passes "after the response was sent", so
        our reply never overtakes the ACK of the message that caused it).
        """
        if fx.dispatch or fx.wake:
            messages, wake = list(fx.dispatch), fx.wake

            def go() -> None:
                if messages:
                    self.worker.dispatch(messages)
                if wake:
                    self.worker.wake()

            if defer is None:
                go()
            else:
                defer(go)
        # State changes reach the listeners from on_commit callbacks registered by _set: in
        # commit order, also when several threads' changes were committed together.

    # -- state changes -----------------------------------------------------------------------
    def _set(
        self,
        conn: Connection,
        row: Row,
        state: State,
        fx: _Effects,
        *,
        reason: str | None = None,
        pending: bool = False,
        defer: bool = False,
        **values: Any,
    ) -> Row:
        """Move ``row`` to ``state`` (with ``values``), announce it and call its webhooks after the
        commit; returns the row as stored. ``defer=True`` holds the UPDATE back for the next
        ``_set`` of the row in this transaction (the reaction to a received message usually
        changes the state again at once), or for :meth:`_flush`: call that before the
        transaction ends or anything else reads or writes the row."""
        terminal = state in TERMINAL_STATES
        now = time.time()
        timeout_s = None if terminal else self.config.state_timeout_s
        # The note of a decision that was waiting ("waiting for manual approval") goes once the
        # decision is made; reasons of other states (e.g. TERMINATED) stay.
        decided = bool(row["pending"]) and not pending and reason is None
        write: dict[str, Any] = {
            "state": state,
            "timeout_s": timeout_s,
            "now": now,
            "error_detail": reason,
            "clear_error": decided,
            "pending": pending,
            **values,
        }
        # A write held back by an earlier _set of this row (defer=True) goes out with this one:
        # one UPDATE, one version step (already counted in ``row``).
        if fx.guard is not None:
            if fx.guard_spent:
                raise LocalProtocolError("an optimistic receive writes once (decision 0408)")
            defer = True
        carried = fx.unsaved is not None and fx.unsaved[0] == row["id"]
        if carried:
            assert fx.unsaved is not None
            earlier = fx.unsaved[1]
            fx.unsaved = None
            if reason is None and not decided:  # this change leaves the earlier note as it was
                write["error_detail"], write["clear_error"] = earlier["error_detail"], earlier["clear_error"]
            write = {**earlier, **write}
        else:
            self._flush(conn, fx)
        if defer:
            fx.unsaved = (row["id"], write)
        else:
            save_state(conn, negotiations, row["id"], **write)
        # The row as stored now, or as the pending write will store it (no re-read: this
        # transaction holds the row lock).
        new = dict(row)
        new.update(values)
        new.update(
            state=int(state),
            state_since=now,
            deadline=None if timeout_s is None else now + timeout_s,
            pending=pending,
            updated_at=now,
            version=row["version"] + (0 if carried else 1),
        )
        if reason is not None or decided:
            new["error_detail"] = reason
        if state != row["state"] or reason:
            on_commit(conn, functools.partial(self._announce, dict(new)))
            callbacks = _loads(new["callbacks"])
            if callbacks:
                ev = self._view(new)
                for url in callbacks:
                    enqueue(conn, WEBHOOK_KIND, new["id"], url, {"@type": "NegotiationStateChanged", **ev})
                fx.wake = True
        fx.final = new
        return new

    def _flush(self, conn: Connection, fx: _Effects) -> None:
        """Store a state change held back by ``_set(defer=True)``, if any."""
        if fx.unsaved is None:
            return
        state = self._take_unsaved(fx)
        assert state is not None
        if state.expect_version is not None or state.insert is not None:
            save_guarded(conn, state)
        else:
            save_state(conn, negotiations, state.process_id, **state.kwargs)

    @staticmethod
    def _take_unsaved(fx: _Effects) -> StateWrite | None:
        """The state change held back by ``_set(defer=True)``, for the caller to store (with the
        optimistic guard, if any: then it is the one write)."""
        if fx.unsaved is None:
            return None
        pid, write = fx.unsaved
        fx.unsaved = None
        if fx.guard is None:
            return StateWrite(negotiations, pid, write)
        version, received = fx.guard
        fx.guard_spent = True
        if fx.new is not None:
            initial, absent = fx.new
            return StateWrite(
                negotiations, pid, write, received=received, insert=initial, absent=absent,
                require=fx.require, token=fx.token,
            )  # fmt: skip
        acked = None
        if fx.acked is not None:
            acked, fx.acked_used = (fx.acked, fx.acked_owner), True
        return StateWrite(
            negotiations, pid, write, expect_version=version, received=received, acked=acked, token=fx.token
        )

    def _send(
        self,
        conn: Connection,
        row: Row,
        event: Event,
        fx: _Effects,
        *,
        delay_s: float = 0.0,
        reason: str | None = None,
        **values: Any,
    ) -> Row:
        """Apply a SEND_* event: build its message, put it in the outbox, enter the "-ING" state."""
        role = Role(row["role"])
        tr = handle(role, State(row["state"]), event)
        # The state is written with the message (one statement on PostgreSQL).
        row = self._set(conn, row, tr.state, fx, reason=reason, defer=True, **values)
        msg = self._build(row, event, reason)
        address = row["counterparty_address"].rstrip("/")
        url = address + self._path(role, row, event)
        if delay_s > 0 or not self.direct_dispatch:
            if fx.guard is not None:  # two writes: not for the optimistic path
                raise StaleWrite(row["id"])
            self._flush(conn, fx)
            enqueue(
                conn, KIND, row["id"], url, msg.to_json(), audience=row["counterparty_id"], delay_s=delay_s
            )
            fx.wake = True
            return row
        body = msg.to_json()
        claimed = enqueue_claimed(
            conn,
            self.worker,
            KIND,
            row["id"],
            url,
            body,
            audience=row["counterparty_id"],
            on_ack=self._ack_transition(role, row, str(body.get("@type", ""))),
            state=self._take_unsaved(fx),
        )
        if claimed is not None:
            fx.dispatch.append(claimed)
        else:
            fx.wake = True
        return row

    def _ack_transition(self, role: Role, row: Row, message_type: str) -> AckTransition | None:
        """What the ACK of the message just enqueued for ``row`` will do, when that is known now
        (the worker then records it in one statement): the state change only, nothing for
        webhooks or scripted follow-ups to do, and no peer pid to check."""
        to = acked(role, State(row["state"]), message_type).state
        if to == row["state"] or _loads(row["callbacks"]) or "after_ack" in (_loads(row["extra"]) or {}):
            return None
        fill = None
        if role is Role.CONSUMER and not row["provider_pid"]:
            fill = ("provider_pid", "providerPid")
        elif role is Role.PROVIDER and not row["consumer_pid"]:
            return None  # an ACK without consumerPid terminates: on_delivered says why
        return AckTransition(
            table=negotiations,
            version=row["version"],
            state=int(to),
            timeout_s=None if to in TERMINAL_STATES else self.config.state_timeout_s,
            fill=fill,
        )

    def after_ack(self, row: Row) -> None:
        """Worker hook: a delivery was recorded through an :class:`AckTransition` (committed)."""
        self._keep_row(Role(row["role"]), str(row["id"]), row)  # the next message starts from it
        self._announce(row)

    @staticmethod
    def _path(role: Role, row: Row, event: Event) -> str:
        if role is Role.CONSUMER:
            pp = row["provider_pid"]
            return {
                Event.SEND_REQUEST: f"/negotiations/{pp}/request" if pp else "/negotiations/request",
                Event.SEND_ACCEPTED: f"/negotiations/{pp}/events",
                Event.SEND_VERIFICATION: f"/negotiations/{pp}/agreement/verification",
                Event.SEND_TERMINATION: f"/negotiations/{pp}/termination",
            }[event]
        cp = row["consumer_pid"]
        return {
            Event.SEND_OFFER: f"/negotiations/{cp}/offers" if cp else "/negotiations/offers",
            Event.SEND_AGREEMENT: f"/negotiations/{cp}/agreement",
            Event.SEND_FINALIZED: f"/negotiations/{cp}/events",
            Event.SEND_TERMINATION: f"/negotiations/{cp}/termination",
        }[event]

    def _build(self, row: Row, event: Event, reason: str | None) -> NegotiationMessage:
        pp, cp = row["provider_pid"], row["consumer_pid"]
        mid = f"urn:uuid:{uuid.uuid4()}"
        if event is Event.SEND_REQUEST:
            offer = _loads(row["offer"])
            if pp:
                return ContractRequestMessage(cp, offer, None, pp, mid)
            return ContractRequestMessage(cp, offer, self.config.dsp_base_url, None, mid)
        if event is Event.SEND_OFFER:
            if not cp:  # provider-initiated: the consumer answers to our DSP base
                return OfferMessage(pp, _loads(row["offer"]), None, self.config.dsp_base_url, mid)
            return OfferMessage(pp, _loads(row["offer"]), cp, None, mid)
        if event is Event.SEND_AGREEMENT:
            return AgreementMessage(pp, cp, _loads(row["agreement"]), row["provider_signature"], mid)
        if event is Event.SEND_VERIFICATION:
            return AgreementVerificationMessage(pp, cp, row["consumer_signature"], mid)
        if event is Event.SEND_ACCEPTED:
            return NegotiationEventMessage(pp, cp, "ACCEPTED", mid)
        if event is Event.SEND_FINALIZED:
            return NegotiationEventMessage(pp, cp, "FINALIZED", mid)
        return TerminationMessage(pp, cp, "terminated", (reason or "terminated",), mid)

    # -- views -------------------------------------------------------------------------------
    def _view(self, row: Row) -> dict[str, Any]:
        agreement = _loads(row["agreement"])
        signed_by = [r for r in ("provider", "consumer") if row[f"{r}_signature"]]
        return {
            "id": row["id"],
            "role": row["role"],
            "state": wire_state(State(row["state"])),
            "internalState": State(row["state"]).name,
            "providerPid": row["provider_pid"],
            "consumerPid": row["consumer_pid"],
            "counterPartyAddress": row["counterparty_address"],
            "counterPartyId": row["counterparty_id"],
            "offerId": row["offer_id"],
            "datasetId": row["dataset_id"],
            "offer": _loads(row["offer"]),
            "agreement": agreement,
            "signedBy": signed_by,
            "pending": bool(row["pending"]),
            "errorDetail": row["error_detail"],
            "createdAt": row["created_at"],
            "updatedAt": row["updated_at"],
        }

    def _ack(self, row: Row) -> dict[str, Any]:
        return negotiation_body(row["provider_pid"], row["consumer_pid"], wire_state(State(row["state"])))

    # -- lookup ------------------------------------------------------------------------------
    def _find(
        self,
        conn: Connection,
        role: Role,
        pid: str,
        caller: Caller | None,
        lock: bool,
        *,
        record_token: bool = False,
    ) -> Row:
        """The negotiation ``pid`` of ``role`` (locked with ``lock`` on PostgreSQL); NotFoundError if
        absent or not the caller's. ``record_token``: the caller's token id, if not recorded yet,
        is added to the replay store first, where the store's table is in this database by this
        connection: unlocked on PostgreSQL by the statement reading the row, with ``lock`` (a
        write transaction) by that transaction (decision 0409). TokenError if it was used before:
        then nothing else is done."""
        for_update = lock and conn.dialect.name == "postgresql"
        claim = caller.replay if caller is not None and record_token else None
        replay_table = claim.table_for(self.engine) if claim is not None else None
        col = negotiations.c.provider_pid if role is Role.PROVIDER else negotiations.c.consumer_pid
        ctx = {"providerPid" if role is Role.PROVIDER else "consumerPid": pid}
        row: Row | None
        if claim is not None and replay_table is not None and conn.dialect.name == "postgresql" and not lock:
            stmt = cached_statement(
                ("cn_find_recording", role.value), lambda: _find_recording(role, col, replay_table)
            )
            found = run(conn, stmt, {"_pid": pid, "_tkey": claim.key, "_texp": claim.expires_at}).first()
            assert found is not None  # one row always: the token's, joined to the negotiation's
            claim.settle(bool(found.pop("_fresh")))
            row = found if found["id"] is not None else None
        else:
            if claim is not None and replay_table is not None and lock:
                _record_in_tx(conn, claim, replay_table)
            elif claim is not None:
                claim.record()

            def build() -> Any:
                stmt = sa.select(negotiations).where(
                    negotiations.c.role == role.value, col == sa.bindparam("_pid")
                )
                return stmt.with_for_update() if for_update else stmt

            stmt = cached_statement(("cn_find", role.value, for_update), build)
            row = run(conn, stmt, {"_pid": pid}).first()
        if row is None:
            raise NotFoundError(f"no negotiation {pid!r}", context=ctx)
        if caller is not None and row["counterparty_id"] and caller.did != row["counterparty_id"]:
            raise NotFoundError(f"no negotiation {pid!r}", context=ctx)  # not yours: 404, as DSP says
        return row

    def role_of(self, pid: str) -> Role:
        """Which of our negotiations ``pid`` names (provider and consumer share DSP paths).

        A pid's role never changes, so answers are remembered (bounded); a miss is not.
        """
        cached = self._roles.get(pid)
        if cached is not None:
            return cached
        stmt = cached_statement(
            ("cn_role_of",),
            lambda: (
                sa.select(negotiations.c.role)
                .where(
                    sa.or_(
                        sa.and_(
                            negotiations.c.role == "provider",
                            negotiations.c.provider_pid == sa.bindparam("_pid"),
                        ),
                        sa.and_(
                            negotiations.c.role == "consumer",
                            negotiations.c.consumer_pid == sa.bindparam("_pid"),
                        ),
                    )
                )
                .limit(1)
            ),
        )
        with write_tx(self.engine) as conn:  # SQLite: every transaction takes the write lock
            role = run(conn, stmt, {"_pid": pid}).scalar()
        if role is None:
            raise NotFoundError(f"no negotiation {pid!r}", context={"providerPid": pid})
        return self._remember_role(pid, Role(role))

    def _keep_row(self, role: Role, pid: str, row: Row | None) -> None:
        """Remember ``row`` as our guarded write just stored it (decision 0411); a terminal row
        gets no more messages and is dropped."""
        if row is None or not self._optimistic:
            return
        key = (role.value, pid)
        with self._rows_lock:
            if row["state"] in _TERMINAL_INTS:
                self._rows.pop(key, None)
                return
            self._rows[key] = dict(row)
            self._rows.move_to_end(key)
            if len(self._rows) > ROW_CACHE_SIZE:
                self._rows.popitem(last=False)

    def _take_row(self, role: Role, pid: str) -> Row | None:
        """The row of negotiation ``pid`` as our last guarded write stored it, if remembered; it
        is forgotten here (one message at a time uses it, and :meth:`_keep_row` puts it back
        after its own write). It may be stale (another replica, the worker, a timeout wrote
        since): the guarded write then does not apply and the locking path reads the row."""
        with self._rows_lock:
            row = self._rows.pop((role.value, pid), None)
        return None if row is None else dict(row)

    def _remember_role(self, pid: str, role: Role) -> Role:
        """Note the role of our pid ``pid`` (call once the row naming it is committed)."""
        if len(self._roles) > 100_000:
            self._roles.clear()
        self._roles[pid] = role
        return role

    def dsp_get(self, role: Role, pid: str, caller: Caller | None) -> dict[str, Any]:
        """``GET /negotiations/:pid`` (provider) or ``<callback>/negotiations/:pid`` (consumer)."""
        with write_tx(self.engine) as conn:  # SQLite: every transaction takes the write lock
            return self._ack(self._find(conn, role, pid, caller, lock=False))

    # -- received DSP messages ---------------------------------------------------------------
    def _open_received(
        self,
        conn: Connection,
        role: Role,
        peer_pid: str,
        msg: Any,
        caller: Caller,
        digest: str,
        ctx: dict[str, Any],
        **values: Any,
    ) -> tuple[Row, dict[str, Any] | None]:
        """A negotiation opened by the peer's first message (a consumer's request, or a provider's
        offer): the new INITIAL row, locked and with the message recorded; or, when the same message
        comes again, the existing negotiation's acknowledgement. Another message reusing the peer's
        pid is refused (each negotiation has fresh pids)."""
        own, peer = (
            ("provider_pid", "consumer_pid") if role is Role.PROVIDER else ("consumer_pid", "provider_pid")
        )
        find_known = cached_statement(
            ("cn_known", role.value),
            lambda: sa.select(negotiations).where(
                negotiations.c.role == role.value,
                negotiations.c[peer] == sa.bindparam("_peer_pid"),
                negotiations.c.counterparty_id == sa.bindparam("_caller"),
            ),
        )
        known = run(conn, find_known, {"_peer_pid": peer_pid, "_caller": caller.did}).first()
        if known is not None:
            if msg.id and record_received(conn, KIND, known["id"], msg.id, digest) == "duplicate":
                return known, self._ack(known)
            peer_name, own_name = _camel(peer), _camel(own)
            raise RemoteProtocolError(
                f"{peer_name} {peer_pid!r} already names negotiation {known[own]!r}",
                context={**ctx, own_name: known[own]},
            )
        pid = f"urn:uuid:{uuid.uuid4()}"
        now = time.time()
        row: Row = insert_locked_process(
            conn, negotiations, pid, State.INITIAL, timeout_s=self.config.state_timeout_s, now=now,
            role=role.value, **{own: pid, peer: peer_pid},
            counterparty_address=msg.callback_address.rstrip("/"), counterparty_id=caller.did, **values,
        )  # fmt: skip
        if record_received(conn, KIND, pid, msg.id, digest) == "conflict":
            # the same message id with another peer pid: not a resend (that names the same pid
            # and was answered above); refused as any reused message id is (the insert rolls back)
            raise ConflictError(f"message id {msg.id!r} was already used for another message", context=ctx)
        return row, None

    def provider_request(
        self, body: Any, caller: Caller, defer: Callable[[Callable[[], None]], None] | None = None
    ) -> dict[str, Any]:
        """Initial ContractRequestMessage (``POST /negotiations/request``): 201 body.

        A caller whose token id is still to be recorded (``caller.replay``) has it recorded
        with the new row's write (on PostgreSQL by the same statement, decision 0413); a request
        refused for any other reason records it first, so a replayed token is refused as such
        (401), as it is when the id was recorded before the request was read."""
        claim = caller.replay
        try:
            return self._provider_request(body, caller, claim, defer)
        except DadamError as exc:
            if claim is not None and not claim.recorded and not isinstance(exc, TokenError):
                claim.record()  # TokenError if the id was used before
            raise

    def _provider_request(
        self,
        body: Any,
        caller: Caller,
        claim: ReplayClaim | None,
        defer: Callable[[Callable[[], None]], None] | None,
    ) -> dict[str, Any]:
        msg = parse_message(body, "ContractRequestMessage")
        assert isinstance(msg, ContractRequestMessage)
        ctx = {"consumerPid": msg.consumer_pid}
        if msg.provider_pid is not None or not msg.callback_address:
            raise RemoteProtocolError(
                "an initial request needs callbackAddress and no providerPid", context=ctx
            )
        if not msg.callback_address.startswith(("http://", "https://")):
            raise ValidationError(
                "unusable callbackAddress", errors=["callbackAddress: http(s) URL"], context=ctx
            )
        if self.offers is None:
            raise NotFoundError(f"offer {msg.offer.get('@id')!r} is not known (no catalog)", context=ctx)
        digest = body_digest(body)
        as_of = getattr(self.offers, "resolve_offer_as_of", None)
        values: dict[str, Any] | None = None
        # the token id goes in with the write where the replay table is in our database
        table = claim.table_for(self.engine) if claim is not None else None
        if claim is not None and table is None:
            claim.record()
        token = (table, claim) if claim is not None and table is not None else None
        if self._optimistic and msg.id:
            # With a catalog that can: decide on the catalog as last loaded; the new row is then
            # written only if the catalog is still at that revision (a condition of the INSERT),
            # else decided again below on the current one.
            guard: tuple[sa.Table, Mapping[str, Any]] | None = None
            try:
                values, guard = self._offer_values(msg, caller, ctx, as_of)
            except DadamError:
                if as_of is None:
                    raise
                # perhaps an outdated catalog: the answer comes from the current one
            if values is not None:
                ack = self._request_optimistic(msg, caller, digest, values, defer, guard, token)
                if ack is not None:
                    return ack
                if guard is not None:
                    values = None  # decided on a catalog that may have changed since
        if values is None:
            values, _ = self._offer_values(msg, caller, ctx, None)
        fx = _Effects()
        with write_tx(self.engine) as conn:
            if claim is not None and table is not None and not claim.recorded:
                _record_in_tx(conn, claim, table)  # TokenError: a replay, nothing written
            row, duplicate = self._open_received(
                conn, Role.PROVIDER, msg.consumer_pid, msg, caller, digest, ctx, **values
            )
            if duplicate is not None:
                return duplicate
            ack = self._take_request(conn, row, msg, caller, fx)
        self._remember_role(str(row["provider_pid"]), Role.PROVIDER)
        self._publish(fx, defer=defer)
        return ack

    def _offer_values(
        self, msg: ContractRequestMessage, caller: Caller, ctx: Mapping[str, Any], as_of: Any
    ) -> tuple[dict[str, Any], tuple[sa.Table, Mapping[str, Any]] | None]:
        """The new provider row's offer columns for the requested offer, resolved for ``caller``
        (with ``as_of``, the catalog's ``resolve_offer_as_of``: against the catalog as last
        loaded, with the guard that names its revision); ValidationError when it cannot be
        negotiated."""
        assert self.offers is not None
        offer_id = str(msg.offer.get("@id"))
        target = msg.offer.get("target")
        guard: tuple[sa.Table, Mapping[str, Any]] | None = None
        try:
            if as_of is None:
                resolved = self.offers.resolve_offer(offer_id, caller)
            else:
                resolved, catalog_guard = as_of(offer_id, caller)
                guard = (catalog_guard.table, catalog_guard.values)
        except DadamError as exc:
            # Unknown offer: the provider MUST answer with an error (400, not 404: the
            # endpoint exists, the offer in the body does not).
            raise ValidationError(
                f"offer {offer_id!r} cannot be negotiated", errors=exc.reasons(), context=ctx
            ) from None
        dataset_id = str(resolved.dataset.id)
        if target is not None and str(target) != dataset_id:
            raise ValidationError(
                f"offer {offer_id!r} is for dataset {dataset_id!r}, not {target!r}",
                errors=[f"offer.target: expected {dataset_id!r}"],
                context=ctx,
            )
        values = {
            "offer_id": offer_id, "dataset_id": dataset_id, "offer": _dumps(msg.offer), "offer_by": "consumer",
            "extra": _dumps({"offered": resolved.offer_policy_json, "claims": dict(caller.claims)}),
        }  # fmt: skip
        return values, guard

    def _request_optimistic(
        self,
        msg: ContractRequestMessage,
        caller: Caller,
        digest: str,
        values: Mapping[str, Any],
        defer: Callable[[Callable[[], None]], None] | None,
        guard: tuple[sa.Table, Mapping[str, Any]] | None = None,
        token: tuple[sa.Table, ReplayClaim] | None = None,
    ) -> dict[str, Any] | None:
        """PostgreSQL: :meth:`provider_request` in one statement without a transaction. The new
        row is written with its state after our reaction, the message id and the reply, only if
        the id is new and no negotiation of this consumer pid exists (decision 0409), and with
        ``token``, only if the caller's token id was new (it is added by the same statement,
        decision 0413). None: nothing was written; the locking path answers (a resend, a reused
        pid, a replayed token, an error)."""
        assert msg.callback_address  # checked by provider_request
        fx = _Effects()
        fx.token = token
        pid = f"urn:uuid:{uuid.uuid4()}"
        row: Row = new_process_row(
            negotiations, pid, State.INITIAL, timeout_s=self.config.state_timeout_s, now=time.time(),
            role=Role.PROVIDER.value, provider_pid=pid, consumer_pid=msg.consumer_pid,
            counterparty_address=msg.callback_address.rstrip("/"), counterparty_id=caller.did, **values,
        )  # fmt: skip
        fx.guard = (0, (KIND, str(msg.id), digest))
        fx.new = (
            row,
            {"role": Role.PROVIDER.value, "consumer_pid": msg.consumer_pid, "counterparty_id": caller.did},
        )
        fx.require = guard

        def work() -> dict[str, Any]:
            with autocommit_tx(self.engine) as conn:
                return self._take_request(conn, row, msg, caller, fx)

        ack = _one_write(fx, work)
        if ack is None:
            return None
        self._remember_role(pid, Role.PROVIDER)
        self._keep_row(Role.PROVIDER, pid, fx.final)
        self._publish(fx, defer=defer)
        return ack

    def _take_request(
        self, conn: Connection, row: Row, msg: ContractRequestMessage, caller: Caller, fx: _Effects
    ) -> dict[str, Any]:
        """A new provider row takes the initial request, and we react; the ACK body."""
        tr = handle(Role.PROVIDER, State.INITIAL, Event.RECV_REQUEST)
        row = self._set(conn, row, tr.state, fx, defer=True)
        ack = self._ack(row)  # the state this message led to, before our reaction
        self._react_provider(conn, row, "request", msg, caller, fx)
        self._flush(conn, fx)
        return ack

    def consumer_initial_offer(
        self, body: Any, caller: Caller, defer: Callable[[Callable[[], None]], None] | None = None
    ) -> dict[str, Any]:
        """Provider-initiated negotiation (``POST /negotiations/offers``): a new consumer negotiation
        in OFFERED; returns the 201 body. The caller (authenticated) becomes the counter-party."""
        msg = parse_message(body, "ContractOfferMessage")
        assert isinstance(msg, OfferMessage)
        ctx = {"providerPid": msg.provider_pid}
        if msg.consumer_pid is not None or not msg.callback_address:
            raise RemoteProtocolError(
                "an initial offer needs callbackAddress and no consumerPid", context=ctx
            )
        if not msg.callback_address.startswith(("http://", "https://")):
            raise ValidationError(
                "unusable callbackAddress", errors=["callbackAddress: http(s) URL"], context=ctx
            )
        offer_id, dataset_id = _iri(msg.offer.get("@id")), _iri(msg.offer.get("target"))
        fx = _Effects()
        digest = body_digest(body)
        with write_tx(self.engine) as conn:
            row, duplicate = self._open_received(
                conn, Role.CONSUMER, msg.provider_pid, msg, caller, digest, ctx,
                offer_id=offer_id, dataset_id=dataset_id, offer=_dumps(msg.offer), offer_by="provider",
                callbacks=_dumps([]), extra=_dumps({"initiated": "provider"}),
            )  # fmt: skip
            if duplicate is not None:
                return duplicate
            tr = handle(Role.CONSUMER, State.INITIAL, Event.RECV_INITIAL_OFFER)
            row = self._set(conn, row, tr.state, fx, defer=True)
            ack = self._ack(row)  # OFFERED, before our reaction
            self._react_consumer(conn, row, "initial-offer", msg, fx)
            self._flush(conn, fx)
        self._remember_role(str(row["consumer_pid"]), Role.CONSUMER)
        self._publish(fx, defer=defer)
        return ack

    _EXPECTED: ClassVar[dict[tuple[Role, str], tuple[str, ...]]] = {
        (Role.PROVIDER, "request"): ("ContractRequestMessage",),
        (Role.PROVIDER, "events"): ("ContractNegotiationEventMessage",),
        (Role.PROVIDER, "verification"): ("ContractAgreementVerificationMessage",),
        (Role.PROVIDER, "termination"): ("ContractNegotiationTerminationMessage",),
        (Role.CONSUMER, "offers"): ("ContractOfferMessage",),
        (Role.CONSUMER, "agreement"): ("ContractAgreementMessage",),
        (Role.CONSUMER, "events"): ("ContractNegotiationEventMessage",),
        (Role.CONSUMER, "termination"): ("ContractNegotiationTerminationMessage",),
    }

    def receive(
        self,
        role: Role,
        endpoint: str,
        pid: str,
        body: Any,
        caller: Caller,
        defer: Callable[[Callable[[], None]], None] | None = None,
    ) -> dict[str, Any]:
        """A DSP message for an existing negotiation; returns the ACK body (state after commit)."""
        msg = parse_message(body, self._EXPECTED[(role, endpoint)])
        event = _event_for(role, msg)
        digest = body_digest(body)
        if self._optimistic and msg.id and not isinstance(msg, TerminationMessage):
            ack = self._receive_optimistic(role, pid, msg, event, caller, digest, defer)
            if ack is not None:
                return ack
        held = self.worker.take_held(KIND, pid)  # our pid is the row's id
        if held is not None:  # recorded first, as if the peer's message had come later
            self._record_held(held)
        fx = _Effects()
        with write_tx(self.engine) as conn:
            # the caller's token id, if not recorded yet, goes in with this transaction
            row = self._find(conn, role, pid, caller, lock=True, record_token=True)
            ack = self._apply(conn, role, row, msg, event, caller, digest, fx)
        self._publish(fx, defer=defer)
        return ack

    def _record_held(self, held: tuple[OutboxMessage, Delivery]) -> None:
        try:
            self.worker.record_held(held)
        except Exception:  # as when the worker records it: the lease expires and it is resent
            log.exception("recording delivery of %s failed; it will be resent", held[0].id)

    def _receive_optimistic(
        self,
        role: Role,
        pid: str,
        msg: NegotiationMessage,
        event: Event,
        caller: Caller,
        digest: str,
        defer: Callable[[Callable[[], None]], None] | None,
    ) -> dict[str, Any] | None:
        """PostgreSQL: :meth:`receive` without a transaction. The row is read without a lock;
        the state change, the received message's id and the reply are then written by one
        statement, only if the row still has the version read (decision 0408). None: the
        locking path must handle the message (the row changed, the id was seen, or any check
        failed: that path answers with the right error)."""
        fx = _Effects()

        def work() -> dict[str, Any] | None:
            # The row our last write stored saves the read; the caller's token id, if it is
            # to be recorded in our database, then goes in with the write (else the read does it).
            claim = getattr(caller, "replay", None)
            table = claim.table_for(self.engine) if claim is not None else None
            row = self._take_row(role, pid) if claim is None or table is not None else None
            if row is None:
                with read_only(self.engine) as rconn:
                    row = self._find(rconn, role, pid, caller, lock=False, record_token=True)
            elif row["counterparty_id"] and caller.did != row["counterparty_id"]:
                return None  # not yours: the locking path reads the row and answers 404
            elif table is not None:
                fx.token = (table, claim)
            if _loads(row["callbacks"]):
                return None  # webhook calls are outbox rows of their own: a second write
            fx.guard = (int(row["version"]), (KIND, str(msg.id), digest))
            # The ACK of our last message here, if the worker still holds it, is recorded by
            # this write: the state machine takes the peer's message in the "-ING" state the
            # same as in the state the ACK leads to (a test checks the table).
            fx.held = self.worker.take_held(KIND, str(row["id"]))
            fx.acked = fx.held[0].id if fx.held else self.worker.in_flight(KIND, str(row["id"]))
            fx.acked_owner, fx.acked_process = self.worker.owner, str(row["id"])
            with autocommit_tx(self.engine) as conn:
                return self._apply(conn, role, row, msg, event, caller, digest, fx)

        ack: dict[str, Any] | None = None
        try:
            ack = _one_write(fx, work)
        finally:
            done = ack is not None and fx.acked_used
            if fx.held is not None:
                if done:
                    self.worker.recorded_with(KIND, fx.held[0].process_id)
                else:  # not written with it: recorded the usual way, before anything else
                    self._record_held(fx.held)
            elif done and fx.acked is not None:
                self.worker.settle(KIND, fx.acked_process, fx.acked)
        if ack is not None:
            self._keep_row(role, pid, fx.final)
            self._publish(fx, defer=defer)
        return ack

    def _apply(
        self,
        conn: Connection,
        role: Role,
        row: Row,
        msg: NegotiationMessage,
        event: Event,
        caller: Caller,
        digest: str,
        fx: _Effects,
    ) -> dict[str, Any]:
        """The work of :meth:`receive` on the negotiation's row; returns the ACK body."""
        ctx = {"providerPid": row["provider_pid"], "consumerPid": row["consumer_pid"]}
        # Wrongly addressed: the pids in the body must name this negotiation.
        mine = row["provider_pid"] if role is Role.PROVIDER else row["consumer_pid"]
        theirs_col = "consumer_pid" if role is Role.PROVIDER else "provider_pid"
        body_mine = msg.provider_pid if role is Role.PROVIDER else getattr(msg, "consumer_pid", None)
        body_theirs = getattr(msg, "consumer_pid", None) if role is Role.PROVIDER else msg.provider_pid
        if body_mine != mine:
            raise RemoteProtocolError(
                f"message addressed to {body_mine!r}, but this is negotiation {mine!r}", context=ctx
            )
        if row[theirs_col] and body_theirs and body_theirs != row[theirs_col]:
            raise RemoteProtocolError(
                f"message names the peer's pid {body_theirs!r}, expected {row[theirs_col]!r}", context=ctx
            )
        if fx.guard is None:  # optimistic: the id is recorded by the one write, if it is new
            seen = record_received(conn, KIND, row["id"], msg.id, digest)
            if seen == "duplicate":
                return self._ack(row)  # redelivery: same answer, no change
            if seen == "conflict":
                raise ConflictError(
                    f"message id {msg.id!r} was already used for another message", context=ctx
                )
        try:
            tr = handle(role, State(row["state"]), event)
        except RemoteProtocolError as exc:
            exc.context.update(ctx)
            raise
        values: dict[str, Any] = {}
        if role is Role.CONSUMER and not row["provider_pid"]:
            values["provider_pid"] = msg.provider_pid
        if role is Role.PROVIDER and not row["consumer_pid"] and body_theirs:
            values["consumer_pid"] = body_theirs
        reason = None
        if isinstance(msg, TerminationMessage):
            reason = "terminated by the counter-party: " + ("; ".join(msg.reason) or "no reason given")
            if msg.code:
                reason += f" (code {msg.code})"
            cancel_pending(conn, KIND, row["id"], "negotiation terminated by the counter-party")
        if isinstance(msg, (OfferMessage, ContractRequestMessage)):
            values["offer"] = _dumps(msg.offer)
            values["offer_by"] = "provider" if isinstance(msg, OfferMessage) else "consumer"
        if isinstance(msg, AgreementMessage):
            values["agreement"] = _dumps(msg.agreement)
            values["agreement_id"] = str(msg.agreement.get("@id"))
            values["provider_signature"] = msg.signature
        if isinstance(msg, AgreementVerificationMessage):
            values["consumer_signature"] = msg.signature
        # Held back: the reaction below usually changes the row again (one UPDATE for both).
        row = self._set(conn, row, tr.state, fx, reason=reason, defer=True, **values)
        ack = self._ack(row)  # the state this message led to, before our reaction
        if role is Role.PROVIDER:
            trigger = {
                Event.RECV_COUNTER_REQUEST: "counter",
                Event.RECV_ACCEPTED: "accepted",
                Event.RECV_VERIFICATION: "verification",
            }.get(event)
            if trigger:
                row = self._react_provider(conn, row, trigger, msg, caller, fx)
        else:
            trigger = {Event.RECV_OFFER: "offer", Event.RECV_AGREEMENT: "agreement"}.get(event)
            if trigger:
                row = self._react_consumer(conn, row, trigger, msg, fx)
        self._flush(conn, fx)
        return ack

    # -- reactions ---------------------------------------------------------------------------
    def _script(self, row: Row) -> Script | None:
        if self.scripts is None:
            return None
        return self.scripts(row["dataset_id"])

    def _run_script(
        self, conn: Connection, row: Row, commands: Sequence[str], fx: _Effects, delay_s: float
    ) -> Row:
        self._flush(conn, fx)  # the script writes and reads the row itself
        for i, command in enumerate(commands):
            if command == "nothing":
                continue
            if i > 0:
                # A second scripted send waits for the first ACK: record it as a follow-up.
                extra = _loads(row["extra"]) or {}
                extra["after_ack"] = list(commands[i:])
                save_state(
                    conn,
                    negotiations,
                    row["id"],
                    State(row["state"]),
                    timeout_s=self.config.state_timeout_s,
                    extra=_dumps(extra),
                )
                return (
                    conn.execute(sa.select(negotiations).where(negotiations.c.id == row["id"]))
                    .mappings()
                    .one()
                )
            row = self._command(conn, row, command, fx, delay_s=delay_s, reason="scripted termination")
        return row

    def _command(
        self,
        conn: Connection,
        row: Row,
        command: str,
        fx: _Effects,
        *,
        delay_s: float,
        reason: str | None,
    ) -> Row:
        if command == "offer":
            offer = dict(_loads(row["offer"]) or {})
            offer.setdefault("target", row["dataset_id"])
            offer["assigner"] = self.config.participant_id
            return self._send(
                conn, row, Event.SEND_OFFER, fx, delay_s=delay_s, offer=_dumps(offer), offer_by="provider"
            )
        if command == "agree":
            return self._agree(conn, row, fx, delay_s=delay_s)
        if command == "finalize":
            return self._send(conn, row, Event.SEND_FINALIZED, fx, delay_s=delay_s)
        if command == "terminate":
            return self._send(conn, row, Event.SEND_TERMINATION, fx, delay_s=delay_s, reason=reason)
        if command == "accept":
            return self._send(conn, row, Event.SEND_ACCEPTED, fx, delay_s=delay_s)
        if command == "verify":
            return self._verify(conn, row, fx, delay_s=delay_s)
        if command == "counter":
            return self._send(conn, row, Event.SEND_REQUEST, fx, delay_s=delay_s, offer_by="consumer")
        raise LocalProtocolError(f"unknown command {command!r}")

    def _agree(self, conn: Connection, row: Row, fx: _Effects, *, delay_s: float) -> Row:
        offer = _loads(row["offer"]) or {}
        agreement: dict[str, Any] = {
            "@id": f"urn:uuid:{uuid.uuid4()}",
            "@type": "Agreement",
            "target": row["dataset_id"] or offer.get("target"),
            "timestamp": _now_iso(),
            "assigner": self.config.participant_id,
            "assignee": row["counterparty_id"] or "anonymous",
        }
        for k in _RULE_KEYS:
            if offer.get(k):
                agreement[k] = offer[k]
        if not any(agreement.get(k) for k in _RULE_KEYS):
            agreement["permission"] = [{"action": "use"}]
        signature = sign_agreement(self.signer, agreement) if self.signer is not None else None
        return self._send(
            conn,
            row,
            Event.SEND_AGREEMENT,
            fx,
            delay_s=delay_s,
            agreement=_dumps(agreement),
            agreement_id=agreement["@id"],
            provider_signature=signature,
            extra=_extra_with(row, provider_jwk=self.signer.public_jwk() if self.signer else None),
        )

    def _verify(
        self,
        conn: Connection,
        row: Row,
        fx: _Effects,
        *,
        delay_s: float,
        peer_jwk: dict[str, Any] | None = None,
    ) -> Row:
        agreement = _loads(row["agreement"]) or {}
        signature = sign_agreement(self.signer, agreement) if self.signer is not None else None
        return self._send(
            conn,
            row,
            Event.SEND_VERIFICATION,
            fx,
            delay_s=delay_s,
            consumer_signature=signature,
            extra=_extra_with(
                row, consumer_jwk=self.signer.public_jwk() if self.signer else None, provider_jwk=peer_jwk
            ),
        )

    def _react_provider(
        self,
        conn: Connection,
        row: Row,
        trigger: str,
        msg: NegotiationMessage,
        caller: Caller,
        fx: _Effects,
    ) -> Row:
        delay = self.config.reply_delay_s
        script = self._script(row)
        if script is not None:
            return self._run_script(
                conn, row, script.get(trigger, ()), fx, max(delay, self.config.script_delay_s)
            )
        if trigger in ("request", "counter"):
            extra = _loads(row["extra"]) or {}
            offered = extra.get("offered") or {}
            requested = _loads(row["offer"]) or {}
            verdict = self.decider.decide(offered, requested, caller)
            if not verdict.permitted:
                why = "contract policy denied: " + "; ".join(verdict.reasons or ["no reason given"])
                return self._send(conn, row, Event.SEND_TERMINATION, fx, delay_s=delay, reason=why)
            if self.config.manual_approval:
                return self._set(
                    conn, row, State(row["state"]), fx, pending=True, reason="waiting for manual approval"
                )
            return self._agree(conn, row, fx, delay_s=delay)
        if trigger == "accepted":
            if (_loads(row["extra"]) or {}).get("initiated"):
                # We offered it unasked: the caller must satisfy the offer's policy (verified claims).
                offer = _loads(row["offer"]) or {}
                verdict = self.decider.decide(offer, offer, caller)
                if not verdict.permitted:
                    why = "contract policy denied: " + "; ".join(verdict.reasons or ["no reason given"])
                    return self._send(conn, row, Event.SEND_TERMINATION, fx, delay_s=delay, reason=why)
            return self._agree(conn, row, fx, delay_s=delay)
        if trigger == "verification":
            assert isinstance(msg, AgreementVerificationMessage)
            if msg.signature:
                check = verify_agreement_signature(
                    msg.signature,
                    _loads(row["agreement"]) or {},
                    expected_did=row["counterparty_id"],
                    resolver=self.keys,
                )
                if not check.ok:
                    return self._send(
                        conn,
                        row,
                        Event.SEND_TERMINATION,
                        fx,
                        delay_s=delay,
                        reason=f"consumer countersignature rejected: {check.reason}",
                        consumer_signature=None,
                    )
                return self._send(
                    conn,
                    row,
                    Event.SEND_FINALIZED,
                    fx,
                    delay_s=delay,
                    extra=_extra_with(row, consumer_jwk=check.jwk),
                )
            return self._send(conn, row, Event.SEND_FINALIZED, fx, delay_s=delay)
        return row

    def _react_consumer(
        self, conn: Connection, row: Row, trigger: str, msg: NegotiationMessage, fx: _Effects
    ) -> Row:
        delay = self.config.reply_delay_s
        script = self._script(row)
        if script is not None:
            return self._run_script(
                conn, row, script.get(trigger, ()), fx, max(delay, self.config.script_delay_s)
            )
        extra = _loads(row["extra"]) or {}
        requested = extra.get("requested") or {}
        if trigger == "initial-offer":
            assert isinstance(msg, OfferMessage)
            note = "offer from the provider waiting for the operator"
            if self.config.accept_initial_offers == "auto":
                verdict = self.decider.matches(_UNCONDITIONAL_USE, msg.offer)
                if verdict.permitted:
                    return self._accept(conn, row, fx, delay_s=delay)
                note += " (accepted automatically only for unconditional use): " + "; ".join(verdict.reasons)
            return self._set(conn, row, State(row["state"]), fx, pending=True, reason=note)
        if trigger == "offer":
            assert isinstance(msg, OfferMessage)
            verdict = self.decider.matches(requested, msg.offer)
            if self.config.accept_counter_offers == "manual":
                note = "counter-offer waiting for the operator: " + (
                    "it grants at least what we asked for"
                    if verdict.permitted
                    else "it differs from what we asked for: " + "; ".join(verdict.reasons)
                )
                return self._set(conn, row, State(row["state"]), fx, pending=True, reason=note)
            if verdict.permitted:
                return self._send(conn, row, Event.SEND_ACCEPTED, fx, delay_s=delay)
            why = "offer is not what we asked for: " + "; ".join(verdict.reasons)
            return self._send(conn, row, Event.SEND_TERMINATION, fx, delay_s=delay, reason=why)
        if trigger == "agreement":
            assert isinstance(msg, AgreementMessage)
            problems, provider_jwk = self._check_agreement(row, msg, requested)
            if problems:
                why = "agreement rejected: " + "; ".join(problems)
                return self._send(conn, row, Event.SEND_TERMINATION, fx, delay_s=delay, reason=why)
            return self._verify(conn, row, fx, delay_s=delay, peer_jwk=provider_jwk)
        return row

    def _check_agreement(
        self, row: Row, msg: AgreementMessage, requested: Mapping[str, Any]
    ) -> tuple[list[str], dict[str, Any] | None]:
        """What is wrong with a received agreement (empty if nothing), and the provider's key."""
        a = msg.agreement
        problems: list[str] = []
        jwk = None
        if row["dataset_id"] and str(a.get("target")) != row["dataset_id"]:
            problems.append(
                f"target {a.get('target')!r} is not the dataset we asked for ({row['dataset_id']!r})"
            )
        if str(a.get("assignee")) != self.config.participant_id:
            problems.append(f"assignee {a.get('assignee')!r} is not us ({self.config.participant_id!r})")
        if row["counterparty_id"] and str(a.get("assigner")) != row["counterparty_id"]:
            problems.append(
                f"assigner {a.get('assigner')!r} is not the provider ({row['counterparty_id']!r})"
            )
        if requested:
            verdict = self.decider.matches(requested, a)
            if not verdict.permitted:
                problems.append("policy differs from what we asked for: " + "; ".join(verdict.reasons))
        if msg.signature:
            check = verify_agreement_signature(
                msg.signature, a, expected_did=str(a.get("assigner")), resolver=self.keys
            )
            if not check.ok:
                problems.append(f"provider signature invalid: {check.reason}")
            jwk = check.jwk
        return problems, jwk

    # -- worker callbacks (ProcessHandler) ---------------------------------------------------
    def on_delivered(
        self, conn: Connection, process: Row, message: OutboxMessage, delivery: Delivery
    ) -> None:
        fx = _Effects()
        values: dict[str, Any] = {}
        if (
            process["role"] == "consumer"
            and not process["provider_pid"]
            and isinstance(delivery.response_json, dict)
            and isinstance(delivery.response_json.get("providerPid"), str)
        ):
            values["provider_pid"] = delivery.response_json["providerPid"]
        if process["role"] == "provider" and not process["consumer_pid"]:
            answer = delivery.response_json if isinstance(delivery.response_json, dict) else {}
            cp = answer.get("consumerPid")
            if not (isinstance(cp, str) and cp):
                # Without the consumer's pid we cannot address it: give up here, with the reason.
                cancel_pending(conn, KIND, process["id"], "no consumerPid")
                self._set(
                    conn,
                    process,
                    State.TERMINATED,
                    fx,
                    reason=f"the consumer acknowledged {message.message_type} without a consumerPid",
                )
                self._after_commit(conn, fx)
                return
            values["consumer_pid"] = cp
        role = Role(process["role"])
        tr = acked(role, State(process["state"]), message.message_type)
        row = process
        if tr.state != process["state"] or values:
            row = self._set(conn, process, tr.state, fx, **values)
        extra = _loads(row["extra"]) or {}
        follow = extra.pop("after_ack", None)
        if follow and row["state"] not in TERMINAL_STATES:
            save_state(
                conn,
                negotiations,
                row["id"],
                State(row["state"]),
                timeout_s=self.config.state_timeout_s,
                extra=_dumps(extra),
            )
            row = conn.execute(sa.select(negotiations).where(negotiations.c.id == row["id"])).mappings().one()
            try:
                self._run_script(conn, row, follow, fx, self.config.script_delay_s)
            except DadamError as exc:
                log.warning("scripted follow-up of %s failed: %s", row["id"], exc)
        self._after_commit(conn, fx)

    def on_failed(self, conn: Connection, process: Row, message: OutboxMessage, reason: str) -> None:
        fx = _Effects()
        if process["state"] in TERMINAL_STATES:
            return
        cancel_pending(conn, KIND, process["id"], "negotiation terminated")
        self._set(
            conn,
            process,
            State.TERMINATED,
            fx,
            reason=f"could not deliver {message.message_type}: {reason}",
        )
        self._after_commit(conn, fx)

    def on_timeout(self, conn: Connection, process: Row) -> None:
        fx = _Effects()
        state = State(process["state"])
        waited = time.time() - process["state_since"]
        why = f"timed out in state {state.name} after {waited:.0f} s (limit {self.config.state_timeout_s:.0f} s)"
        cancel_pending(conn, KIND, process["id"], why)
        if process["provider_pid"] and process["consumer_pid"] and state is not State.TERMINATING:
            # Tell the peer, best effort: the negotiation is TERMINATED here whatever happens.
            row = process
            msg = self._build(row, Event.SEND_TERMINATION, why)
            url = row["counterparty_address"].rstrip("/") + self._path(
                Role(row["role"]), row, Event.SEND_TERMINATION
            )
            enqueue(conn, KIND, row["id"], url, msg.to_json(), audience=row["counterparty_id"])
            fx.wake = True
        self._set(conn, process, State.TERMINATED, fx, reason=why)
        self._after_commit(conn, fx)

    def _after_commit(self, conn: Connection, fx: _Effects) -> None:
        # Worker callbacks run inside the worker's transaction: act once it has committed.
        pending = getattr(self._tx_local, "fx", None)
        if pending is None:
            pending = self._tx_local.fx = []
        pending.append(fx)

    def after_commit(self, committed: bool) -> None:
        """Worker hook: the callback transaction ended; send and publish what it prepared."""
        pending = getattr(self._tx_local, "fx", None) or []
        self._tx_local.fx = []
        if committed:
            for fx in pending:
                self._publish(fx)

    # -- management API ----------------------------------------------------------------------
    def start_negotiation(
        self,
        counterparty_address: str,
        *,
        offer_id: str | None = None,
        offer: Mapping[str, Any] | None = None,
        dataset_id: str | None = None,
        counterparty_id: str | None = None,
        callbacks: Iterable[str] = (),
        fetch_offer: bool = True,
    ) -> dict[str, Any]:
        """Consumer: start a negotiation for an offer id (fetched from the provider's catalog
        unless ``fetch_offer`` is false) or for a proposed ``offer`` policy."""
        address = counterparty_address.rstrip("/")
        if offer is None:
            if not offer_id:
                raise ValidationError("give offerId or a proposed offer", errors=["offerId: required"])
            if dataset_id is None:
                parts = offer_id.split(":")
                dataset_id = parts[1] if len(parts) >= 3 else None
            if fetch_offer:
                offer = self._fetch_offer(address, offer_id, dataset_id, counterparty_id)
            else:
                offer = {"@id": offer_id, "@type": "Offer", "permission": [{"action": "use"}]}
        offer = dict(offer)
        offer.setdefault("@type", "Offer")
        if offer_id is None:
            offer_id = str(offer.get("@id") or f"urn:uuid:{uuid.uuid4()}")
        offer["@id"] = offer_id
        if dataset_id is None:
            dataset_id = str(offer.get("target")) if offer.get("target") else None
        if not dataset_id:
            raise ValidationError("which dataset?", errors=["datasetId: required (or offer.target)"])
        offer["target"] = dataset_id
        if counterparty_id is None and isinstance(offer.get("assigner"), str):
            counterparty_id = offer["assigner"]
        for rule_key in _RULE_KEYS:
            for rule in offer.get(rule_key) or []:
                if isinstance(rule, dict):
                    rule.pop("target", None)
        fx = _Effects()
        pid = f"urn:uuid:{uuid.uuid4()}"
        now = time.time()
        hooks = list(callbacks)
        values = {
            "role": "consumer", "consumer_pid": pid, "counterparty_address": address,
            "counterparty_id": counterparty_id, "offer_id": offer_id, "dataset_id": dataset_id,
            "offer": _dumps(offer), "offer_by": "consumer", "callbacks": _dumps(hooks),
            "extra": _dumps({"requested": offer}),
        }  # fmt: skip
        if self._optimistic and not hooks:  # webhook calls would be writes of their own
            return self._start_optimistic(pid, now, values)
        with write_tx(self.engine) as conn:
            row = insert_locked_process(
                conn,
                negotiations,
                pid,
                State.INITIAL,
                timeout_s=self.config.state_timeout_s,
                now=now,
                **values,
            )
            row = self._send(conn, row, Event.SEND_REQUEST, fx)
            script = self._script(row)
            if script is not None and script.get("ack:request"):
                extra = _loads(row["extra"]) or {}
                extra["after_ack"] = list(script["ack:request"])
                save_state(
                    conn,
                    negotiations,
                    pid,
                    State(row["state"]),
                    timeout_s=self.config.state_timeout_s,
                    extra=_dumps(extra),
                )
                row = lock_process(conn, negotiations, pid)
            view = self._view(row)
        self._remember_role(pid, Role.CONSUMER)
        self._publish(fx)
        return view

    def _start_optimistic(self, pid: str, now: float, values: Mapping[str, Any]) -> dict[str, Any]:
        """PostgreSQL: the new row, in its state after the request was queued, and the request
        in one statement without a transaction (decision 0409)."""
        fx = _Effects()
        row: Row = new_process_row(
            negotiations, pid, State.INITIAL, timeout_s=self.config.state_timeout_s, now=now, **values
        )
        fx.guard, fx.new = (0, None), (row, None)
        with autocommit_tx(self.engine) as conn:
            row = self._send(conn, row, Event.SEND_REQUEST, fx)
        self._remember_role(pid, Role.CONSUMER)
        self._keep_row(Role.CONSUMER, pid, fx.final)
        self._publish(fx)
        return self._view(row)

    def offer_negotiation(
        self,
        counterparty_address: str,
        *,
        offer_id: str,
        counterparty_id: str,
        callbacks: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Provider: start a negotiation by offering ``offer_id`` of our catalog to a consumer.

        The offer must be visible to the consumer and its contract policy must permit the consumer
        (claims we recorded for it); otherwise nothing is sent and the reasons are raised."""
        if self.offers is None:
            raise NotFoundError(f"offer {offer_id!r} is not known (no catalog)")
        claims = dict(self.claims_for(counterparty_id)) if self.claims_for is not None else {}
        caller = Caller(did=counterparty_id, claims=claims)
        resolved = self.offers.resolve_offer(offer_id, caller)
        offered = dict(resolved.offer_policy_json)
        verdict = self.decider.decide(offered, offered, caller)
        if not verdict.permitted:
            raise ValidationError(
                f"the contract policy of offer {offer_id!r} does not permit {counterparty_id}",
                errors=verdict.reasons or ["denied"],
            )
        dataset_id = str(resolved.dataset.id)
        offer = {**offered, "@id": offer_id, "@type": "Offer", "target": dataset_id}
        offer["assigner"] = self.config.participant_id
        fx = _Effects()
        pid = f"urn:uuid:{uuid.uuid4()}"
        now = time.time()
        with write_tx(self.engine) as conn:
            row: Row = insert_locked_process(
                conn,
                negotiations,
                pid,
                State.INITIAL,
                timeout_s=self.config.state_timeout_s,
                now=now,
                role="provider",
                provider_pid=pid,
                counterparty_address=counterparty_address.rstrip("/"),
                counterparty_id=counterparty_id,
                offer_id=offer_id,
                dataset_id=dataset_id,
                offer=_dumps(offer),
                offer_by="provider",
                callbacks=_dumps(list(callbacks)),
                extra=_dumps({"offered": offered, "claims": claims, "initiated": "provider"}),
            )
            row = self._send(conn, row, Event.SEND_OFFER, fx)
            view = self._view(row)
        self._remember_role(pid, Role.PROVIDER)
        self._publish(fx)
        return view

    def _fetch_offer(
        self, address: str, offer_id: str, dataset_id: str | None, counterparty_id: str | None
    ) -> dict[str, Any]:
        if not dataset_id:
            raise ValidationError(
                f"cannot tell the dataset of offer {offer_id!r}",
                errors=["datasetId: required for this offer id"],
            )
        auth = self.auth_for(counterparty_id) if self.auth_for else None
        url = f"{address}/catalog/datasets/{dataset_id}"
        try:
            resp = self.http.get(url, auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            raise DadamError(f"cannot fetch dataset {dataset_id!r} from {address}: {exc!r}") from None
        if resp.status_code != 200:
            raise NotFoundError(
                f"provider answered {resp.status_code} for dataset {dataset_id!r}", context={"url": url}
            )
        ds = resp.json()
        policies = ds.get("hasPolicy") or ds.get("odrl:hasPolicy") or []
        if isinstance(policies, dict):
            policies = [policies]
        for p in policies:
            if isinstance(p, dict) and p.get("@id") == offer_id:
                found = dict(p)
                found["target"] = dataset_id
                return found
        raise NotFoundError(
            f"dataset {dataset_id!r} has no offer {offer_id!r}",
            context={"offers": ", ".join(str(p.get("@id")) for p in policies if isinstance(p, dict))},
        )

    def get(self, nid: str) -> dict[str, Any]:
        with write_tx(self.engine) as conn:  # SQLite: every transaction takes the write lock
            row = conn.execute(sa.select(negotiations).where(negotiations.c.id == nid)).mappings().first()
        if row is None:
            raise NotFoundError(f"no negotiation {nid!r}")
        return self._view(row)

    def list_negotiations(
        self,
        *,
        offset: int = 0,
        limit: int = 50,
        state: str | None = None,
        role: str | None = None,
        pending: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Negotiations, oldest first; ``pending=True``: only those waiting for an operator's decision."""
        stmt = sa.select(negotiations).order_by(negotiations.c.created_at, negotiations.c.id)
        if role:
            stmt = stmt.where(negotiations.c.role == role)
        if pending is not None:
            stmt = stmt.where(negotiations.c.pending == pending)
        if state:
            try:
                wanted = State[state.upper()]
            except KeyError:
                raise ValidationError(
                    f"unknown state {state!r}", errors=[f"state: one of {', '.join(State.__members__)}"]
                ) from None
            ing = [s for s in State if wire_state(s) == wanted.name]
            stmt = stmt.where(negotiations.c.state.in_([int(s) for s in ing]))
        with write_tx(self.engine) as conn:  # SQLite: every transaction takes the write lock
            rows = conn.execute(stmt.offset(offset).limit(limit)).mappings().all()
        return [self._view(r) for r in rows]

    def terminate(self, nid: str, reason: str) -> dict[str, Any]:
        """Terminate a negotiation we take part in: TERMINATION message to the peer, then TERMINATED."""
        fx = _Effects()
        with write_tx(self.engine) as conn:
            row: Row = lock_process(conn, negotiations, nid)
            if State(row["state"]) in TERMINAL_STATES or row["state"] == State.TERMINATING:
                raise LocalProtocolError(
                    f"negotiation {nid!r} is already {wire_state(State(row['state']))}", context={"id": nid}
                )
            cancel_pending(conn, KIND, nid, "terminated by the user")
            if not (row["provider_pid"] and row["consumer_pid"]):
                row = self._set(conn, row, State.TERMINATED, fx, reason=f"terminated by the user: {reason}")
            else:
                row = self._send(
                    conn, row, Event.SEND_TERMINATION, fx, reason=f"terminated by the user: {reason}"
                )
            view = self._view(row)
        self._publish(fx)
        return view

    def approve(self, nid: str) -> dict[str, Any]:
        """Provider: agree to a negotiation waiting for manual approval."""
        fx = _Effects()
        with write_tx(self.engine) as conn:
            row: Row = lock_process(conn, negotiations, nid)
            if row["role"] != "provider" or not row["pending"]:
                raise ConflictError(f"negotiation {nid!r} is not waiting for approval")
            row = self._agree(conn, row, fx, delay_s=0.0)
            view = self._view(row)
        self._publish(fx)
        return view

    def reject(self, nid: str, reason: str) -> dict[str, Any]:
        """Terminate a negotiation waiting for the operator, with the operator's reason (sent to the peer)."""
        if not reason.strip():
            raise ValidationError("a reason is required", errors=["reason: non-empty text for the peer"])
        fx = _Effects()
        with write_tx(self.engine) as conn:
            row: Row = lock_process(conn, negotiations, nid)
            if not row["pending"]:
                raise ConflictError(f"negotiation {nid!r} is not waiting for a decision")
            why = f"rejected by the operator: {reason.strip()}"
            cancel_pending(conn, KIND, nid, why)
            row = self._send(conn, row, Event.SEND_TERMINATION, fx, reason=why)
            view = self._view(row)
        self._publish(fx)
        return view

    def accept(self, nid: str) -> dict[str, Any]:
        """Consumer: accept the provider's offer the negotiation is waiting on (event ACCEPTED).

        The accepted offer becomes what the agreement is checked against."""
        fx = _Effects()
        with write_tx(self.engine) as conn:
            row: Row = lock_process(conn, negotiations, nid)
            if row["role"] != "consumer" or not row["pending"] or row["state"] != State.OFFERED:
                raise ConflictError(f"negotiation {nid!r} is not waiting for us to accept an offer")
            row = self._accept(conn, row, fx, delay_s=0.0)
            view = self._view(row)
        self._publish(fx)
        return view

    def _accept(self, conn: Connection, row: Row, fx: _Effects, *, delay_s: float) -> Row:
        return self._send(
            conn,
            row,
            Event.SEND_ACCEPTED,
            fx,
            delay_s=delay_s,
            extra=_extra_with(row, requested=_loads(row["offer"])),
        )

    def counter_offer(self, nid: str, offer: Mapping[str, Any]) -> dict[str, Any]:
        """Answer the peer's offer with another one: a provider sends a ContractOfferMessage
        instead of agreeing; a consumer waiting on an offer sends a new ContractRequestMessage."""
        fx = _Effects()
        with write_tx(self.engine) as conn:
            row: Row = lock_process(conn, negotiations, nid)
            new_offer = dict(offer)
            new_offer.setdefault("@type", "Offer")
            new_offer.setdefault("@id", f"urn:uuid:{uuid.uuid4()}")
            new_offer["target"] = row["dataset_id"]
            if row["role"] == "provider":
                new_offer["assigner"] = self.config.participant_id
                row = self._send(
                    conn, row, Event.SEND_OFFER, fx, offer=_dumps(new_offer), offer_by="provider"
                )
            else:
                if not row["pending"] or row["state"] != State.OFFERED:
                    raise ConflictError(f"negotiation {nid!r} is not waiting for our answer to an offer")
                for rule_key in _RULE_KEYS:
                    for rule in new_offer.get(rule_key) or []:
                        if isinstance(rule, dict):
                            rule.pop("target", None)
                row = self._send(
                    conn,
                    row,
                    Event.SEND_REQUEST,
                    fx,
                    offer=_dumps(new_offer),
                    offer_by="consumer",
                    extra=_extra_with(row, requested=new_offer),
                )
            view = self._view(row)
        self._publish(fx)
        return view

    def export(self, nid: str) -> dict[str, Any]:
        """The agreement of a negotiation with both signatures and public keys (offline-verifiable)."""
        with write_tx(self.engine) as conn:  # SQLite: every transaction takes the write lock
            row = conn.execute(sa.select(negotiations).where(negotiations.c.id == nid)).mappings().first()
        if row is None:
            raise NotFoundError(f"no negotiation {nid!r}")
        return export_row(row)


def _one_write(fx: _Effects, work: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
    """Run the work of an optimistic path (one guarded write, decisions 0408 and 0409). None:
    nothing was written (the write did not apply, or anything failed before it), so the locking
    path handles the message from the start and gives the right answer. A replayed token and any
    error after the write are raised."""
    try:
        return work()
    except StaleWrite:
        return None
    except TokenError:
        raise  # refused before anything was written
    except Exception:
        if fx.guard_spent:
            raise  # the write was sent: the usual error handling (a resend finds the id)
        return None


def _record_in_tx(conn: Connection, claim: ReplayClaim, replay: sa.Table) -> None:
    """Add a token id to the replay table in the write transaction of ``conn``: TokenError at
    once if it was there; marked recorded when the transaction commits (if it rolls back, the
    id is not recorded: the fast lane then records it on its own)."""
    dialect = conn.dialect.name

    def build() -> Any:
        if dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(replay).on_conflict_do_nothing().returning(replay.c.token_key)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(replay).on_conflict_do_nothing().returning(replay.c.token_key)

    stmt = cached_statement(("replay_add_new", dialect), build)
    if run(conn, stmt, {"token_key": claim.key, "expires_at": claim.expires_at}).first() is None:
        claim.settle(False)  # raises: a replay
    on_commit(conn, functools.partial(claim.settle, True))


def _find_recording(role: Role, pid_column: sa.Column[Any], replay: sa.Table) -> Any:
    """PostgreSQL: add the token id ``:_tkey`` to the replay table (``INSERT ... ON CONFLICT DO
    NOTHING`` in a CTE) and read the negotiation ``:_pid``, in one statement. One row always:
    ``_fresh`` (1: the id was new) and the negotiation's columns (NULL when there is none)."""
    from sqlalchemy.dialects import postgresql

    tok = (
        postgresql.insert(replay)
        .values(token_key=sa.bindparam("_tkey"), expires_at=sa.bindparam("_texp"))
        .on_conflict_do_nothing()
        .returning(replay.c.token_key)
        .cte("tok")
    )
    fresh = sa.select(sa.func.count().label("_fresh")).select_from(tok).subquery("fresh")
    on = sa.and_(negotiations.c.role == role.value, pid_column == sa.bindparam("_pid"))
    return sa.select(fresh.c._fresh, negotiations).select_from(fresh.outerjoin(negotiations, on))


def export_row(row: Row) -> dict[str, Any]:
    """:func:`~contracts._signing.export_agreement` for a stored negotiation row."""
    agreement = _loads(row["agreement"])
    if not agreement:
        raise NotFoundError(
            f"negotiation {row['id']!r} has no agreement (state {wire_state(State(row['state']))})"
        )
    extra = _loads(row["extra"]) or {}
    return export_agreement(
        agreement,
        provider_signature=row["provider_signature"],
        consumer_signature=row["consumer_signature"],
        provider_jwk=extra.get("provider_jwk"),
        consumer_jwk=extra.get("consumer_jwk"),
        negotiation={
            "id": row["id"],
            "role": row["role"],
            "providerPid": row["provider_pid"],
            "consumerPid": row["consumer_pid"],
            "state": wire_state(State(row["state"])),
        },
    )


def _iri(value: Any) -> str | None:
    """An id as sent: a string or ``{"@id": ...}``."""
    if isinstance(value, Mapping):
        value = value.get("@id")
    return str(value) if value else None


def _event_for(role: Role, msg: NegotiationMessage) -> Event:
    if isinstance(msg, ContractRequestMessage):
        return Event.RECV_COUNTER_REQUEST if msg.provider_pid else Event.RECV_REQUEST
    if isinstance(msg, OfferMessage):
        return Event.RECV_OFFER if msg.consumer_pid else Event.RECV_INITIAL_OFFER
    if isinstance(msg, AgreementMessage):
        return Event.RECV_AGREEMENT
    if isinstance(msg, AgreementVerificationMessage):
        return Event.RECV_VERIFICATION
    if isinstance(msg, NegotiationEventMessage):
        return Event.RECV_ACCEPTED if msg.event_type == "ACCEPTED" else Event.RECV_FINALIZED
    return Event.RECV_TERMINATION
