"""connector: base branch (identity tables are added by later revisions).

Revision ID: connector_0001
"""

from __future__ import annotations

revision = "connector_0001"
down_revision = None
branch_labels = ("connector",)
depends_on = None


def upgrade() -> None:
    pass
