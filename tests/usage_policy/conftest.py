"""Fixtures for the usage policy tests: where the shared specification files are."""

from __future__ import annotations

from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec"


@pytest.fixture(scope="session")
def spec() -> Path:
    return SPEC
