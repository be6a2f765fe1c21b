"""The one exception tree of dadam.

Every error dadam raises on purpose is a :class:`DadamError`. Protocol errors carry the HTTP
status a server should answer with (``status_hint``) and are turned into DSP error bodies
(``CatalogError``, ``ContractNegotiationError``, ``TransferError``) at the HTTP edge.

::

    DadamError                         root: catch this to catch everything dadam raises
    ├── ConfigError                    a setting is missing or invalid (raised at start-up)
    ├── ValidationError                an input (body, file, query) is malformed; .errors lists what
    ├── NotFoundError                  the thing asked for does not exist (or is not yours)
    ├── ConflictError                  the request contradicts stored state (duplicate id, version)
    ├── AuthError                      authentication or authorisation failed
    │   ├── TokenError                 a DCP self-issued token was rejected; the message says which check
    │   └── PermissionDeniedError      authenticated, but not allowed (missing scope): 403
    ├── ProtocolError                  a DSP exchange broke the protocol (abstract)
    │   ├── LocalProtocolError         we were asked to do something the protocol forbids
    │   └── RemoteProtocolError        the peer sent something the protocol forbids
    ├── PolicyError                    a policy is malformed or unsupported (not "denied": that is a Decision)
    ├── StoreError                     the database failed or a stored row is inconsistent
    ├── TransportError                 talking to a peer failed; .retryable says whether to retry
    └── LedgerError                    the data bank refused a write; .code is the result code

HTTP mapping (``status_hint``): ValidationError 400, NotFoundError 404, ConflictError 409,
AuthError 401 (but DSP process look-ups answer 404, as the protocol requires), ProtocolError 400,
PolicyError 400, StoreError 500, TransportError 502, LedgerError 422.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "AuthError",
    "ConfigError",
    "ConflictError",
    "DadamError",
    "LedgerError",
    "LocalProtocolError",
    "NotFoundError",
    "PermissionDeniedError",
    "PolicyError",
    "ProtocolError",
    "RemoteProtocolError",
    "StoreError",
    "TokenError",
    "TransportError",
    "ValidationError",
]


class DadamError(Exception):
    """Root of every error dadam raises on purpose."""

    status_hint: int = 500
    #: A short machine-readable code, sent as ``code`` in DSP error bodies.
    code: str = "internal"

    def __init__(self, message: str, *, context: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Where it happened: process ids, counterparty, message id, dataset id, ...
        self.context: dict[str, Any] = dict(context or {})

    def __str__(self) -> str:
        if not self.context:
            return self.message
        where = ", ".join(f"{k}={v}" for k, v in sorted(self.context.items()))
        return f"{self.message} ({where})"

    def reasons(self) -> list[str]:
        """Human-readable reasons, one per line, for the ``reason`` array of DSP error bodies."""
        return [self.message]


class ConfigError(DadamError):
    """A setting is missing or invalid; raised at start-up, before anything is served."""

    code = "config"


class ValidationError(DadamError):
    """An input is malformed: bad JSON, wrong ``@type``, schema violation, bad filter."""

    status_hint = 400
    code = "invalid"

    def __init__(
        self,
        message: str,
        *,
        errors: Sequence[str] = (),
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, context=context)
        #: Every problem found, each naming where it is (a JSON path or a field name).
        self.errors: list[str] = list(errors)

    def reasons(self) -> list[str]:
        return [self.message, *self.errors]


class NotFoundError(DadamError):
    """What was asked for does not exist, or belongs to someone else (DSP answers both with 404)."""

    status_hint = 404
    code = "not_found"


class ConflictError(DadamError):
    """The request contradicts stored state: a duplicate id, a stale version, a used message id."""

    status_hint = 409
    code = "conflict"


class AuthError(DadamError):
    """Authentication or authorisation failed."""

    status_hint = 401
    code = "unauthorized"


class TokenError(AuthError):
    """A DCP self-issued ID token was rejected; the message says exactly which check failed."""

    code = "invalid_token"


class PermissionDeniedError(AuthError):
    """The caller is authenticated but lacks the scope or right for this operation (403)."""

    status_hint = 403
    code = "forbidden"


class ProtocolError(DadamError):
    """A DSP exchange broke the protocol. Abstract: raise Local- or RemoteProtocolError."""

    status_hint = 400
    code = "protocol"

    def __init__(self, message: str, *, context: Mapping[str, Any] | None = None) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract: raise LocalProtocolError or RemoteProtocolError")
        super().__init__(message, context=context)


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol forbids (e.g. an invalid state transition)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids (a message not allowed in the current state)."""


class PolicyError(DadamError):
    """A policy is malformed or uses something unsupported. A denial is a Decision, not an error."""

    status_hint = 400
    code = "policy"


class StoreError(DadamError):
    """The database failed, or a stored row is inconsistent."""

    code = "store"


class TransportError(DadamError):
    """Talking to a peer failed (connection, timeout, 5xx). ``retryable`` says whether to try again."""

    status_hint = 502
    code = "transport"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        status: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, context=context)
        self.retryable = retryable
        #: The peer's HTTP status, when it answered at all.
        self.status = status


class LedgerError(DadamError):
    """The data bank refused a write; ``code`` is the ledger result code (e.g. ``exceeds_credits``)."""

    status_hint = 422
    code = "ledger"

    def __init__(
        self, message: str, *, code: str = "ledger", context: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message, context=context)
        self.code = code
