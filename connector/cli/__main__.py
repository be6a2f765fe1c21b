"""``python -m connector.cli`` runs the dadam command line."""

from __future__ import annotations

from connector.cli import main

main()
