"""Ready-made policies: Catena-X access and usage policies, time-boxed and count-limited use,
and the data bank's standard contracts (data provision, jointly created data, brokered
resale) with their payment modes (flat fee, metered, lump sum, revenue share).

Every function returns a parsed :class:`~usage_policy.Policy`; ``.to_dsp()`` gives the wire
form. Payment terms are ``compensate`` duties whose action refinement carries ``payAmount``
(with the currency as ``unit``), ``unitOfCount``, ``timeInterval`` or ``percentage``; the
evaluator returns them as :class:`~usage_policy.PriceTerms`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from usage_policy._model import Policy, parse_policy
from usage_policy._terms import CX, compact_iri, expand_token
from usage_policy._values import render

__all__ = [
    "Payment",
    "access_by_bpnl",
    "access_by_group",
    "brokered_resale",
    "count_limited",
    "cx_pcf_usage_policy",
    "data_provision",
    "flat_fee",
    "jointly_created_data",
    "lump_sum",
    "metered",
    "revenue_share",
    "time_boxed",
]

PCF_PURPOSE = "cx.pcf.base:1"
DATA_EXCHANGE_GOVERNANCE = "DataExchangeGovernance:1.0"


def _t(token: str) -> str:
    """The DSP wire spelling of a term (``odrl:dateTime``, ``use``, full Catena-X IRIs)."""
    return compact_iri(expand_token(token))


def _c(left: str, op: str, right: Any, **extra: Any) -> dict[str, Any]:
    return {"leftOperand": _t(left), "operator": op, "rightOperand": right, **extra}


def _policy(uid: str | None, ptype: str = "Set", **body: Any) -> Policy:
    doc: dict[str, Any] = {"@type": ptype}
    if uid is not None:
        doc["@id"] = uid
    doc.update({k: v for k, v in body.items() if v is not None})
    return parse_policy(doc)


def cx_pcf_usage_policy(uid: str | None = None) -> Policy:
    """The Catena-X PCF usage policy: DataExchangeGovernance 1.0 signed, active membership,
    purpose ``cx.pcf.base:1``."""
    return _policy(
        uid,
        permission=[
            {
                "action": "use",
                "constraint": [
                    {
                        "and": [
                            _c(CX + "FrameworkAgreement", "eq", DATA_EXCHANGE_GOVERNANCE),
                            _c(CX + "Membership", "eq", "active"),
                            _c(CX + "UsagePurpose", "isAnyOf", [PCF_PURPOSE]),
                        ]
                    }
                ],
            }
        ],
    )


def access_by_bpnl(bpnls: Sequence[str], uid: str | None = None) -> Policy:
    """Catena-X access policy: active members whose BPNL is in ``bpnls`` see the dataset."""
    return _policy(
        uid,
        permission=[
            {
                "action": CX + "access",
                "constraint": [
                    {
                        "and": [
                            _c(CX + "Membership", "eq", "active"),
                            _c(CX + "BusinessPartnerNumber", "isAnyOf", list(bpnls)),
                        ]
                    }
                ],
            }
        ],
    )


def access_by_group(groups: Sequence[str], uid: str | None = None) -> Policy:
    """Catena-X access policy: active members in one of the provider's BPN ``groups``."""
    return _policy(
        uid,
        permission=[
            {
                "action": CX + "access",
                "constraint": [
                    {
                        "and": [
                            _c(CX + "Membership", "eq", "active"),
                            _c(CX + "BusinessPartnerGroup", "isAnyOf", list(groups)),
                        ]
                    }
                ],
            }
        ],
    )


def time_boxed(start: datetime, end: datetime, *, action: str = "use", uid: str | None = None) -> Policy:
    """Use allowed from ``start`` (inclusive) until ``end`` (exclusive)."""
    return _policy(
        uid,
        permission=[
            {
                "action": _t(action),
                "constraint": [
                    {
                        "and": [
                            _c("dateTime", "gteq", render(start)),
                            _c("dateTime", "lt", render(end)),
                        ]
                    }
                ],
            }
        ],
    )


def count_limited(max_uses: int, *, action: str = "use", uid: str | None = None) -> Policy:
    """At most ``max_uses`` uses under the agreement (``count lteq max_uses``)."""
    return _policy(
        uid, permission=[{"action": _t(action), "constraint": [_c("count", "lteq", str(max_uses))]}]
    )


