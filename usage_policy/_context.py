"""What a decision is made about: the scope and the (verified) facts about the request."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from connector.errors import ValidationError

__all__ = [
    "CATENA_X",
    "DutyState",
    "EvaluationContext",
    "PaymentState",
    "Scope",
    "UsageState",
    "context_from_credentials",
]

#: The membership name the Catena-X ``Membership eq active`` constraint looks for.
CATENA_X = "catena-x"


class Scope(enum.StrEnum):
    """When a policy is evaluated. Decides the default action and which inputs are checked."""

    CATALOG = "catalog"  # is the dataset visible to this requester (access policy)
    NEGOTIATION = "negotiation"  # may this requester get a contract (contract policy)
    TRANSFER_START = "transfer-start"  # may a transfer under this agreement start now
    USAGE = "usage"  # is this single use (request to the data plane) still allowed

    @property
    def default_action(self) -> str:
        return "cx-policy:access" if self is Scope.CATALOG else "use"


class DutyState(enum.StrEnum):
    """What is known about a duty (by its ``@id``), e.g. from the ledger or a report.

    ``PENDING`` means known to be open but not yet due (billed later, deadline ahead).
    A duty with no known state is "due" when a contract is negotiated (it becomes an
    obligation of the agreement), but unfulfilled when the data is used, unless its
    action is done after use by nature (``delete``, ``inform``).
    """

    FULFILLED = "fulfilled"
    VIOLATED = "violated"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class UsageState:
    """Use so far under the agreement: what ``count``/``elapsedTime``/quotas compare with."""

    count: int = 0  # completed uses before this one
    first_use: datetime | None = None
    agreed_at: datetime | None = None  # when the agreement was concluded
    bytes: int = 0
    records: int = 0


@dataclass(frozen=True, slots=True)
class PaymentState:
    """What the data bank knows about payment for this agreement."""

    paid: Decimal = Decimal(0)
    currency: str | None = None
    overdue: bool = False
    #: The data bank keeps an account for this agreement and bills its use (metered, in
    #: arrears): a ``compensate`` duty is then pending, not a missing precondition.
    account_open: bool = False


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class EvaluationContext:
    """The verified facts a decision is based on. Anything missing is reported, never assumed.

    ``memberships``, ``framework_agreements``, ``credentials`` and ``groups`` come from the
    requester's verified credentials (DCP) and the provider's own BPN group assignments;
    ``purpose`` is what the requester declared; ``party_collections``/``asset_collections``
    say which collections the requester / the target belong to.
    """

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    did: str | None = None
    bpn: str | None = None
    party: str | None = None  # requesting party IRI if neither DID nor BPN is used
    memberships: frozenset[str] = frozenset()
    framework_agreements: frozenset[str] = frozenset()
    credentials: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)
    region: str | None = None
    purpose: str | None = None
    action: str | None = None
    target: str | None = None
    party_collections: frozenset[str] = frozenset()
    asset_collections: frozenset[str] = frozenset()
    usage: UsageState = field(default_factory=UsageState)
    payment: PaymentState = field(default_factory=PaymentState)
    duty_states: Mapping[str, DutyState] = field(default_factory=dict)
    #: Values of further left operands by IRI or compact name (``resolution``, ``industry``...).
    values: Mapping[str, Any] = field(default_factory=dict)
    #: Kinds of use the requester declares (``thirdParty``, ``derivations``, ...), checked
    #: against Catena-X ``UsageRestriction`` prohibitions.
    activities: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "now", _aware(self.now))

    def identities(self) -> frozenset[str]:
        """Every identifier the requester is known by (DID, BPN, party IRI)."""
        return frozenset(x for x in (self.did, self.bpn, self.party) if x)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationContext:
        """Build a context from JSON (API, CLI). Unknown keys are an error, not ignored."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"unknown context field(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        try:
            for key, value in data.items():
                if key == "now":
                    kwargs[key] = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
                elif key in (
                    "memberships",
                    "framework_agreements",
                    "credentials",
                    "groups",
                    "party_collections",
                    "asset_collections",
                    "activities",
                ):
                    if not isinstance(value, list | tuple | set | frozenset):
                        raise ValidationError(f"context field {key} must be a list")
                    kwargs[key] = frozenset(str(v) for v in value)
                elif key == "usage":
                    u = dict(value)
                    for k in ("first_use", "agreed_at"):
                        if u.get(k) is not None:
                            u[k] = _aware(datetime.fromisoformat(str(u[k]).replace("Z", "+00:00")))
                    kwargs[key] = UsageState(**u)
                elif key == "payment":
                    p = dict(value)
                    if "paid" in p:
                        p["paid"] = Decimal(str(p["paid"]))
                    kwargs[key] = PaymentState(**p)
                elif key == "duty_states":
                    kwargs[key] = {str(k): DutyState(v) for k, v in dict(value).items()}
                else:
                    kwargs[key] = value
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"invalid evaluation context: {exc}") from exc
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the inverse of :meth:`from_dict`)."""
        return {
            "now": self.now.isoformat(),
            "did": self.did,
            "bpn": self.bpn,
            "party": self.party,
            "memberships": sorted(self.memberships),
            "framework_agreements": sorted(self.framework_agreements),
            "credentials": sorted(self.credentials),
            "groups": sorted(self.groups),
            "claims": dict(self.claims),
            "region": self.region,
            "purpose": self.purpose,
            "action": self.action,
            "target": self.target,
            "party_collections": sorted(self.party_collections),
            "asset_collections": sorted(self.asset_collections),
            "usage": {
                "count": self.usage.count,
                "first_use": self.usage.first_use.isoformat() if self.usage.first_use else None,
                "agreed_at": self.usage.agreed_at.isoformat() if self.usage.agreed_at else None,
                "bytes": self.usage.bytes,
                "records": self.usage.records,
            },
            "payment": {
                "paid": str(self.payment.paid),
                "currency": self.payment.currency,
                "overdue": self.payment.overdue,
                "account_open": self.payment.account_open,
            },
            "duty_states": {k: v.value for k, v in self.duty_states.items()},
            "values": dict(self.values),
            "activities": sorted(self.activities),
        }


def context_from_credentials(credentials: Iterable[Mapping[str, Any]], **fields: Any) -> EvaluationContext:
    """An :class:`EvaluationContext` from the requester's **verified** Catena-X credentials.

    Each item is a verifiable credential (JSON, or a VC-JWT payload with a ``vc`` claim)
    that the caller has already verified (signature, issuer, expiry). Mapping:
    ``MembershipCredential`` -> membership ``catena-x``; ``BpnCredential`` /
    ``holderIdentifier`` -> ``bpn``; ``credentialSubject.id`` -> ``did``;
    ``DataExchangeGovernanceCredential`` and the use-case framework credentials
    (``PcfCredential``, ``QualityCredential``, ...) -> framework agreement
    ``<UseCase>:<contractVersion>``; every type -> ``credentials``. ``fields`` set the
    rest (purpose, now, usage, ...). Credentials about different holders are an error.
    """
    did: str | None = None
    bpns: set[str] = set()
    memberships: set[str] = set()
    agreements: set[str] = set()
    types: set[str] = set()
    for i, raw in enumerate(credentials):
        vc = raw.get("vc", raw) if isinstance(raw.get("vc"), Mapping) else raw
        vc_types = vc.get("type") or []
        vc_types = [vc_types] if isinstance(vc_types, str) else list(vc_types)
        subject = vc.get("credentialSubject") or {}
        if isinstance(subject, list):
            subject = subject[0] if len(subject) == 1 else {}
        if not isinstance(subject, Mapping):
            raise ValidationError(f"credential {i}: credentialSubject must be an object")
        sid = subject.get("id")
        if sid:
            if did is not None and sid != did:
                raise ValidationError(f"credential {i}: holder {sid} differs from {did}")
            did = str(sid)
        for key in ("bpn", "holderIdentifier"):
            if subject.get(key):
                bpns.add(str(subject[key]))
        for t in vc_types:
            if t == "VerifiableCredential":
                continue
            types.add(str(t))
            if t == "MembershipCredential":
                memberships.add(CATENA_X)
            elif t.endswith("Credential") and subject.get("contractVersion"):
                use_case = str(subject.get("useCase") or t[: -len("Credential")])
                agreements.add(f"{use_case}:{subject['contractVersion']}")
    if len(bpns) > 1:
        raise ValidationError(f"credentials name different BPNs: {', '.join(sorted(bpns))}")
    base: dict[str, Any] = {
        "did": did,
        "bpn": next(iter(bpns), None),
        "memberships": frozenset(memberships),
        "framework_agreements": frozenset(agreements),
        "credentials": frozenset(types),
    }
    base.update(fields)
    return EvaluationContext(**base)
