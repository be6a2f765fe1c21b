"""The sans-IO negotiation machines: every DSP transition, every invalid one, -ING states."""

from __future__ import annotations

import pytest

from connector.errors import LocalProtocolError, RemoteProtocolError
from contracts._negotiation_states import (
    CONSUMER_TRANSITIONS,
    PROVIDER_TRANSITIONS,
    SENT_FROM,
    Event,
    Role,
    State,
    acked,
    handle,
    transitions_for,
    wire_state,
)

P, C = Role.PROVIDER, Role.CONSUMER
E, S = Event, State


@pytest.mark.parametrize(
    ("role", "state", "event", "expected"),
    [
        # dsp.md §5 table, seen from the receiver
        (P, S.INITIAL, E.RECV_REQUEST, S.REQUESTED),
        (C, S.REQUESTED, E.RECV_OFFER, S.OFFERED),
        (C, S.REQUESTED, E.RECV_AGREEMENT, S.AGREED),
        (P, S.OFFERED, E.RECV_COUNTER_REQUEST, S.REQUESTED),
        (P, S.OFFERED, E.RECV_ACCEPTED, S.ACCEPTED),
        (C, S.ACCEPTED, E.RECV_AGREEMENT, S.AGREED),
        (P, S.AGREED, E.RECV_VERIFICATION, S.VERIFIED),
        (C, S.VERIFIED, E.RECV_FINALIZED, S.FINALIZED),
        (P, S.REQUESTED, E.RECV_TERMINATION, S.TERMINATED),
        (C, S.OFFERED, E.RECV_TERMINATION, S.TERMINATED),
        (P, S.VERIFIED, E.RECV_TERMINATION, S.TERMINATED),
        (C, S.AGREED, E.RECV_TERMINATION, S.TERMINATED),
        # the peer's next message may overtake the ACK of ours
        (P, S.AGREEING, E.RECV_VERIFICATION, S.VERIFIED),
        (C, S.REQUESTING, E.RECV_OFFER, S.OFFERED),
        (C, S.VERIFYING, E.RECV_FINALIZED, S.FINALIZED),
    ],
)
def test_allowed_received(role: Role, state: State, event: Event, expected: State) -> None:
    tr = handle(role, state, event)
    assert tr.state is expected and tr.send is None


@pytest.mark.parametrize(
    ("role", "state", "event"),
    [
        (P, S.REQUESTED, E.RECV_COUNTER_REQUEST),  # second counter-offer (CN:03-04)
        (P, S.OFFERED, E.RECV_VERIFICATION),  # CN:03-02
        (P, S.ACCEPTED, E.RECV_VERIFICATION),  # CN:03-03
        (P, S.FINALIZED, E.RECV_TERMINATION),  # CN:03-01
        (P, S.REQUESTED, E.RECV_ACCEPTED),  # the current offer came from the consumer
        (P, S.OFFERED, E.RECV_FINALIZED),  # FINALIZED sent by a consumer
        (C, S.REQUESTED, E.RECV_FINALIZED),  # CN_C:03-01
        (C, S.OFFERED, E.RECV_AGREEMENT),  # CN_C:03-02
        (C, S.OFFERED, E.RECV_FINALIZED),  # CN_C:03-03
        (C, S.ACCEPTED, E.RECV_FINALIZED),  # CN_C:03-04
        (C, S.ACCEPTED, E.RECV_OFFER),  # CN_C:03-05
        (C, S.AGREED, E.RECV_FINALIZED),  # CN_C:03-06
        (C, S.OFFERED, E.RECV_ACCEPTED),  # ACCEPTED sent by a provider
        (C, S.TERMINATED, E.RECV_TERMINATION),
        (C, S.FINALIZED, E.RECV_AGREEMENT),
    ],
)
def test_invalid_received_is_a_remote_protocol_error(role: Role, state: State, event: Event) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        handle(role, state, event)
    assert info.value.status_hint == 400
    assert wire_state(state) in str(info.value)


def test_sends_enter_ing_states_and_acks_complete_them() -> None:
    tr = handle(P, S.REQUESTED, E.SEND_AGREEMENT)
    assert tr.state is S.AGREEING and tr.send is E.SEND_AGREEMENT
    assert handle(P, S.AGREEING, E.ACKED).state is S.AGREED
    assert handle(C, S.INITIAL, E.SEND_REQUEST).state is S.REQUESTING
    assert handle(C, S.REQUESTING, E.ACKED).state is S.REQUESTED
    # a late ACK changes nothing
    assert handle(C, S.OFFERED, E.ACKED).state is S.OFFERED
    with pytest.raises(LocalProtocolError):
        handle(P, S.OFFERED, E.SEND_FINALIZED)
    with pytest.raises(LocalProtocolError):
        handle(C, S.FINALIZED, E.SEND_TERMINATION)


def test_ing_states_are_shown_as_the_state_they_lead_to() -> None:
    assert wire_state(S.AGREEING) == "AGREED"
    assert wire_state(S.TERMINATING) == "TERMINATED"
    assert wire_state(S.OFFERED) == "OFFERED"


def test_tables_only_use_events_of_the_right_side() -> None:
    provider_recv = {e for row in PROVIDER_TRANSITIONS.values() for e in row if e.received}
    consumer_recv = {e for row in CONSUMER_TRANSITIONS.values() for e in row if e.received}
    assert E.RECV_ACCEPTED in provider_recv and E.RECV_ACCEPTED not in consumer_recv
    assert E.RECV_FINALIZED in consumer_recv and E.RECV_FINALIZED not in provider_recv
    assert E.RECV_AGREEMENT not in provider_recv and E.RECV_VERIFICATION not in consumer_recv
    for table in (PROVIDER_TRANSITIONS, CONSUMER_TRANSITIONS):
        assert table[S.FINALIZED] == {} and table[S.TERMINATED] == {}
        for state, row in table.items():
            if state not in (S.FINALIZED, S.TERMINATED):
                assert E.RECV_TERMINATION in row, f"termination must be accepted in {state.name}"


def test_a_late_ack_does_not_complete_a_newer_send() -> None:
    # The provider's agreement arrived before the ACK of our request was recorded; we answered
    # with the verification already. The request's ACK must not mark the verification delivered.
    assert acked(C, S.VERIFYING, "ContractRequestMessage").state is S.VERIFYING
    assert acked(C, S.VERIFYING, "ContractAgreementVerificationMessage").state is S.VERIFIED
    assert acked(P, S.FINALIZING, "ContractAgreementMessage").state is S.FINALIZING
    assert acked(P, S.FINALIZING, "ContractNegotiationEventMessage").state is S.FINALIZED
    assert acked(C, S.TERMINATING, "ContractRequestMessage").state is S.TERMINATING


@pytest.mark.parametrize("role", list(Role))
def test_every_send_enters_the_state_its_ack_completes(role: Role) -> None:
    """SENT_FROM agrees with the table: each SEND_* target is the "-ING" state of one message
    type, and an ACK there moves it on."""
    send_targets = {
        tr.state for row in transitions_for(role).values() for tr in row.values() if tr.send is not None
    }
    sent_from = {state for (r, _), state in SENT_FROM.items() if r is role}
    assert send_targets == sent_from
    for state in sent_from:
        assert handle(role, state, E.ACKED).state is not state
