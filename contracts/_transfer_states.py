"""Transfer process state machines (DSP 2025-1), sans-IO: the transition tables as data.

Everything that affects transfer transitions lives in this file. ``-ING`` states are internal:
this connector has sent a message and waits for the peer's acknowledgement; on the wire (GET,
ACK bodies) they read as the state the process is still in (see :func:`wire_state`).

* :data:`RECEIVE` — role → current state → received message type → next state. A message not in
  the table for the current state is a protocol error (400 ``TransferError``, state unchanged).
* :data:`COMMANDS` — role → command → (states it may start from, message sent, state while the
  message is unacknowledged, state entered when the peer acknowledges it).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from connector.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "COMMANDS",
    "RECEIVE",
    "TERMINAL",
    "Command",
    "TState",
    "command",
    "receive",
    "wire_state",
]


class TState(enum.IntEnum):
    """Transfer states, EDC-compatible codes."""

    REQUESTING = 400
    REQUESTED = 500
    STARTING = 550
    STARTED = 600
    SUSPENDING = 650
    SUSPENDED = 700
    RESUMING = 720
    COMPLETING = 750
    COMPLETED = 800
    TERMINATING = 825
    TERMINATED = 850


TERMINAL = frozenset({TState.COMPLETED, TState.TERMINATED})

REQ, START, SUSP, COMPL, TERM = (
    "TransferRequestMessage",
    "TransferStartMessage",
    "TransferSuspensionMessage",
    "TransferCompletionMessage",
    "TransferTerminationMessage",
)

#: role -> state -> received message type -> next state
RECEIVE: Mapping[str, Mapping[TState, Mapping[str, TState]]] = {
    "provider": {
        TState.REQUESTED: {TERM: TState.TERMINATED},
        TState.STARTING: {TERM: TState.TERMINATED},
        TState.STARTED: {COMPL: TState.COMPLETED, SUSP: TState.SUSPENDED, TERM: TState.TERMINATED},
        TState.SUSPENDING: {TERM: TState.TERMINATED},
        TState.SUSPENDED: {START: TState.STARTED, TERM: TState.TERMINATED},
        TState.COMPLETING: {TERM: TState.TERMINATED},
        TState.RESUMING: {START: TState.STARTED, TERM: TState.TERMINATED},
    },
    "consumer": {
        TState.REQUESTING: {START: TState.STARTED, TERM: TState.TERMINATED},
        TState.REQUESTED: {START: TState.STARTED, TERM: TState.TERMINATED},
        TState.STARTED: {COMPL: TState.COMPLETED, SUSP: TState.SUSPENDED, TERM: TState.TERMINATED},
        TState.SUSPENDING: {TERM: TState.TERMINATED},
        TState.SUSPENDED: {START: TState.STARTED, TERM: TState.TERMINATED},
        TState.COMPLETING: {TERM: TState.TERMINATED},
        TState.RESUMING: {START: TState.STARTED, TERM: TState.TERMINATED},
    },
}


class Command(enum.StrEnum):
    START = "start"
    SUSPEND = "suspend"
    RESUME = "resume"
    COMPLETE = "complete"
    TERMINATE = "terminate"


_LIVE = frozenset({TState.REQUESTING, TState.REQUESTED, TState.STARTING, TState.STARTED, TState.SUSPENDED})

#: role -> command -> (allowed from, message type, state while sending, state once acknowledged)
COMMANDS: Mapping[str, Mapping[Command, tuple[frozenset[TState], str, TState, TState]]] = {
    "provider": {
        Command.START: (frozenset({TState.REQUESTED}), START, TState.STARTING, TState.STARTED),
        Command.RESUME: (frozenset({TState.SUSPENDED}), START, TState.RESUMING, TState.STARTED),
        Command.SUSPEND: (frozenset({TState.STARTED}), SUSP, TState.SUSPENDING, TState.SUSPENDED),
        Command.COMPLETE: (frozenset({TState.STARTED}), COMPL, TState.COMPLETING, TState.COMPLETED),
        Command.TERMINATE: (_LIVE, TERM, TState.TERMINATING, TState.TERMINATED),
    },
    "consumer": {
        Command.RESUME: (frozenset({TState.SUSPENDED}), START, TState.RESUMING, TState.STARTED),
        Command.SUSPEND: (frozenset({TState.STARTED}), SUSP, TState.SUSPENDING, TState.SUSPENDED),
        Command.COMPLETE: (frozenset({TState.STARTED}), COMPL, TState.COMPLETING, TState.COMPLETED),
        Command.TERMINATE: (_LIVE, TERM, TState.TERMINATING, TState.TERMINATED),
    },
}


def receive(role: str, state: TState, message_type: str) -> TState:
    """The state after receiving ``message_type``; RemoteProtocolError if not allowed now."""
    nxt = RECEIVE[role].get(state, {}).get(message_type)
    if nxt is None:
        raise RemoteProtocolError(
            f"{message_type} is not allowed in state {wire_state(state)} ({role} side)"
            + ("" if state not in TERMINAL else ": the transfer process has ended")
        )
    return nxt


def command(role: str, state: TState, cmd: Command) -> tuple[str, TState, TState]:
    """(message to send, state while sending, state once acknowledged); LocalProtocolError if not now."""
    spec = COMMANDS[role].get(cmd)
    if spec is None:
        raise LocalProtocolError(f"the {role} cannot {cmd} a transfer")
    allowed, message, sending, done = spec
    if state not in allowed:
        raise LocalProtocolError(f"cannot {cmd} a transfer in state {wire_state(state)}")
    return message, sending, done


_WIRE = {
    TState.REQUESTING: "REQUESTED",
    TState.STARTING: "REQUESTED",
    TState.SUSPENDING: "STARTED",
    TState.COMPLETING: "STARTED",
    TState.TERMINATING: "TERMINATED",
    TState.RESUMING: "SUSPENDED",
}


def wire_state(state: TState) -> str:
    """The DSP state name a GET or ACK reports (an ``-ING`` state reads as where it still is)."""
    return _WIRE.get(state, state.name)
