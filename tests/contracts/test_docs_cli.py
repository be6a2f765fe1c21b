"""docs/negotiation.md shows the current tables; `dadam agreement export/verify` work offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cn_harness import OPEN_POLICY, FakeOffers, Node, make_node
from typer.testing import CliRunner

from connector.cli import app
from contracts import StaticKeyResolver
from contracts.diagram import replace_block

ROOT = Path(__file__).resolve().parents[2]


def test_diagram_in_docs_is_current() -> None:
    text = (ROOT / "docs" / "negotiation.md").read_text(encoding="utf-8")
    assert replace_block(text) == text, "run `python -m contracts.diagram --update docs/negotiation.md`"
    assert "REQUESTED --> AGREEING" in text


@pytest.fixture
def finalized(tmp_path: Path, keys: StaticKeyResolver, nodes: list[Node]) -> tuple[str, str]:
    provider = make_node(
        "provider",
        f"sqlite:///{tmp_path}/p.db",
        keys=keys,
        offers=FakeOffers({"cd:ds:1": ("ds", OPEN_POLICY)}),
    )
    nodes.append(provider)
    db = f"sqlite:///{tmp_path}/c.db"
    consumer = make_node("consumer", db, keys=keys)
    nodes.append(consumer)
    view = consumer.manager.start_negotiation(
        provider.dsp, offer={"@id": "cd:ds:1", "target": "ds", **OPEN_POLICY}, counterparty_id=provider.did
    )
    done = consumer.wait_state(view["id"], {"FINALIZED", "TERMINATED"})
    assert done["internalState"] == "FINALIZED", done["errorDetail"]
    return db, str(view["id"])


def test_export_then_verify(
    finalized: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, nid = finalized
    monkeypatch.setenv("DADAM_DATABASE_URL", db)
    runner = CliRunner()
    out = tmp_path / "agreement.json"
    res = runner.invoke(app, ["agreement", "export", nid, "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["agreement", "verify", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.count(": valid") == 2

    doc = json.loads(out.read_text())
    doc["agreement"]["permission"] = [
        {"action": "use", "constraint": [{"leftOperand": "x", "operator": "eq", "rightOperand": "y"}]}
    ]
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    res = runner.invoke(app, ["agreement", "verify", str(tampered)])
    assert res.exit_code == 1 and "INVALID" in res.output

    doc = json.loads(out.read_text())
    sig = doc["signatures"][0]["jws"]
    doc["signatures"][0]["jws"] = sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")
    tampered.write_text(json.dumps(doc))
    res = runner.invoke(app, ["agreement", "verify", str(tampered)])
    assert res.exit_code == 1

    doc = json.loads(out.read_text())
    doc["signatures"][1]["signer"] = "did:web:someone-else"
    doc["agreement"]["assignee"] = "did:web:someone-else"
    tampered.write_text(json.dumps(doc))
    res = runner.invoke(app, ["agreement", "verify", str(tampered)])
    assert res.exit_code == 1, "changing the assignee breaks both signatures"


def test_verify_rejects_garbage(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text("{}")
    res = CliRunner().invoke(app, ["agreement", "verify", str(f)])
    assert res.exit_code == 2


def test_export_unknown_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.store import create_engine, migrate

    url = f"sqlite:///{tmp_path}/e.db"
    eng = create_engine(url)
    migrate(eng)
    eng.dispose()
    monkeypatch.setenv("DADAM_DATABASE_URL", url)
    res = CliRunner().invoke(app, ["agreement", "export", "nope"])
    assert res.exit_code == 2 and "no negotiation" in res.output
