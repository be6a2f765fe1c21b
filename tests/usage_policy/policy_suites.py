"""Adapter: SolidLab ODRL test suite (Turtle) -> our policy JSON and EvaluationContext.

The suite is RDF; our engine reads JSON policies. This maps each policy graph to compact
policy JSON (full IRIs for terms), each request + state of the world to an
EvaluationContext, and each expected compliance report to the states we compare with.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import rdflib
from rdflib import RDF, Literal, URIRef

from usage_policy import DutyState, EvaluationContext

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec"

ODRL = rdflib.Namespace("http://www.w3.org/ns/odrl/2/")
REPORT = rdflib.Namespace("https://w3id.org/force/compliance-report#")
EX = rdflib.Namespace("http://example.org/")
DCT = rdflib.Namespace("http://purl.org/dc/terms/")


@functools.cache
def graph(path: Path) -> rdflib.Graph:
    return rdflib.Graph().parse(path)


def _ref(g: rdflib.Graph, node: Any) -> Any:
    kind = g.value(node, RDF.type)
    if kind in (ODRL.PartyCollection, ODRL.AssetCollection):
        return {
            "@id": str(node),
            "@type": str(kind).rsplit("/", 1)[-1],
            "source": str(g.value(node, ODRL.source)),
        }
    return str(node)


def _constraint(g: rdflib.Graph, node: Any) -> dict[str, Any]:
    for op in ("and", "or", "xone", "andSequence"):
        items = list(g.objects(node, ODRL[op]))
        if items:
            return {"@id": str(node), op: [_constraint(g, i) for i in sorted(items)]}
    right = g.value(node, ODRL.rightOperand)
    value: Any = (
        {"@value": str(right), "@type": str(right.datatype)}
        if isinstance(right, Literal) and right.datatype
        else str(right)
    )
    return {
        "@id": str(node),
        "leftOperand": str(g.value(node, ODRL.leftOperand)),
        "operator": str(g.value(node, ODRL.operator)),
        "rightOperand": value,
    }


def _rule(g: rdflib.Graph, node: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"@id": str(node)}
    action = g.value(node, ODRL.action)
    if action is not None:
        out["action"] = str(action)
    for key in ("target", "assignee", "assigner"):
        value = g.value(node, ODRL[key])
        if value is not None:
            out[key] = _ref(g, value)
    constraints = [_constraint(g, c) for c in g.objects(node, ODRL.constraint)]
    if constraints:
        out["constraint"] = constraints
    duties = [_rule(g, d) for d in g.objects(node, ODRL.duty)]
    if duties:
        out["duty"] = duties
    return out


def policy_json(path: Path) -> dict[str, Any]:
    g = graph(path)
    (node,) = [
        s
        for s in g.subjects(RDF.type, None)
        if g.value(s, RDF.type) in (ODRL.Set, ODRL.Offer, ODRL.Agreement)
    ]
    out: dict[str, Any] = {"@id": str(node), "@type": str(g.value(node, RDF.type)).rsplit("/", 1)[-1]}
    for key in ("permission", "prohibition", "obligation"):
        rules = [_rule(g, r) for r in g.objects(node, ODRL[key])]
        if rules:
            out[key] = rules
    return out


def context(request: Path, sotw: Path) -> EvaluationContext:
    rg, sg = graph(request), graph(sotw)
    (perm,) = list(rg.objects(None, ODRL.permission))
    party = str(rg.value(perm, ODRL.assignee))
    target = str(rg.value(perm, ODRL.target))
    now = next(o for s, o in sg.subject_objects(DCT.issued) if str(s).endswith("currentTime")).toPython()
    assert isinstance(now, datetime)
    states = {"Fulfilled": DutyState.FULFILLED, "Violated": DutyState.VIOLATED, "NonSet": DutyState.PENDING}
    duty_states = {
        str(sg.value(r, REPORT.rule)): states[str(sg.value(r, REPORT.deonticState)).rsplit("#", 1)[-1]]
        for r in sg.subjects(RDF.type, REPORT.DutyReport)
    }
    return EvaluationContext(
        now=now,
        party=party,
        action=str(rg.value(perm, ODRL.action)),
        target=target,
        party_collections=frozenset(str(o) for o in sg.objects(URIRef(party), ODRL.partOf)),
        asset_collections=frozenset(str(o) for o in sg.objects(URIRef(target), ODRL.partOf)),
        duty_states=duty_states,
    )


@dataclass
class Expected:
    rule: str
    kind: str  # PermissionReport / ProhibitionReport
    active: bool
    premises: dict[str, bool]  # Target/Party/Action -> satisfied
    constraints: dict[str, bool]  # constraint IRI -> satisfied


@dataclass
class Case:
    name: str
    title: str
    policy: Path
    request: Path
    sotw: Path
    expected: list[Expected]


def cases(base: Path) -> list[Case]:
    idx = graph(base / "index.ttl")
    out: list[Case] = []
    for tc in idx.subjects(EX.policySource, None):

        def local(prop: URIRef, folder: str, tc: Any = tc) -> Path:
            return base / folder / str(idx.value(tc, prop)).rsplit("/", 1)[-1]

        exp_path = local(EX.expectedReportSource, "test_cases")
        eg = graph(exp_path)
        report = eg.value(tc, EX.expectedReport)
        expected: list[Expected] = []
        constraint_states = {
            str(eg.value(c, REPORT.constraint)): eg.value(c, REPORT.satisfactionState) == REPORT.Satisfied
            for c in eg.subjects(RDF.type, REPORT.ConstraintReport)
            if _belongs(eg, c, report)
        }
        for rr in eg.objects(report, REPORT.ruleReport):
            premises: dict[str, bool] = {}
            for p in eg.objects(rr, REPORT.premiseReport):
                ptype = eg.value(p, RDF.type)
                if ptype in (REPORT.TargetReport, REPORT.PartyReport, REPORT.ActionReport):
                    premises[str(ptype).rsplit("#", 1)[-1][: -len("Report")]] = (
                        eg.value(p, REPORT.satisfactionState) == REPORT.Satisfied
                    )
            expected.append(
                Expected(
                    rule=str(eg.value(rr, REPORT.rule)),
                    kind=str(eg.value(rr, RDF.type)).rsplit("#", 1)[-1],
                    active=eg.value(rr, REPORT.activationState) == REPORT.Active,
                    premises=premises,
                    constraints=constraint_states,
                )
            )
        out.append(
            Case(
                name=exp_path.stem
                + ("" if len(list(eg.subjects(RDF.type, EX.TestCase))) == 1 else f"#{str(tc)[-8:]}"),
                title=str(idx.value(tc, DCT.title)),
                policy=local(EX.policySource, "policies"),
                request=local(EX.requestSource, "requests"),
                sotw=local(EX.sotwSource, "sotw"),
                expected=expected,
            )
        )
    return sorted(out, key=lambda c: c.name)


def _belongs(g: rdflib.Graph, constraint_report: Any, report: Any) -> bool:
    """Constraint reports hang off the rule report of this test case (files hold several)."""
    frontier = {constraint_report}
    seen: set[Any] = set()
    while frontier:
        node = frontier.pop()
        if node == report:
            return True
        seen.add(node)
        for s in g.subjects(None, node):
            if s not in seen:
                frontier.add(s)
    return False
