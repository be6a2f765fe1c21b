"""The left-operand registry: what each left operand means, read from the evaluation context.

Adding a left operand is one small typed function::

    @left_operand("https://example.org/ns/tier", kind="string", input="claims.tier")
    def _tier(ctx: EvaluationContext) -> object:
        return ctx.claims.get("tier", MISSING)

A left operand that is not registered makes every decision that meets it a deny
("unsupported left operand"); nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from usage_policy._context import CATENA_X, EvaluationContext, Scope
from usage_policy._terms import CX, CX_LEGACY, ODRL, ODRL_LEFT_OPERANDS
from usage_policy._values import ORDERED_OPERATORS, SET_OPERATORS, Kind

__all__ = ["MISSING", "REGISTRY", "LeftOperandDef", "Mode", "left_operand", "lookup"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: Returned by a resolver when the context lacks the input (reported, and fails the check).
MISSING: Final = _Missing()

#: ``check``: compared with the context. ``recorded``: a contractual term the requester
#: accepts by agreeing; it is recorded in the agreement and listed in the decision, but no
#: technical fact can confirm it. ``price``: a payment term (in compensate duties).
Mode = Literal["check", "recorded", "price"]

ALL_SCOPES: Final = frozenset(Scope)
AFTER_CATALOG: Final = frozenset({Scope.NEGOTIATION, Scope.TRANSFER_START, Scope.USAGE})
AT_USE: Final = frozenset({Scope.TRANSFER_START, Scope.USAGE})

Resolver = Callable[[EvaluationContext], Any]
Comparator = Callable[[str, Any, Any], bool]


@dataclass(frozen=True, slots=True)
class LeftOperandDef:
    """One registered left operand."""

    iri: str
    kind: Kind
    resolve: Resolver
    input: str  # the context input it reads, named in "missing input" reports
    scopes: frozenset[Scope] = ALL_SCOPES
    operators: frozenset[str] | None = None
    mode: Mode = "check"
    compare: Comparator | None = None

    def allowed_operators(self) -> frozenset[str]:
        if self.operators is not None:
            return self.operators
        if self.kind in ("datetime", "integer", "decimal", "duration"):
            return ORDERED_OPERATORS
        return ORDERED_OPERATORS - {"lt", "lteq", "gt", "gteq"} | SET_OPERATORS


REGISTRY: dict[str, LeftOperandDef] = {}


def left_operand(
    *iris: str,
    kind: Kind,
    input: str,
    scopes: frozenset[Scope] = ALL_SCOPES,
    operators: frozenset[str] | None = None,
    mode: Mode = "check",
    compare: Comparator | None = None,
) -> Callable[[Resolver], Resolver]:
    """Register ``fn(ctx) -> value | MISSING`` as the meaning of the left operand ``iris``."""

    def deco(fn: Resolver) -> Resolver:
        for iri in iris:
            REGISTRY[iri] = LeftOperandDef(iri, kind, fn, input, scopes, operators, mode, compare)
        return fn

    return deco


def lookup(iri: str) -> LeftOperandDef | None:
    return REGISTRY.get(iri)


def _cx(name: str) -> tuple[str, str]:
    return (CX + name, CX_LEGACY + name)


# --- ODRL core ---------------------------------------------------------------------------------


@left_operand(ODRL + "dateTime", kind="datetime", input="now")
def _date_time(ctx: EvaluationContext) -> Any:
    return ctx.now


@left_operand(ODRL + "elapsedTime", kind="duration", input="usage.first_use", scopes=AT_USE)
def _elapsed(ctx: EvaluationContext) -> Any:
    start = ctx.usage.first_use or ctx.usage.agreed_at
    if start is None:
        return ctx.now - ctx.now  # this is the first use: nothing has elapsed
    return ctx.now - start


@left_operand(ODRL + "count", kind="integer", input="usage.count", scopes=AT_USE)
def _count(ctx: EvaluationContext) -> Any:
    return ctx.usage.count + 1  # this use included


@left_operand(ODRL + "purpose", kind="string", input="purpose", scopes=AFTER_CATALOG)
def _purpose(ctx: EvaluationContext) -> Any:
    return MISSING if ctx.purpose is None else ctx.purpose


@left_operand(ODRL + "spatial", kind="string", input="region")
def _spatial(ctx: EvaluationContext) -> Any:
    return MISSING if ctx.region is None else ctx.region


@left_operand(ODRL + "recipient", kind="iri", input="did/bpn/party")
def _recipient(ctx: EvaluationContext) -> Any:
    ids = ctx.identities()
    return ids if ids else MISSING


@left_operand(ODRL + "payAmount", kind="decimal", input="payment.paid")
def _pay_amount(ctx: EvaluationContext) -> Any:
    return ctx.payment.paid


@left_operand("https://w3id.org/dadam/v1/pricePlan", kind="string", input="(payment term)", mode="price")
def _price_plan(ctx: EvaluationContext) -> Any:
    """A compensate duty's price plan (link#sha256=hash): a payment term, recorded, never a condition."""
    return MISSING


def _from_values(name: str) -> Resolver:
    def resolve(ctx: EvaluationContext) -> Any:
        if name in ctx.values:
            return ctx.values[name]
        return ctx.values.get(ODRL + name, MISSING)

    return resolve


