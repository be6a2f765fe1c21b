"""Offer matching by meaning: accept an offer by id or by an equivalent body, reject a
request that widens the offer or drops its duties."""

from __future__ import annotations

from typing import Any

from usage_policy import is_within, parse_policy, templates

OFFER = {
    "@type": "Offer",
    "@id": "urn:offer:1",
    "target": "urn:ds:1",
    "permission": [
        {
            "action": "use",
            "constraint": [
                {
                    "and": [
                        {
                            "leftOperand": "cx-policy:FrameworkAgreement",
                            "operator": "eq",
                            "rightOperand": "DataExchangeGovernance:1.0",
                        },
                        {
                            "leftOperand": "cx-policy:UsagePurpose",
                            "operator": "isAnyOf",
                            "rightOperand": ["cx.pcf.base:1", "cx.quality.base:1"],
                        },
                        {
                            "leftOperand": "dateTime",
                            "operator": "lteq",
                            "rightOperand": "2026-01-01T00:00:00Z",
                        },
                    ]
                }
            ],
            "duty": [{"action": "inform"}],
        }
    ],
    "prohibition": [{"action": "distribute"}],
}


def _with(**changes: Any) -> dict[str, Any]:
    import copy

    doc = copy.deepcopy(OFFER)
    doc.update(changes)
    return doc


def test_same_meaning_different_bytes_is_equal() -> None:
    request = {
        "@type": "Offer",
        "@id": "urn:request:99",  # another id
        "target": "urn:ds:1",
        "prohibition": [{"action": "odrl:distribute"}],
        "permission": [
            {
                "duty": [{"action": "http://www.w3.org/ns/odrl/2/inform"}],
                "action": "use",
                "constraint": [  # flattened, reordered, list order changed, other date spelling
                    {
                        "leftOperand": "dateTime",
                        "operator": "lteq",
                        "rightOperand": "2026-01-01T01:00:00+01:00",
                    },
                    {
                        "leftOperand": "https://w3id.org/catenax/2025/9/policy/UsagePurpose",
                        "operator": "isAnyOf",
                        "rightOperand": ["cx.quality.base:1", "cx.pcf.base:1"],
                    },
                    {
                        "leftOperand": "cx-policy:FrameworkAgreement",
                        "operator": "eq",
                        "rightOperand": "DataExchangeGovernance:1.0",
                    },
                ],
            }
        ],
    }
    result = is_within(parse_policy(request), parse_policy(OFFER))
    assert result.equal and result.within and bool(result)


def test_narrower_request_is_within_but_not_equal() -> None:
    doc = _with()
    doc["permission"][0]["action"] = "read"
    doc["permission"][0]["constraint"][0]["and"][1]["rightOperand"] = ["cx.pcf.base:1"]
    doc["permission"][0]["constraint"][0]["and"][2]["rightOperand"] = "2025-06-01T00:00:00Z"
    result = is_within(parse_policy(doc), parse_policy(OFFER))
    assert result.within and not result.equal and result.reasons == []


def test_widened_or_weakened_requests_are_rejected_with_reasons() -> None:
    wider = _with()
    wider["permission"][0]["constraint"][0]["and"][1]["rightOperand"] = ["cx.pcf.base:1", "cx.dcm.base:1"]
    later = _with()
    later["permission"][0]["constraint"][0]["and"][2]["rightOperand"] = "2027-01-01T00:00:00Z"
    no_duty = _with()
    del no_duty["permission"][0]["duty"]
    no_prohibition = _with()
    del no_prohibition["prohibition"]
    other_target = _with(target="urn:ds:2")
    transfer = _with()
    transfer["permission"][0]["action"] = "transfer"
    for doc, reason in (
        (wider, "UsagePurpose isAnyOf"),
        (later, "dateTime lteq"),
        (no_duty, "offered duty 'inform' is missing"),
        (no_prohibition, "offered prohibition about 'distribute' is missing"),
        (other_target, "target"),
        (transfer, "action 'transfer' is not covered by offered 'use'"),
    ):
        result = is_within(parse_policy(doc), parse_policy(OFFER))
        assert not result and not result.equal
        assert any(reason in r for r in result.reasons), result.reasons


def test_templates_match_themselves_and_price_changes_are_caught() -> None:
    offer = templates.data_provision("did:web:p", templates.metered("0.05", "EUR", "call"), target="urn:ds:1")
    same = templates.data_provision("did:web:p", templates.metered("0.050", "EUR", "call"), target="urn:ds:1")
    cheaper = templates.data_provision(
        "did:web:p", templates.metered("0.01", "EUR", "call"), target="urn:ds:1"
    )
    assert is_within(same, offer).equal
    result = is_within(cheaper, offer)
    assert not result and any("duty 'compensate'" in r for r in result.reasons)
    assert result.to_dict()["within"] is False


def _offer(*constraints: dict[str, Any]) -> Any:
    return parse_policy(
        {"@type": "Offer", "permission": [{"action": "use", "constraint": list(constraints)}]}
    )


def _p(value: str) -> dict[str, Any]:
    return {"leftOperand": "purpose", "operator": "eq", "rightOperand": value}


def test_logical_constraints_are_matched_by_implication() -> None:
    either = {"or": [_p("a"), _p("b")]}
    assert is_within(_offer(_p("a")), _offer(either)).within  # one branch of an offered "or"
    assert is_within(_offer({"or": [_p("b"), _p("a")]}), _offer(either)).equal
    assert not is_within(_offer({"or": [_p("a"), _p("c")]}), _offer(either)).within
    assert not is_within(_offer(either), _offer(_p("a"))).within  # wider than the offer
    nested = {
        "or": [{"and": [_p("a"), {"leftOperand": "count", "operator": "lteq", "rightOperand": "5"}]}, _p("b")]
    }
    assert is_within(
        _offer({"and": [_p("a"), {"leftOperand": "count", "operator": "lteq", "rightOperand": "3"}]}),
        _offer(nested),
    ).within
    assert not is_within(
        _offer({"and": [_p("a"), {"leftOperand": "count", "operator": "lteq", "rightOperand": "9"}]}),
        _offer(nested),
    ).within


def test_xone_counts_repeated_branches() -> None:
    """Found by the soundness property: xone over [a, a] is never true, xone over [a] may be."""
    twice = _offer({"xone": [_p("a"), _p("a")]})
    once = _offer({"xone": [_p("a")]})
    assert not is_within(once, twice).equal
    assert not is_within(once, twice).within