@dataclass(frozen=True, slots=True)
class Payment:
    """A payment mode, written as the refinement of a ``compensate`` duty."""

    mode: Literal["flat_fee", "metered", "lump_sum", "revenue_share"]
    amount: Decimal | None = None
    currency: str | None = None
    per: str | None = None  # call, MB, record (metered)
    interval: str | None = None  # xsd:duration (flat fee period)
    percentage: Decimal | None = None

    def duty(self, *, uid: str | None = None, compensated_party: Sequence[str] = ()) -> dict[str, Any]:
        refinement: list[dict[str, Any]] = []
        if self.amount is not None:
            refinement.append(_c("payAmount", "eq", str(self.amount), **{"odrl:unit": self.currency}))
        if self.per is not None:
            refinement.append(_c("unitOfCount", "eq", self.per))
        if self.interval is not None:
            refinement.append(_c("timeInterval", "eq", self.interval))
        if self.percentage is not None:
            refinement.append(_c("percentage", "eq", str(self.percentage)))
        duty: dict[str, Any] = {}
        if uid is not None:
            duty["@id"] = uid
        duty["action"] = {"rdf:value": {"@id": "odrl:compensate"}, "odrl:refinement": refinement}
        if compensated_party:
            duty["odrl:compensatedParty"] = list(compensated_party)
        return duty


def flat_fee(amount: Decimal | str, currency: str, interval: str = "P1M") -> Payment:
    """A fixed fee per period (default monthly), regardless of use."""
    return Payment("flat_fee", amount=Decimal(amount), currency=currency, interval=interval)


def metered(amount: Decimal | str, currency: str, per: Literal["call", "MB", "record"]) -> Payment:
    """A price per call, per MB or per record delivered."""
    return Payment("metered", amount=Decimal(amount), currency=currency, per=per)


def lump_sum(amount: Decimal | str, currency: str) -> Payment:
    """One payment for the whole agreement."""
    return Payment("lump_sum", amount=Decimal(amount), currency=currency)


def revenue_share(percentage: Decimal | str) -> Payment:
    """A share (percent) of the revenue made with the data."""
    return Payment("revenue_share", percentage=Decimal(percentage))


def data_provision(
    provider: str, payment: Payment, *, target: str | None = None, uid: str | None = None
) -> Policy:
    """Standard data provision contract: the consumer may use the data and pays ``payment``;
    passing the data on (``transfer``/``distribute``) is prohibited."""
    return _policy(
        uid,
        "Offer",
        assigner=provider,
        target=target,
        permission=[{"action": "use", "duty": [payment.duty(compensated_party=[provider])]}],
        prohibition=[{"action": _t("distribute")}, {"action": _t("transfer")}],
    )


def jointly_created_data(
    provider: str,
    co_creators: Sequence[str],
    payment: Payment,
    *,
    target: str | None = None,
    uid: str | None = None,
) -> Policy:
    """Data created jointly: every co-creator is compensated, and must be informed of each
    agreement (an ``inform`` duty naming them)."""
    parties = [provider, *co_creators]
    return _policy(
        uid,
        "Offer",
        assigner=provider,
        target=target,
        permission=[
            {
                "action": "use",
                "duty": [
                    payment.duty(compensated_party=parties),
                    {"action": "odrl:inform", "odrl:informedParty": list(co_creators)},
                ],
            }
        ],
        prohibition=[{"action": _t("distribute")}],
    )


def brokered_resale(
    broker: str,
    original_provider: str,
    payment: Payment,
    provider_share: Decimal | str,
    *,
    target: str | None = None,
    uid: str | None = None,
) -> Policy:
    """A broker resells a provider's data: the consumer pays the broker (``payment``); the
    broker must pass ``provider_share`` percent on to the original provider (a policy
    obligation on the broker); the consumer must not resell."""
    return _policy(
        uid,
        "Offer",
        assigner=broker,
        target=target,
        permission=[{"action": "use", "duty": [payment.duty(compensated_party=[broker])]}],
        prohibition=[{"action": _t("sell")}, {"action": _t("distribute")}],
        obligation=[
            {
                "assignee": broker,
                **revenue_share(provider_share).duty(compensated_party=[original_provider]),
            }
        ],
    )
