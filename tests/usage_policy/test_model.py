"""Parsing and writing policies: DSP 2025-1 examples round-trip, expanded JSON-LD means the
same as compact, every contexts' spelling is understood, malformed input is named."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from policy_suites import SPEC

from connector.errors import PolicyError
from usage_policy import Constraint, LogicalConstraint, Policy, parse_policy
from usage_policy._match import canonical
from vocab import expand

DSP = SPEC / "dsp"
ODRL = "http://www.w3.org/ns/odrl/2/"


def _policies(doc: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("offer", "agreement") and isinstance(value, dict):
                yield f"{path}.{key}", value
            elif key == "hasPolicy":
                for i, p in enumerate(value if isinstance(value, list) else [value]):
                    yield f"{path}.hasPolicy[{i}]", p
            else:
                yield from _policies(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from _policies(item, f"{path}[{i}]")


EXAMPLES = [
    (f"{p.parent.parent.name}/{p.name}{where}", json.loads(p.read_text()), policy)
    for p in sorted(DSP.glob("*/example/*.json"))
    for where, policy in _policies(json.loads(p.read_text()))
]


def test_every_dsp_example_policy_is_found() -> None:
    names = {name.split("$")[0] for name, _, _ in EXAMPLES}
    assert names >= {
        "catalog/catalog.json",
        "catalog/dataset.json",
        "negotiation/contract-offer-message.json",
        "negotiation/contract-offer-message_initial.json",
        "negotiation/contract-request-message.json",
        "negotiation/contract-request-message_initial.json",
        "negotiation/contract-agreement-message.json",
        "negotiation/contract-agreement-message-full.json",
    }


@pytest.mark.parametrize(("name", "message", "policy"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_dsp_example_round_trips(name: str, message: dict[str, Any], policy: dict[str, Any]) -> None:
    original = copy.deepcopy(policy)
    parsed = parse_policy(policy)
    assert parsed.to_dsp() == original
    assert policy == original  # the parser does not touch its input
    again = parse_policy(parsed.to_dsp())
    assert again == parsed
    assert again.digest == parsed.digest


def _find_expanded_policy(node: Any) -> Any:
    if isinstance(node, dict):
        types = node.get("@type", [])
        if any(t.startswith(ODRL) for t in types) and any(k.startswith(ODRL) for k in node):
            return node
        for value in node.values():
            found = _find_expanded_policy(value)
            if found is not None:
                return found
    elif isinstance(node, list):
        for item in node:
            found = _find_expanded_policy(item)
            if found is not None:
                return found
    return None


@pytest.mark.parametrize(("name", "message", "policy"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_expanded_json_ld_means_the_same(name: str, message: dict[str, Any], policy: dict[str, Any]) -> None:
    expanded = _find_expanded_policy(expand(message))
    assert expanded is not None
    from_expanded = parse_policy(expanded)
    from_compact = parse_policy(policy)
    assert canonical(from_expanded) == canonical(from_compact)
    assert from_expanded.uid == from_compact.uid
    # what we write for it is correct JSON-LD under the DSP context alone: every term an IRI
    wire = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractOfferMessage",
        "providerPid": "p",
        "consumerPid": "c",
        "offer": from_expanded.to_dsp(),
    }
    again = _find_expanded_policy(expand(wire))
    assert canonical(parse_policy(again)) == canonical(from_compact)
    ids = re.findall(
        r'"http://www.w3.org/ns/odrl/2/(?:action|leftOperand|operator)": \[\{"@id": "([^"]+)"',
        json.dumps(again),
    )
    assert ids and all(i.startswith(("http://", "https://")) for i in ids), ids


def test_spellings_of_one_term_are_equal() -> None:
    forms = [
        {"leftOperand": "dateTime", "operator": "lt", "rightOperand": "2030-01-01T00:00:00Z"},
        {"leftOperand": "odrl:dateTime", "operator": "odrl:lt", "rightOperand": "2030-01-01T00:00:00Z"},
        {
            "leftOperand": ODRL + "dateTime",
            "operator": {"@id": ODRL + "lt"},
            "rightOperand": "2030-01-01T00:00:00Z",
        },
    ]
    parsed = [
        parse_policy({"@type": "Set", "permission": [{"action": "use", "constraint": [f]}]}) for f in forms
    ]
    assert parsed[0] == parsed[1] == parsed[2]
    # ... but each writes back as it was spelled
    assert [p.to_dsp()["permission"][0]["constraint"][0]["leftOperand"] for p in parsed] == [
        "dateTime",
        "odrl:dateTime",
        ODRL + "dateTime",
    ]


def test_catena_x_prefix_and_legacy_namespace() -> None:
    new = parse_policy(
        {
            "@type": "Set",
            "permission": [
                {
                    "action": "use",
                    "constraint": [
                        {"leftOperand": "cx-policy:Membership", "operator": "eq", "rightOperand": "active"}
                    ],
                }
            ],
        }
    )
    legacy = parse_policy(
        {
            "@context": [
                "http://www.w3.org/ns/odrl.jsonld",
                {"cx-policy": "https://w3id.org/catenax/policy/"},
            ],
            "@type": "Set",
            "permission": [
                {
                    "action": "use",
                    "constraint": [
                        {"leftOperand": "cx-policy:Membership", "operator": "eq", "rightOperand": "active"}
                    ],
                }
            ],
        }
    )
    c_new = new.permissions[0].constraints[0]
    c_legacy = legacy.permissions[0].constraints[0]
    assert isinstance(c_new, Constraint) and isinstance(c_legacy, Constraint)
    assert c_new.left.iri == "https://w3id.org/catenax/2025/9/policy/Membership"
    assert c_legacy.left.iri == "https://w3id.org/catenax/policy/Membership"


def test_w3c_context_features_parse() -> None:
    policy = parse_policy(
        {
            "@context": "http://www.w3.org/ns/odrl.jsonld",
            "@type": "Offer",
            "uid": "http://example.com/policy:1",
            "permission": [
                {
                    "target": {"@type": "AssetCollection", "source": "http://example.com/c1"},
                    "action": [
                        {
                            "rdf:value": {"@id": "odrl:print"},
                            "refinement": [
                                {
                                    "leftOperand": "resolution",
                                    "operator": "lteq",
                                    "rightOperand": {"@value": "1200", "@type": "xsd:integer"},
                                    "unit": "http://dbpedia.org/resource/Dots_per_inch",
                                }
                            ],
                        }
                    ],
                    "duty": [{"action": "compensate"}],
                }
            ],
            "prohibition": [{"action": "distribute", "remedy": [{"action": "delete"}]}],
            "conflict": "perm",
        }
    )
    assert policy.uid == "http://example.com/policy:1"
    perm = policy.permissions[0]
    assert perm.action is not None and perm.action.name.iri == ODRL + "print"
    assert (
        perm.action.refinement and perm.target is not None and perm.target.source == "http://example.com/c1"
    )
    assert policy.prohibitions[0].remedies[0].action is not None
    assert policy.conflict == "perm"
    assert parse_policy(policy.to_dsp()) == policy


def test_logical_constraints_nest() -> None:
    policy = parse_policy(
        {
            "@type": "Set",
            "permission": [
                {
                    "action": "use",
                    "constraint": [
                        {
                            "or": [
                                {
                                    "and": [
                                        {"leftOperand": "count", "operator": "lt", "rightOperand": "3"},
                                        {"leftOperand": "purpose", "operator": "eq", "rightOperand": "x"},
                                    ]
                                },
                                {
                                    "xone": [
                                        {"leftOperand": "spatial", "operator": "eq", "rightOperand": "EU"}
                                    ]
                                },
                            ]
                        }
                    ],
                }
            ],
        }
    )
    top = policy.permissions[0].constraints[0]
    assert isinstance(top, LogicalConstraint) and top.op == "or"
    assert isinstance(top.operands[0], LogicalConstraint) and top.operands[0].op == "and"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "exactly one policy node"),
        ({"@type": "Contract"}, "unsupported policy type"),
        ({"@type": "Set", "permission": [{"constraint": []}]}, "permission[0]: a permission needs an action"),
        ({"@type": "Set", "permission": ["use"]}, "permission[0]: a permission must be an object"),
        (
            {
                "@type": "Set",
                "permission": [{"action": "use", "constraint": [{"leftOperand": "count", "operator": "lt"}]}],
            },
            "permission[0].constraint[0]: constraint has neither 'rightOperand'",
        ),
        (
            {
                "@type": "Set",
                "permission": [{"action": "use", "constraint": [{"operator": "lt", "rightOperand": 1}]}],
            },
            "permission[0].constraint[0]: constraint has no 'leftOperand'",
        ),
        (
            {
                "@type": "Set",
                "permission": [
                    {
                        "action": "use",
                        "constraint": [
                            {
                                "and": [],
                            }
                        ],
                    }
                ],
            },
            "permission[0].constraint[0]: logical constraint 'and' has no operands",
        ),
        (
            {
                "@type": "Set",
                "permission": [
                    {
                        "action": "use",
                        "constraint": [
                            {
                                "and": [{"leftOperand": "count", "operator": "lt", "rightOperand": "1"}],
                                "or": [{"leftOperand": "count", "operator": "lt", "rightOperand": "1"}],
                            }
                        ],
                    }
                ],
            },
            "exactly one operator",
        ),
        (
            {
                "@type": "Set",
                "permission": [
                    {
                        "action": "use",
                        "constraint": [{"and": [{"leftOperand": 5, "operator": "lt", "rightOperand": "1"}]}],
                    }
                ],
            },
            "permission[0].constraint[0].and[0].leftOperand: leftOperand must be a non-empty string",
        ),
        (
            {"@type": "Set", "prohibition": [{"action": "use", "duty": [{"action": "inform"}]}]},
            "prohibition[0]: a prohibition cannot have duties",
        ),
        ({"@type": "Set", "conflict": "maybe"}, "conflict: unsupported conflict strategy"),
        (
            {"@type": "Set", "permission": [{"action": ["use", "read"]}]},
            "permission[0].action: a rule has exactly one action",
        ),
    ],
)
def test_malformed_policies_name_the_path(doc: Any, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    assert message in str(info.value)


def test_policy_is_typed() -> None:
    policy = parse_policy(
        {
            "@type": "Agreement",
            "@id": "a1",
            "assigner": "p",
            "assignee": "c",
            "target": "t",
            "timestamp": "2024-01-01T00:00:00Z",
            "permission": [{"action": "use"}],
        }
    )
    assert isinstance(policy, Policy)
    assert (
        policy.type,
        policy.assigner and policy.assigner.uid,
        policy.assignee and policy.assignee.uid,
    ) == ("Agreement", "p", "c")
    assert policy.timestamp == "2024-01-01T00:00:00Z"
