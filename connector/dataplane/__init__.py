"""Data plane: EDR tokens (issue, verify, refresh), the provider's public endpoint that streams
data from files, HTTP backends and S3 and meters it, pushes to HTTP endpoints and S3, and the
consumer's inbox for HTTP pushes. In-process with the control plane (see docs/transfer.md).
"""

from __future__ import annotations

from connector.dataplane._edr import EdrRefresher, EdrService
from connector.dataplane._public import PolicyDenied, RecordCounter, public_router, token_router
from connector.dataplane._push import PushService, consumer_destination, inbox_router
from connector.dataplane._sources import S3Config, SourceUnavailable

__all__ = [
    "EdrRefresher",
    "EdrService",
    "PolicyDenied",
    "PushService",
    "RecordCounter",
    "S3Config",
    "SourceUnavailable",
    "consumer_destination",
    "inbox_router",
    "public_router",
    "token_router",
]
