"""The contract negotiation state machines of DSP 2025-1, as data. Sans-IO.

Rules of this file: everything that decides whether a negotiation may move lives here; nothing
here does I/O or knows about HTTP, databases or policies. Drivers (:mod:`contracts._manager`)
feed events in and act on what comes out.

Theory of operation. Each role (provider, consumer) has one transition table
``state -> event -> Transition``. Events are of three kinds:

* ``RECV_*``: a DSP message arrived from the peer. Not in the table -> :class:`RemoteProtocolError`
  (the HTTP edge answers 400 ``ContractNegotiationError``; the state is unchanged).
* ``SEND_*``: we decided to send a message (policy said yes, a script, a management command).
  The negotiation enters the "-ING" state and the message goes to the outbox. Not in the table ->
  :class:`LocalProtocolError`.
* ``ACKED``: the peer acknowledged (2xx) the message we sent: "-ING" becomes "-ED", as the spec
  says a state is entered only when the counter-party acknowledges. An ACK arriving in any other
  state (the peer's next message overtook it) changes nothing.

A message the peer sends is also accepted in the "-ING" state that precedes the state it is valid
in (e.g. a verification while we are still AGREEING): the peer can only send it after it received
our message, so its ACK is merely late. On the wire and in GET answers an "-ING" state is shown as
the "-ED" state it leads to (:func:`wire_state`).

States use EDC's numeric codes so ordering comparisons work and stored rows are readable.
A provider-initiated negotiation starts with the provider sending an initial ContractOfferMessage
(INITIAL -> OFFERING) and the consumer receiving it (INITIAL -> OFFERED); from OFFERED on it runs
like any other negotiation.
``python -m contracts.diagram`` renders these tables as Mermaid diagrams (docs/negotiation.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from connector.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CONSUMER_TRANSITIONS",
    "PROVIDER_TRANSITIONS",
    "SENT_FROM",
    "TERMINAL_STATES",
    "Event",
    "Role",
    "State",
    "Transition",
    "acked",
    "handle",
    "transitions_for",
    "wire_state",
]


class Role(enum.StrEnum):
    PROVIDER = "provider"
    CONSUMER = "consumer"


class State(enum.IntEnum):
    """Negotiation states with EDC-compatible codes. "-ING" states are internal (pending send)."""

    INITIAL = 50
    REQUESTING = 100
    REQUESTED = 200
    OFFERING = 300
    OFFERED = 400
    ACCEPTING = 700
    ACCEPTED = 800
    AGREEING = 825
    AGREED = 850
    VERIFYING = 1050
    VERIFIED = 1100
    FINALIZING = 1150
    FINALIZED = 1200
    TERMINATING = 1300
    TERMINATED = 1400


TERMINAL_STATES = frozenset({State.FINALIZED, State.TERMINATED})

_ING_TO_ED = {
    State.INITIAL: State.REQUESTED,
    State.REQUESTING: State.REQUESTED,
    State.OFFERING: State.OFFERED,
    State.ACCEPTING: State.ACCEPTED,
    State.AGREEING: State.AGREED,
    State.VERIFYING: State.VERIFIED,
    State.FINALIZING: State.FINALIZED,
    State.TERMINATING: State.TERMINATED,
}


def wire_state(state: State) -> str:
    """The DSP state token shown to peers and users ("-ING" shown as the "-ED" it leads to)."""
    return _ING_TO_ED.get(state, state).name


class Event(enum.StrEnum):
    RECV_REQUEST = "recv ContractRequestMessage (initial)"
    RECV_COUNTER_REQUEST = "recv ContractRequestMessage (counter-offer)"
    RECV_OFFER = "recv ContractOfferMessage"
    RECV_INITIAL_OFFER = "recv ContractOfferMessage (initial)"
    RECV_ACCEPTED = "recv event ACCEPTED"
    RECV_AGREEMENT = "recv ContractAgreementMessage"
    RECV_VERIFICATION = "recv ContractAgreementVerificationMessage"
    RECV_FINALIZED = "recv event FINALIZED"
    RECV_TERMINATION = "recv ContractNegotiationTerminationMessage"
    SEND_REQUEST = "send ContractRequestMessage"
    SEND_OFFER = "send ContractOfferMessage"
    SEND_ACCEPTED = "send event ACCEPTED"
    SEND_AGREEMENT = "send ContractAgreementMessage"
    SEND_VERIFICATION = "send ContractAgreementVerificationMessage"
    SEND_FINALIZED = "send event FINALIZED"
    SEND_TERMINATION = "send ContractNegotiationTerminationMessage"
    ACKED = "peer acknowledged"

    @property
    def received(self) -> bool:
        return self.name.startswith("RECV_")


@dataclass(frozen=True, slots=True)
class Transition:
    """Where an event leads: the new state and the message kind to send (an Event SEND_*), if any."""

    state: State
    send: Event | None = None


S, E, T = State, Event, Transition

_NON_TERMINAL = [s for s in State if s not in TERMINAL_STATES]

# fmt: off
PROVIDER_TRANSITIONS: dict[State, dict[Event, Transition]] = {
    S.INITIAL:     {E.RECV_REQUEST: T(S.REQUESTED),
                    E.SEND_OFFER: T(S.OFFERING, E.SEND_OFFER)},
    S.REQUESTED:   {E.SEND_OFFER: T(S.OFFERING, E.SEND_OFFER),
                    E.SEND_AGREEMENT: T(S.AGREEING, E.SEND_AGREEMENT)},
    S.OFFERING:    {E.ACKED: T(S.OFFERED),
                    E.RECV_COUNTER_REQUEST: T(S.REQUESTED), E.RECV_ACCEPTED: T(S.ACCEPTED)},
    S.OFFERED:     {E.RECV_COUNTER_REQUEST: T(S.REQUESTED), E.RECV_ACCEPTED: T(S.ACCEPTED)},
    S.ACCEPTED:    {E.SEND_AGREEMENT: T(S.AGREEING, E.SEND_AGREEMENT)},
    S.AGREEING:    {E.ACKED: T(S.AGREED), E.RECV_VERIFICATION: T(S.VERIFIED)},
    S.AGREED:      {E.RECV_VERIFICATION: T(S.VERIFIED)},
    S.VERIFIED:    {E.SEND_FINALIZED: T(S.FINALIZING, E.SEND_FINALIZED)},
    S.FINALIZING:  {E.ACKED: T(S.FINALIZED)},
    S.TERMINATING: {E.ACKED: T(S.TERMINATED)},
}

CONSUMER_TRANSITIONS: dict[State, dict[Event, Transition]] = {
    S.INITIAL:     {E.SEND_REQUEST: T(S.REQUESTING, E.SEND_REQUEST),
                    E.RECV_INITIAL_OFFER: T(S.OFFERED)},
    S.REQUESTING:  {E.ACKED: T(S.REQUESTED),
                    E.RECV_OFFER: T(S.OFFERED), E.RECV_AGREEMENT: T(S.AGREED)},
    S.REQUESTED:   {E.RECV_OFFER: T(S.OFFERED), E.RECV_AGREEMENT: T(S.AGREED)},
    S.OFFERED:     {E.SEND_REQUEST: T(S.REQUESTING, E.SEND_REQUEST),
                    E.SEND_ACCEPTED: T(S.ACCEPTING, E.SEND_ACCEPTED)},
    S.ACCEPTING:   {E.ACKED: T(S.ACCEPTED), E.RECV_AGREEMENT: T(S.AGREED)},
    S.ACCEPTED:    {E.RECV_AGREEMENT: T(S.AGREED)},
    S.AGREED:      {E.SEND_VERIFICATION: T(S.VERIFYING, E.SEND_VERIFICATION)},
    S.VERIFYING:   {E.ACKED: T(S.VERIFIED), E.RECV_FINALIZED: T(S.FINALIZED)},
    S.VERIFIED:    {E.RECV_FINALIZED: T(S.FINALIZED)},
    S.TERMINATING: {E.ACKED: T(S.TERMINATED)},
}
# fmt: on

# Termination "MAY be sent at any state" (non-terminal), by either party.
for _table in (PROVIDER_TRANSITIONS, CONSUMER_TRANSITIONS):
    for _s in _NON_TERMINAL:
        row = _table.setdefault(_s, {})
        row.setdefault(E.RECV_TERMINATION, T(S.TERMINATED))
        if _s is not S.TERMINATING:
            row.setdefault(E.SEND_TERMINATION, T(S.TERMINATING, E.SEND_TERMINATION))
    for _s in TERMINAL_STATES:
        _table.setdefault(_s, {})
del _table, _s


#: The "-ING" state each message we send is sent from (by its ``@type``): its ACK moves that
#: state on, and only that state. The negotiation may have moved on before a late ACK is recorded
#: (e.g. the agreement arrived before the ACK of our request was recorded, and we are VERIFYING
#: already): that ACK must not complete a newer send.
SENT_FROM: dict[tuple[Role, str], State] = {
    (Role.PROVIDER, "ContractOfferMessage"): S.OFFERING,
    (Role.PROVIDER, "ContractAgreementMessage"): S.AGREEING,
    (Role.PROVIDER, "ContractNegotiationEventMessage"): S.FINALIZING,
    (Role.PROVIDER, "ContractNegotiationTerminationMessage"): S.TERMINATING,
    (Role.CONSUMER, "ContractRequestMessage"): S.REQUESTING,
    (Role.CONSUMER, "ContractNegotiationEventMessage"): S.ACCEPTING,
    (Role.CONSUMER, "ContractAgreementVerificationMessage"): S.VERIFYING,
    (Role.CONSUMER, "ContractNegotiationTerminationMessage"): S.TERMINATING,
}


def acked(role: Role, state: State, message_type: str) -> Transition:
    """The peer acknowledged a ``message_type`` we sent: ``handle(ACKED)`` if we are still in the
    state that message was sent from, else the unchanged state (a late ACK)."""
    sent_from = SENT_FROM.get((role, message_type))
    if sent_from is not None and sent_from is not state:
        return Transition(state)
    return handle(role, state, Event.ACKED)


def transitions_for(role: Role) -> dict[State, dict[Event, Transition]]:
    return PROVIDER_TRANSITIONS if role is Role.PROVIDER else CONSUMER_TRANSITIONS


def handle(role: Role, state: State, event: Event) -> Transition:
    """Apply ``event`` to a negotiation of ``role`` in ``state``.

    Returns the transition (new state, message to send). Raises RemoteProtocolError for a
    received message the state does not allow, LocalProtocolError for a send we may not make.
    A late ACK (no longer in the "-ING" state) returns the unchanged state.
    """
    row = transitions_for(role)[state]
    tr = row.get(event)
    if tr is not None:
        return tr
    if event is Event.ACKED:
        return Transition(state)
    shown = wire_state(state)
    if event.received:
        raise RemoteProtocolError(
            f"{event.value.removeprefix('recv ')} is not allowed in state {shown} ({role} side)",
            context={"state": shown},
        )
    raise LocalProtocolError(f"cannot {event.value} in state {shown} ({role} side)", context={"state": shown})
