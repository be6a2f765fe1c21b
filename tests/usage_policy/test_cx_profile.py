"""Catena-X profile validation: the official samples (valid accepted, invalid rejected naming
the offending constraint) and a cross-check of our term table against the official atomic
constraint JSON schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft201909Validator
from policy_suites import SPEC
from referencing import Registry, Resource

from connector.errors import PolicyError
from usage_policy import validate_cx_constraint, validate_policy
from usage_policy._profile import CX_PROFILE

CX = SPEC / "cx-policy" / "odrl-profile-2025-9"
SAMPLES = sorted((CX / "samples").glob("*.json"))
TRACTUSX = sorted((SPEC / "cx-policy" / "tractusx-profiles-samples").glob("*.json"))

#: The README of cx-policy lists these official samples as invalid, and why.
INVALID = {
    "contract-termination-constraint-sample.json": ["ContractTermination"],
    "data-provisioning-end-duration-days-constraint-sample.json": ["DataProvisioningEndDurationDays"],
    "data-usage-end-duration-days-constraint-sample.json": ["DataUsageEndDurationDays"],
    "warranty-duration-constraint-sample.json": ["WarrantyDurationMonths"],
    "usage-policy-sample.json": ["DataUsageEndDefinition"],
    "usage-policy-comprehensive-sample.json": ["WarrantyDurationMonths", "UsageRestriction"],
}


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_official_samples(path: Path) -> None:
    doc = _load(path)
    expected_bad = INVALID.get(path.name)
    if "@type" in doc:
        if expected_bad is None:
            policy = validate_policy(doc)
            assert policy.permissions
        else:
            with pytest.raises(PolicyError) as info:
                validate_policy(doc)
            for name in expected_bad:
                assert name in str(info.value)
            assert all(
                p.startswith(("permission[", "prohibition[", "obligation["))
                for p in info.value.context["problems"]
            )
    else:
        problems = validate_cx_constraint(doc)
        if expected_bad is None:
            assert problems == []
        else:
            assert problems and all(p.startswith(expected_bad[0]) for p in problems), problems


@pytest.mark.parametrize("path", TRACTUSX, ids=[p.name for p in TRACTUSX])
def test_tractusx_samples_use_the_single_object_shorthand(path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        validate_policy(_load(path)["policy"])
    assert "must be an array (DSP 2025-1)" in str(info.value)


def test_comprehensive_sample_names_each_offending_constraint() -> None:
    with pytest.raises(PolicyError) as info:
        validate_policy(_load(CX / "samples" / "usage-policy-comprehensive-sample.json"))
    problems = info.value.context["problems"]
    assert any("WarrantyDurationMonths: rightOperand must be an integer" in p for p in problems)
    assert any("UsageRestriction: rightOperand item" in p for p in problems)


def test_profile_rules_beyond_atomic_constraints() -> None:
    base = {
        "leftOperand": "FrameworkAgreement",
        "operator": "eq",
        "rightOperand": "DataExchangeGovernance:1.0",
    }
    purpose = {"leftOperand": "UsagePurpose", "operator": "isAnyOf", "rightOperand": ["cx.pcf.base:1"]}
    ok = {"@type": "Set", "permission": [{"action": "use", "constraint": [{"and": [base, purpose]}]}]}
    assert validate_policy(ok).permissions
    cases = [
        (
            {"@type": "Set", "permission": [{"action": "use", "constraint": [{"or": [base, purpose]}]}]},
            "only 'and'",
        ),
        ({"@type": "Set", "permission": [{"action": "use", "constraint": [base]}]}, "needs a UsagePurpose"),
        (
            {"@type": "Set", "permission": [{"action": "read", "constraint": [base, purpose]}]},
            "is not 'use' or 'access'",
        ),
        (
            {
                "@type": "Set",
                "permission": [
                    {
                        "action": "use",
                        "constraint": [
                            base,
                            purpose,
                            {
                                "leftOperand": "BusinessPartnerNumber",
                                "operator": "isAnyOf",
                                "rightOperand": ["BPNL000000000001"],
                            },
                        ],
                    }
                ],
            },
            "BusinessPartnerNumber: not allowed in a use permission",
        ),
        (
            {
                "@type": "Set",
                "permission": [
                    {
                        "action": "use",
                        "constraint": [
                            base,
                            purpose,
                            {
                                "leftOperand": "dateTime",
                                "operator": "lt",
                                "rightOperand": "2030-01-01T00:00:00Z",
                            },
                        ],
                    }
                ],
            },
            "'dateTime' is not a Catena-X profile term",
        ),
        (
            {
                "@type": "Set",
                "permission": [
                    {
                        "action": "use",
                        "constraint": [
                            base,
                            purpose,
                            {
                                "leftOperand": "DataUsageEndDate",
                                "operator": "eq",
                                "rightOperand": "2030-01-01T00:00:00Z",
                            },
                            {
                                "leftOperand": "DataUsageEndDefinition",
                                "operator": "eq",
                                "rightOperand": "cx.dataUsageEnd.unlimited:1",
                            },
                        ],
                    }
                ],
            },
            "use only one",
        ),
        (
            {"@type": "Request", "permission": [{"action": "use", "constraint": [base, purpose]}]},
            "Set, Offer or Agreement",
        ),
    ]
    for doc, message in cases:
        with pytest.raises(PolicyError) as info:
            validate_policy(doc)
        assert message in str(info.value), (message, str(info.value))


# --- cross-check with the official schemas ------------------------------------------------------


def _validator() -> Draft201909Validator:
    resources = []
    for path in [
        *(CX / "constraint").glob("*.json"),
        CX / "atomic-constraint-schemas.json",
        SPEC / "dsp" / "negotiation" / "contract-schema.json",
    ]:
        schema = _load(path)
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry: Registry = Registry().with_resources(resources)
    return Draft201909Validator(_load(CX / "atomic-constraint-schemas.json"), registry=registry)


def _variants() -> list[dict[str, Any]]:
    """Official samples plus mutations: wrong operator, wrong value, wrong type, extra key."""
    out: list[dict[str, Any]] = []
    for path in SAMPLES:
        doc = _load(path)
        atoms: list[dict[str, Any]] = []
        if "@type" in doc:
            for key in ("permission", "prohibition", "obligation"):
                for rule in doc.get(key, []):
                    for c in rule.get("constraint", []):
                        atoms.extend(c.get("and", [c]))
        else:
            atoms.append(doc)
        for atom in atoms:
            out.append(atom)
            out.append({**atom, "operator": "neq"})
            out.append({**atom, "rightOperand": "surely-not-valid:9"})
            out.append({**atom, "rightOperand": ["surely-not-valid:9"]})
            out.append({**atom, "rightOperand": 7})
            out.append({**atom, "unit": "x"})
            if isinstance(atom.get("rightOperand"), list):
                out.append({**atom, "rightOperand": atom["rightOperand"][0]})
                out.append({**atom, "rightOperand": []})
    return out


def test_term_table_agrees_with_official_schemas() -> None:
    validator = _validator()
    checked = 0
    for atom in _variants():
        official = validator.is_valid(atom)
        ours = validate_cx_constraint(atom) == []
        assert ours == official, (atom, validate_cx_constraint(atom))
        checked += 1
    assert checked >= 400


def test_every_profile_term_has_a_schema() -> None:
    schema_terms = set()
    for path in (CX / "constraint").glob("*.json"):
        for definition in _load(path)["definitions"].values():
            left = definition.get("properties", {}).get("leftOperand", {}).get("const")
            if left:
                schema_terms.add(left)
    assert schema_terms == set(CX_PROFILE)


def test_duration_terms_explain_the_schema_conflict() -> None:
    problems = validate_cx_constraint(
        _load(CX / "samples" / "data-usage-end-duration-days-constraint-sample.json")
    )
    assert any("no value satisfies both" in p for p in problems)


def test_expanded_policy_is_validated_too() -> None:
    from usage_policy import templates
    from vocab import expand

    dsp = templates.cx_pcf_usage_policy("urn:p:1").to_dsp()
    expanded = expand(
        {
            "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
            "@type": "ContractOfferMessage",
            "providerPid": "a",
            "consumerPid": "b",
            "offer": {**dsp, "@type": "Offer"},
        }
    )
    offer = expanded[0]["https://w3id.org/dspace/2025/1/offer"][0]
    assert validate_policy(offer).permissions
    offer_bad = json.loads(json.dumps(offer).replace("DataExchangeGovernance:1.0", "Pcf:1.0"))
    with pytest.raises(
        PolicyError, match=re.escape("FrameworkAgreement: rightOperand must be 'DataExchangeGovernance:1.0'")
    ):
        validate_policy(offer_bad)


def test_catena_x_obligation_is_recorded_with_its_terms() -> None:
    from usage_policy import EvaluationContext, Scope, evaluate

    policy = validate_policy(_load(CX / "samples" / "usage-policy-individual-constraints-sample.json"))
    ctx = EvaluationContext(
        framework_agreements=frozenset({"DataExchangeGovernance:1.0"}), purpose="cx.pcf.base:1"
    )
    decision = evaluate(policy, Scope.NEGOTIATION, ctx)
    assert decision.permitted, decision.reasons()
    (obligation,) = decision.obligations
    assert obligation.terms[0]["and"][0]["leftOperand"] == "DataProvisioningEndDate"
