"""The management endpoints (FastAPI router) and the ``dadam policy`` commands."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from connector.api import install_error_handlers
from connector.cli import app as cli_app
from usage_policy import templates
from usage_policy._api import policy_router

with warnings.catch_warnings():
    # starlette's TestClient warns that it prefers httpx2; httpx is what we have
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PCF = templates.cx_pcf_usage_policy("urn:policy:pcf").to_dsp()
MEMBER = {
    "now": "2025-06-01T00:00:00Z",
    "bpn": "BPNL000000000001",
    "memberships": ["catena-x"],
    "framework_agreements": ["DataExchangeGovernance:1.0"],
    "purpose": "cx.pcf.base:1",
}


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app, dsp_path="/dsp")
    app.include_router(policy_router(), prefix="/management")
    return TestClient(app)


def test_validate_endpoint(client: TestClient) -> None:
    ok = client.post("/management/policies/validate", json={"policy": PCF})
    assert ok.status_code == 200 and ok.json()["valid"] is True and ok.json()["policy"] == PCF
    bad = dict(
        PCF,
        permission=[
            {
                "action": "use",
                "constraint": [{"leftOperand": "Membership", "operator": "eq", "rightOperand": "yes"}],
            }
        ],
    )
    res = client.post("/management/policies/validate", json={"policy": bad})
    body = res.json()
    assert res.status_code == 200 and body["valid"] is False
    assert any("Membership: rightOperand must be 'active'" in p for p in body["problems"])
    # plain ODRL accepts what the Catena-X profile rejects
    odrl = client.post("/management/policies/validate", json={"policy": bad, "profile": "odrl"})
    assert odrl.json()["valid"] is True


def test_evaluate_endpoint(client: TestClient) -> None:
    res = client.post(
        "/management/policies/evaluate", json={"policy": PCF, "scope": "negotiation", "context": MEMBER}
    )
    assert res.status_code == 200
    body = res.json()
    assert body["outcome"] == "permit" and body["explanation"]["children"][0]["outcome"] == "active"
    denied = client.post(
        "/management/policies/evaluate",
        json={"policy": PCF, "scope": "negotiation", "context": {**MEMBER, "purpose": "x"}},
    ).json()
    assert denied["outcome"] == "deny" and any(
        "UsagePurpose" in r and "unsatisfied" in r for r in denied["reasons"]
    )


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"policy": PCF, "scope": "sometime"}, 400, "unknown scope"),
        ({"policy": PCF, "context": {"bpnl": "x"}}, 400, "unknown context field"),
        (
            {"policy": {"@type": "Set", "permission": [{"constraint": []}]}},
            400,
            "permission[0]: a permission needs an action",
        ),
        ({"scope": "usage"}, 400, "invalid request"),
    ],
)
def test_evaluate_errors(client: TestClient, body: dict[str, Any], status: int, text: str) -> None:
    res = client.post("/management/policies/evaluate", json=body)
    assert res.status_code == status
    assert text in json.dumps(res.json())


def test_match_endpoint(client: TestClient) -> None:
    res = client.post("/management/policies/match", json={"requested": PCF, "offered": PCF})
    assert res.json() == {"equal": True, "within": True, "reasons": []}


runner = CliRunner()


def _write(tmp_path: Path, name: str, doc: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_cli_check(tmp_path: Path) -> None:
    good = _write(
        tmp_path, "pcf.json", {"@context": ["https://w3id.org/dspace/2025/1/context.jsonld"], **PCF}
    )
    result = runner.invoke(cli_app, ["policy", "check", good])
    assert result.exit_code == 0 and "valid" in result.output
    bad = _write(
        tmp_path,
        "bad.json",
        {
            "@type": "Set",
            "permission": [
                {
                    "action": "use",
                    "constraint": [{"leftOperand": "Nonsense", "operator": "eq", "rightOperand": "x"}],
                }
            ],
        },
    )
    result = runner.invoke(cli_app, ["policy", "check", bad, "--json"])
    assert result.exit_code == 1
    assert any(
        "'Nonsense' is not a Catena-X profile term" in p for p in json.loads(result.output)["problems"]
    )
    assert runner.invoke(cli_app, ["policy", "check", str(tmp_path / "missing.json")]).exit_code == 2
    (tmp_path / "broken.json").write_text("{")
    assert runner.invoke(cli_app, ["policy", "check", str(tmp_path / "broken.json")]).exit_code == 2


def test_cli_explain(tmp_path: Path) -> None:
    policy = _write(tmp_path, "pcf.json", PCF)
    ctx = _write(tmp_path, "ctx.json", MEMBER)
    result = runner.invoke(cli_app, ["policy", "explain", policy, "--context", ctx, "--scope", "negotiation"])
    assert result.exit_code == 0, result.output
    assert "PERMIT" in result.output and "UsagePurpose" in result.output
    no_purpose = _write(tmp_path, "ctx2.json", {k: v for k, v in MEMBER.items() if k != "purpose"})
    result = runner.invoke(
        cli_app, ["policy", "explain", policy, "--context", no_purpose, "--scope", "negotiation", "--json"]
    )
    assert result.exit_code == 1
    body = json.loads(result.output)
    assert body["outcome"] == "deny" and any("missing input: purpose" in r for r in body["reasons"])
    assert (
        runner.invoke(cli_app, ["policy", "explain", policy, "--context", ctx, "--scope", "later"]).exit_code
        == 2
    )
    assert runner.invoke(cli_app, ["policy", "explain", policy]).exit_code == 2
