"""Identity: did:web, signing keys, DCP self-issued ID tokens, management API auth."""

from __future__ import annotations

from connector.identity._caller import Caller

__all__ = ["Caller"]
