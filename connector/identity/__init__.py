"""Identity: did:web keys and DID document, DCP self-issued ID tokens, partner claims, management auth.

* :class:`Identity` holds our signing keys (created on first start, rotatable) and signs JWS and
  DCP self-issued ID tokens; :func:`verify_jws` checks a JWS against a DID's keys.
* :class:`TokenVerifier` makes every DCP check on incoming DSP requests and returns a
  :class:`Caller` carrying the claims recorded for that partner in the :class:`PartnerDirectory`.
* :class:`ManagementAuth` protects the management API (X-Api-Key, OAuth2 client credentials).
* :func:`canonical_json` is RFC 8785 (JCS): what agreements and receipts are signed over.
"""

from __future__ import annotations

from connector.identity._caller import Caller
from connector.identity._did import DidResolver, DidWebResolver, StaticDidResolver, did_web_url, find_key
from connector.identity._jcs import canonical_json
from connector.identity._keys import (
    SUPPORTED_ALGORITHMS,
    Identity,
    KeyResolver,
    PublicKey,
    algorithm_for_jwk,
    b64url_decode,
    import_public_jwk,
    verify_jws,
    verify_signature,
)
from connector.identity._mgmt import READ_SCOPE, WRITE_SCOPE, ManagementAuth, oauth_router
from connector.identity._service import IdentityService, did_router, partners_router
from connector.identity._store import (
    MemoryReplayStore,
    PartnerDirectory,
    ReplayClaim,
    ReplayStore,
    SqlReplayStore,
)
from connector.identity._tokens import MAX_TOKEN_LIFETIME, DspTokenAuth, TokenVerifier, dsp_caller_dependency

__all__ = [
    "MAX_TOKEN_LIFETIME",
    "READ_SCOPE",
    "SUPPORTED_ALGORITHMS",
    "WRITE_SCOPE",
    "Caller",
    "DidResolver",
    "DidWebResolver",
    "DspTokenAuth",
    "Identity",
    "IdentityService",
    "KeyResolver",
    "ManagementAuth",
    "MemoryReplayStore",
    "PartnerDirectory",
    "PublicKey",
    "ReplayClaim",
    "ReplayStore",
    "SqlReplayStore",
    "StaticDidResolver",
    "TokenVerifier",
    "algorithm_for_jwk",
    "b64url_decode",
    "canonical_json",
    "did_router",
    "did_web_url",
    "dsp_caller_dependency",
    "find_key",
    "import_public_jwk",
    "oauth_router",
    "partners_router",
    "verify_jws",
    "verify_signature",
]
