"""Data plane: EDR access tokens and the provider's public endpoint that streams data and meters it.

In-process with the control plane for now (see docs/transfer.md for what is not built yet).
"""

from __future__ import annotations

from connector.dataplane._edr import EdrService
from connector.dataplane._public import RecordCounter, public_router

__all__ = ["EdrService", "RecordCounter", "public_router"]