_VALUE_KINDS: dict[str, Kind] = {
    "event": "string",
    "industry": "string",
    "version": "string",
    "percentage": "decimal",
    "resolution": "decimal",
    "absoluteSize": "decimal",
    "relativeSize": "decimal",
    "absolutePosition": "decimal",
    "relativePosition": "decimal",
    "meteredTime": "duration",
    "delayPeriod": "duration",
    "timeInterval": "duration",
    "unitOfCount": "string",
}
for _name in sorted(ODRL_LEFT_OPERANDS):
    if ODRL + _name not in REGISTRY:
        left_operand(ODRL + _name, kind=_VALUE_KINDS.get(_name, "string"), input=f"values.{_name}")(
            _from_values(_name)
        )


# --- Catena-X profile (CX-0152) --------------------------------------------------------------


@left_operand(*_cx("Membership"), kind="string", input="memberships", operators=frozenset({"eq"}))
def _membership(ctx: EvaluationContext) -> Any:
    return "active" if CATENA_X in ctx.memberships else "none"


def _framework_compare(op: str, left: Any, right: Any) -> bool:
    """``Name:version`` must be held exactly; a bare ``Name`` matches any version held."""
    held: frozenset[str] = left
    found = right in held if ":" in right else any(h == right or h.startswith(right + ":") for h in held)
    return found if op == "eq" else not found


@left_operand(
    *_cx("FrameworkAgreement"),
    kind="string",
    input="framework_agreements",
    operators=frozenset({"eq", "neq"}),
    compare=_framework_compare,
)
def _framework(ctx: EvaluationContext) -> Any:
    return ctx.framework_agreements


_SET_OPS = frozenset({"isAnyOf", "isNoneOf", "eq", "neq"})


@left_operand(*_cx("BusinessPartnerNumber"), kind="string", input="bpn", operators=_SET_OPS)
def _bpn(ctx: EvaluationContext) -> Any:
    return MISSING if ctx.bpn is None else ctx.bpn


@left_operand(*_cx("BusinessPartnerGroup"), kind="string", input="groups", operators=_SET_OPS)
def _bpg(ctx: EvaluationContext) -> Any:
    return ctx.groups


@left_operand(
    *_cx("UsagePurpose"),
    kind="string",
    input="purpose",
    scopes=AFTER_CATALOG,
    operators=frozenset({"isAnyOf", "eq"}),
)
def _usage_purpose(ctx: EvaluationContext) -> Any:
    return MISSING if ctx.purpose is None else ctx.purpose


@left_operand(*_cx("DataUsageEndDate"), kind="datetime", input="now", operators=frozenset({"eq"}))
def _usage_end(ctx: EvaluationContext) -> Any:
    return ctx.now


def _usage_end_compare(op: str, left: Any, right: Any) -> bool:
    # "DataUsageEndDate eq D" means: use is allowed until D (inclusive).
    return bool(left <= right)


REGISTRY[CX + "DataUsageEndDate"] = LeftOperandDef(
    CX + "DataUsageEndDate",
    "datetime",
    _usage_end,
    "now",
    ALL_SCOPES,
    frozenset({"eq"}),
    "check",
    _usage_end_compare,
)
REGISTRY[CX_LEGACY + "DataUsageEndDate"] = REGISTRY[CX + "DataUsageEndDate"]


@left_operand(
    *_cx("DataUsageEndDurationDays"),
    kind="integer",
    input="usage.agreed_at",
    scopes=AT_USE,
    operators=frozenset({"eq"}),
    compare=lambda op, left, right: bool(left <= right),
)
def _usage_days(ctx: EvaluationContext) -> Any:
    """Days since the agreement was concluded (use allowed while <= the agreed number)."""
    if ctx.usage.agreed_at is None:
        return MISSING
    return (ctx.now - ctx.usage.agreed_at).days


def _restriction_compare(op: str, left: Any, right: Any) -> bool:
    """``UsageRestriction isAllOf [cx.thirdParty.forbidden:1, ...]`` (in a prohibition) holds,
    i.e. the prohibition bites, when the requester declares one of the forbidden activities."""
    declared: frozenset[str] = left
    values = right if isinstance(right, tuple | frozenset) else (right,)
    forbidden = {r.removeprefix("cx.").split(".forbidden")[0] for r in values}
    return bool(declared & forbidden)


@left_operand(
    *_cx("UsageRestriction"),
    kind="string",
    input="activities",
    scopes=AT_USE,
    operators=frozenset({"isAllOf"}),
    compare=_restriction_compare,
)
def _restriction(ctx: EvaluationContext) -> Any:
    return ctx.activities


def _recorded(ctx: EvaluationContext) -> Any:
    return MISSING


for _term, _kind in (
    ("ContractReference", "string"),
    ("AffiliatesRegion", "string"),
    ("AffiliatesBpnl", "string"),
    ("ManagedLegalEntityRegion", "string"),
    ("ManagedLegalEntityBpnl", "string"),
    ("DataFrequency", "string"),
    ("VersionChanges", "string"),
    ("ContractTermination", "string"),
    ("ConfidentialInformationMeasures", "string"),
    ("ConfidentialInformationSharing", "string"),
    ("ExclusiveUsage", "string"),
    ("Warranty", "string"),
    ("WarrantyDefinition", "string"),
    ("WarrantyDurationMonths", "integer"),
    ("WarrantyDuration", "integer"),
    ("Liability", "string"),
    ("JurisdictionLocation", "string"),
    ("JurisdictionLocationReference", "string"),
    ("Precedence", "string"),
    ("DataUsageEndDefinition", "string"),
    ("DataProvisioningEndDate", "datetime"),
    ("DataProvisioningEndDurationDays", "integer"),
):
    left_operand(*_cx(_term), kind=_kind, input="agreement", mode="recorded")(_recorded)  # type: ignore[arg-type]
