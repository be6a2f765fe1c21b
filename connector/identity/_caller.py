"""Who is calling: the verified identity of a DSP peer, handed to catalog, contracts and transfers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector.identity._store import ReplayClaim

__all__ = ["Caller"]


@dataclass(frozen=True, slots=True)
class Caller:
    """A peer whose request was authenticated (DCP self-issued ID token verified against its DID).

    ``claims`` holds what we know about the peer from verified sources, by name: ``bpn`` (BPNL),
    ``memberships`` (list), ``framework_agreements`` (list), ``bpn_groups`` (list), ``region`` ...
    Policy evaluation reads only these; nothing unverified goes in here.
    """

    did: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: The token's jti, for logs and replay diagnostics.
    token_id: str | None = None
    #: A token id not recorded in the replay store yet (``TokenVerifier.prepare(...,
    #: defer_replay=True)``): the code serving the request must record it before acting.
    replay: ReplayClaim | None = field(default=None, compare=False, repr=False)
