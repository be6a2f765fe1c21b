"""The transfer machines as data: every TP/TP_C transition of dsp-conformance.md, allowed or refused."""

from __future__ import annotations

import pytest

from connector.errors import LocalProtocolError, RemoteProtocolError
from contracts._transfer_states import Command, TState, command, receive, wire_state

S, T, C, U = (
    "TransferStartMessage",
    "TransferTerminationMessage",
    "TransferCompletionMessage",
    "TransferSuspensionMessage",
)


@pytest.mark.parametrize(
    ("role", "state", "message", "expected"),
    [
        ("provider", TState.STARTED, C, TState.COMPLETED),  # TP:02-02
        ("provider", TState.STARTED, T, TState.TERMINATED),  # TP:02-01
        ("provider", TState.STARTED, U, TState.SUSPENDED),  # TP:02-03
        ("provider", TState.SUSPENDED, T, TState.TERMINATED),
        ("provider", TState.SUSPENDED, S, TState.STARTED),  # consumer resumes
        ("provider", TState.REQUESTED, T, TState.TERMINATED),  # TP:02-05
        ("consumer", TState.REQUESTED, S, TState.STARTED),  # TP_C:01-01
        ("consumer", TState.REQUESTED, T, TState.TERMINATED),  # TP_C:01-05
        ("consumer", TState.STARTED, U, TState.SUSPENDED),
        ("consumer", TState.SUSPENDED, S, TState.STARTED),  # TP_C:01-04
        ("consumer", TState.STARTED, C, TState.COMPLETED),
    ],
)
def test_allowed(role: str, state: TState, message: str, expected: TState) -> None:
    assert receive(role, state, message) == expected


@pytest.mark.parametrize(
    ("role", "state", "message"),
    [
        ("provider", TState.REQUESTED, C),  # TP:03-01
        ("provider", TState.REQUESTED, U),  # TP:03-02
        ("provider", TState.SUSPENDED, C),  # TP:03-03
        ("provider", TState.TERMINATED, S),  # TP:03-04
        ("provider", TState.TERMINATED, U),  # TP:03-05
        ("provider", TState.TERMINATED, C),  # TP:03-06
        ("provider", TState.REQUESTED, S),  # the consumer cannot start from REQUESTED
        ("consumer", TState.REQUESTED, C),  # TP_C:03-01
        ("consumer", TState.REQUESTED, U),  # TP_C:03-02
        ("consumer", TState.SUSPENDED, C),  # TP_C:03-03
        ("consumer", TState.TERMINATED, S),  # TP_C:03-04
        ("consumer", TState.COMPLETED, T),
    ],
)
def test_refused_with_a_protocol_error(role: str, state: TState, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match="not allowed in state"):
        receive(role, state, message)


def test_commands_and_wire_names() -> None:
    assert command("provider", TState.REQUESTED, Command.START) == (S, TState.STARTING, TState.STARTED)
    assert command("consumer", TState.SUSPENDED, Command.RESUME) == (S, TState.RESUMING, TState.STARTED)
    with pytest.raises(LocalProtocolError, match="cannot start"):
        command("consumer", TState.REQUESTED, Command.START)
    with pytest.raises(LocalProtocolError, match="in state TERMINATED"):
        command("provider", TState.TERMINATED, Command.TERMINATE)
    # -ING states read on the wire as the state the process is still in
    assert wire_state(TState.STARTING) == "REQUESTED"
    assert wire_state(TState.SUSPENDING) == "STARTED"
    assert wire_state(TState.RESUMING) == "SUSPENDED"
