"""Verified Catena-X credentials -> evaluation context -> Catena-X constraints."""

from __future__ import annotations

import json
from typing import Any

import pytest
from policy_suites import SPEC

from connector.errors import ValidationError
from usage_policy import CATENA_X, Scope, context_from_credentials, evaluate, templates

SAMPLES = SPEC / "catenax-credentials" / "cx" / "samples"


def _vc(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text())


def test_official_sample_credentials_fill_the_context() -> None:
    ctx = context_from_credentials(
        [
            _vc("membership.credential.json"),
            _vc("bpn.credential.json"),
            _vc("dataexchange.governance.credential.json"),
            _vc("pcf.credential.json"),
        ],
        purpose="cx.pcf.base:1",
    )
    assert ctx.did == "did:web:com.example.participant"
    assert ctx.bpn == "BPNL000000001"
    assert ctx.memberships == frozenset({CATENA_X})
    assert ctx.framework_agreements == frozenset({"DataExchangeGovernance:a.b", "Pcf:1.0.0"})
    assert "DataExchangeGovernanceCredential" in ctx.credentials
    # the sample governance credential is version "a.b", so the PCF policy (1.0) is not met
    decision = evaluate(templates.cx_pcf_usage_policy(), Scope.NEGOTIATION, ctx)
    assert not decision.permitted
    assert any("FrameworkAgreement" in line for line in decision.failures())


def test_governance_credential_version_1_0_meets_the_pcf_policy() -> None:
    governance = _vc("dataexchange.governance.credential.json")
    governance["credentialSubject"]["contractVersion"] = "1.0"
    ctx = context_from_credentials(
        [{"vc": _vc("membership.credential.json")}, governance],  # a VC-JWT payload works too
        purpose="cx.pcf.base:1",
    )
    assert evaluate(templates.cx_pcf_usage_policy(), Scope.NEGOTIATION, ctx).permitted


def test_credentials_of_different_holders_are_rejected() -> None:
    other = _vc("bpn.credential.json")
    other["credentialSubject"]["id"] = "did:web:someone.else"
    with pytest.raises(ValidationError, match="differs"):
        context_from_credentials([_vc("membership.credential.json"), other])
