"""``dadam catalog``: seed, export (SHACL-checked), check."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector.cli import app


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DADAM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DADAM_DATABASE_URL", raising=False)
    return tmp_path


def test_seed_export_and_check(env: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["catalog", "seed", "--tck"])
    assert r.exit_code == 0, r.output
    assert "catalog has 20 datasets" in r.output
    out = env / "catalog.ttl"
    r = runner.invoke(app, ["catalog", "export", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "dcat:Dataset" in out.read_text()
    r = runner.invoke(app, ["catalog", "check", str(out)])
    assert r.exit_code == 0 and "conforms" in r.output
    broken = env / "broken.ttl"
    broken.write_text(out.read_text().replace("dct:title", "dct:alternative"))
    r = runner.invoke(app, ["catalog", "check", str(broken)])
    assert r.exit_code == 1
    assert "needs a title" in r.output or "needs a non-empty title" in r.output
