"""Contract negotiation over DSP 2025-1: sans-IO state machines, durable drivers, signed agreements.

* :mod:`contracts._negotiation_states`: the provider and consumer machines as transition tables.
* :mod:`contracts._messages`: the wire messages (compact JSON in and out).
* :mod:`contracts._process`: the durable process framework (outbox, leases, retries, timeouts,
  dedupe), shared with the transfer process.
* :class:`NegotiationManager`: the driver; :func:`negotiation_dsp_router` and
  :func:`negotiation_management_router`: the HTTP edges.
* :mod:`contracts._signing`: JWS agreement signatures and offline verification.
"""

from __future__ import annotations

from contracts._api import (
    negotiation_dsp_router,
    negotiation_fast_routes,
    negotiation_management_fast_routes,
    negotiation_management_router,
)
from contracts._manager import (
    NegotiationConfig,
    NegotiationManager,
    OfferResolver,
    PolicyDecider,
    PolicyVerdict,
    Script,
    UsagePolicyDecider,
)
from contracts._messages import SIGNATURE_KEY, parse_message
from contracts._negotiation_states import (
    CONSUMER_TRANSITIONS,
    PROVIDER_TRANSITIONS,
    Event,
    Role,
    State,
    handle,
    wire_state,
)
from contracts._process import RetryPolicy, Worker
from contracts._signing import (
    KeyResolver,
    LocalKeySigner,
    Signer,
    StaticKeyResolver,
    canonical_json,
    export_agreement,
    verify_export,
)

__all__ = [
    "CONSUMER_TRANSITIONS",
    "PROVIDER_TRANSITIONS",
    "SIGNATURE_KEY",
    "Event",
    "KeyResolver",
    "LocalKeySigner",
    "NegotiationConfig",
    "NegotiationManager",
    "OfferResolver",
    "PolicyDecider",
    "PolicyVerdict",
    "RetryPolicy",
    "Role",
    "Script",
    "Signer",
    "State",
    "StaticKeyResolver",
    "UsagePolicyDecider",
    "Worker",
    "canonical_json",
    "export_agreement",
    "handle",
    "negotiation_dsp_router",
    "negotiation_fast_routes",
    "negotiation_management_fast_routes",
    "negotiation_management_router",
    "parse_message",
    "verify_export",
    "wire_state",
]
