"""Contract negotiation wire messages of DSP 2025-1: typed models, parsed from and built as compact JSON.

JSON-LD stays at the edge: peers send compact JSON with the DSP context, we read it as plain JSON
(the context is designed so compaction yields exactly these shapes) and we build bodies directly
from the models. Tests validate every body we emit against the official schemas and expand it
with pyld to prove it means what we think.

Parsing is strict where the schemas are (``@type``, required pids, exactly one of
``callbackAddress``/``providerPid``, offer ``@id``/``target``, at least one rule) and ignores
unknown properties (the schemas allow them). A malformed body raises
:class:`~connector.errors.ValidationError` listing every problem; the HTTP edge answers 400 with a
``ContractNegotiationError``.

The agreement signature travels as the extension property :data:`SIGNATURE_KEY` (a full IRI, so
it survives JSON-LD processing and peers that do not know it simply ignore it): the provider's
JWS in ``ContractAgreementMessage``, the consumer's countersignature in
``ContractAgreementVerificationMessage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connector.errors import ValidationError
from vocab import DSP_CONTEXT

__all__ = [
    "SIGNATURE_KEY",
    "AgreementMessage",
    "AgreementVerificationMessage",
    "ContractRequestMessage",
    "NegotiationEventMessage",
    "NegotiationMessage",
    "OfferMessage",
    "TerminationMessage",
    "error_body",
    "negotiation_body",
    "parse_message",
]

#: Extension property carrying a compact JWS over the agreement's canonical JSON.
SIGNATURE_KEY = "https://w3id.org/dadam/v1/agreementSignature"

_CTX = [DSP_CONTEXT]


def _ctx() -> list[str]:
    return list(_CTX)


@dataclass(frozen=True, slots=True)
class ContractRequestMessage:
    """Initial request (``callback_address`` set) or counter-offer (``provider_pid`` set)."""

    consumer_pid: str
    offer: dict[str, Any]
    callback_address: str | None = None
    provider_pid: str | None = None
    id: str | None = None
    type = "ContractRequestMessage"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"@context": _ctx(), "@type": self.type, "consumerPid": self.consumer_pid}
        if self.id:
            body["@id"] = self.id
        if self.provider_pid is not None:
            body["providerPid"] = self.provider_pid
        body["offer"] = self.offer
        if self.callback_address is not None:
            body["callbackAddress"] = self.callback_address
        return body


@dataclass(frozen=True, slots=True)
class OfferMessage:
    """Provider offer: initial (``callback_address``) or within a negotiation (``consumer_pid``)."""

    provider_pid: str
    offer: dict[str, Any]
    consumer_pid: str | None = None
    callback_address: str | None = None
    id: str | None = None
    type = "ContractOfferMessage"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"@context": _ctx(), "@type": self.type, "providerPid": self.provider_pid}
        if self.id:
            body["@id"] = self.id
        if self.consumer_pid is not None:
            body["consumerPid"] = self.consumer_pid
        body["offer"] = self.offer
        if self.callback_address is not None:
            body["callbackAddress"] = self.callback_address
        return body


@dataclass(frozen=True, slots=True)
class AgreementMessage:
    provider_pid: str
    consumer_pid: str
    agreement: dict[str, Any]
    signature: str | None = None
    id: str | None = None
    type = "ContractAgreementMessage"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "@context": _ctx(),
            "@type": self.type,
            "providerPid": self.provider_pid,
            "consumerPid": self.consumer_pid,
            "agreement": self.agreement,
        }
        if self.id:
            body["@id"] = self.id
        if self.signature:
            body[SIGNATURE_KEY] = self.signature
        return body


@dataclass(frozen=True, slots=True)
class AgreementVerificationMessage:
    provider_pid: str
    consumer_pid: str
    signature: str | None = None
    id: str | None = None
    type = "ContractAgreementVerificationMessage"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "@context": _ctx(),
            "@type": self.type,
            "providerPid": self.provider_pid,
            "consumerPid": self.consumer_pid,
        }
        if self.id:
            body["@id"] = self.id
        if self.signature:
            body[SIGNATURE_KEY] = self.signature
        return body


@dataclass(frozen=True, slots=True)
class NegotiationEventMessage:
    provider_pid: str
    consumer_pid: str
    event_type: str  # "ACCEPTED" | "FINALIZED"
    id: str | None = None
    type = "ContractNegotiationEventMessage"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "@context": _ctx(),
            "@type": self.type,
            "providerPid": self.provider_pid,
            "consumerPid": self.consumer_pid,
            "eventType": self.event_type,
        }
        if self.id:
            body["@id"] = self.id
        return body


@dataclass(frozen=True, slots=True)
class TerminationMessage:
    provider_pid: str
    consumer_pid: str
    code: str | None = None
    reason: tuple[str, ...] = ()
    id: str | None = None
    type = "ContractNegotiationTerminationMessage"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "@context": _ctx(),
            "@type": self.type,
            "providerPid": self.provider_pid,
            "consumerPid": self.consumer_pid,
        }
        if self.id:
            body["@id"] = self.id
        if self.code:
            body["code"] = self.code
        if self.reason:
            body["reason"] = list(self.reason)
        return body


NegotiationMessage = (
    ContractRequestMessage
    | OfferMessage
    | AgreementMessage
    | AgreementVerificationMessage
    | NegotiationEventMessage
    | TerminationMessage
)


def negotiation_body(provider_pid: str | None, consumer_pid: str | None, state: str) -> dict[str, Any]:
    """The ``ContractNegotiation`` ACK / GET body."""
    return {
        "@context": _ctx(),
        "@type": "ContractNegotiation",
        "providerPid": provider_pid or "",
        "consumerPid": consumer_pid or "",
        "state": state,
    }


def error_body(
    provider_pid: str | None, consumer_pid: str | None, code: str, reasons: list[str]
) -> dict[str, Any]:
    """A ``ContractNegotiationError`` body (pids may be unknown: then empty strings)."""
    return {
        "@context": _ctx(),
        "@type": "ContractNegotiationError",
        "providerPid": provider_pid or "",
        "consumerPid": consumer_pid or "",
        "code": code,
        "reason": reasons or ["unspecified error"],
    }


# --- parsing ------------------------------------------------------------------------------------


def _id_value(v: Any) -> str | None:
    """A pid/IRI value: a plain string, or ``{"@id": ...}`` from expanded-ish senders."""
    if isinstance(v, str) and v:
        return v
    if isinstance(v, Mapping) and isinstance(v.get("@id"), str) and v["@id"]:
        return str(v["@id"])
    return None


class _Checker:
    def __init__(self, body: Mapping[str, Any], expected: str) -> None:
        self.body = body
        self.errors: list[str] = []
        self.expected = expected

    def pid(self, name: str, required: bool = True) -> str | None:
        if name not in self.body:
            if required:
                self.errors.append(f"{name}: required")
            return None
        v = _id_value(self.body[name])
        if v is None:
            self.errors.append(f"{name}: must be a non-empty string")
        return v

    def text(self, name: str) -> str | None:
        v = self.body.get(name)
        if v is None:
            return None
        if not isinstance(v, str):
            self.errors.append(f"{name}: must be a string")
            return None
        return v

    def offer(self, name: str, *, target_required: bool) -> dict[str, Any]:
        v = self.body.get(name)
        if not isinstance(v, Mapping):
            self.errors.append(f"{name}: required object")
            return {}
        if not _id_value(v.get("@id")):
            self.errors.append(f"{name}.@id: required")
        t = v.get("@type")
        if t is not None and t != "Offer" and t != "odrl:Offer":
            self.errors.append(f"{name}.@type: must be 'Offer', got {t!r}")
        if target_required and not _id_value(v.get("target")):
            self.errors.append(f"{name}.target: required (the dataset id)")
        if not any(isinstance(v.get(k), list) and v.get(k) for k in ("permission", "prohibition")):
            self.errors.append(f"{name}: needs at least one permission or prohibition")
        return dict(v)

    def done(self) -> None:
        if self.errors:
            raise ValidationError(f"malformed {self.expected}", errors=self.errors)


def _check_context(body: Mapping[str, Any], errors: list[str]) -> None:
    ctx = body.get("@context")
    if ctx is None:
        return  # plain-JSON senders: tolerated, the meaning is fixed by @type and our binding
    if isinstance(ctx, str):
        ctx = [ctx]
    if not isinstance(ctx, list) or not any(c in _CTX for c in ctx if isinstance(c, str)):
        errors.append(f"@context: must include {_CTX[0]!r}")


def parse_message(body: Any, expected: str | tuple[str, ...]) -> NegotiationMessage:
    """Parse a received CN message; ``expected`` is the ``@type`` (or types) the endpoint takes."""
    allowed = (expected,) if isinstance(expected, str) else expected
    if not isinstance(body, Mapping):
        raise ValidationError(f"malformed {allowed[0]}", errors=["body: must be a JSON object"])
    typ = body.get("@type")
    if isinstance(typ, str) and typ.startswith("dspace:"):
        typ = typ.removeprefix("dspace:")
    if typ not in allowed:
        raise ValidationError(
            f"expected {' or '.join(allowed)}",
            errors=[f"@type: got {typ!r}, expected {' or '.join(allowed)}"],
        )
    c = _Checker(body, str(typ))
    _check_context(body, c.errors)
    mid = body.get("@id") if isinstance(body.get("@id"), str) else None
    msg: NegotiationMessage
    if typ == "ContractRequestMessage":
        consumer_pid = c.pid("consumerPid")
        provider_pid = c.pid("providerPid", required=False)
        cb = c.text("callbackAddress")
        if (cb is None) == (provider_pid is None):
            c.errors.append(
                "exactly one of callbackAddress (initial) or providerPid (counter-offer) is required"
            )
        offer = c.offer("offer", target_required=True)
        c.done()
        msg = ContractRequestMessage(str(consumer_pid), offer, cb, provider_pid, mid)
    elif typ == "ContractOfferMessage":
        provider_pid = c.pid("providerPid")
        consumer_pid = c.pid("consumerPid", required=False)
        cb = c.text("callbackAddress")
        if (cb is None) == (consumer_pid is None):
            c.errors.append("exactly one of callbackAddress (initial) or consumerPid is required")
        offer = c.offer("offer", target_required=True)
        c.done()
        msg = OfferMessage(str(provider_pid), offer, consumer_pid, cb, mid)
    elif typ == "ContractAgreementMessage":
        provider_pid, consumer_pid = c.pid("providerPid"), c.pid("consumerPid")
        agr = body.get("agreement")
        if not isinstance(agr, Mapping):
            c.errors.append("agreement: required object")
            agr = {}
        else:
            for k in ("@id", "target", "assigner", "assignee"):
                if not _id_value(agr.get(k)):
                    c.errors.append(f"agreement.{k}: required")
            if agr.get("@type") not in ("Agreement", "odrl:Agreement"):
                c.errors.append(f"agreement.@type: must be 'Agreement', got {agr.get('@type')!r}")
        sig = body.get(SIGNATURE_KEY)
        c.done()
        msg = AgreementMessage(
            str(provider_pid), str(consumer_pid), dict(agr), sig if isinstance(sig, str) else None, mid
        )
    elif typ == "ContractAgreementVerificationMessage":
        provider_pid, consumer_pid = c.pid("providerPid"), c.pid("consumerPid")
        sig = body.get(SIGNATURE_KEY)
        c.done()
        msg = AgreementVerificationMessage(
            str(provider_pid), str(consumer_pid), sig if isinstance(sig, str) else None, mid
        )
    elif typ == "ContractNegotiationEventMessage":
        provider_pid, consumer_pid = c.pid("providerPid"), c.pid("consumerPid")
        et = body.get("eventType")
        if isinstance(et, str):
            et = et.removeprefix("dspace:").removeprefix("https://w3id.org/dspace/2025/1/")
        if et not in ("ACCEPTED", "FINALIZED"):
            c.errors.append(f"eventType: must be ACCEPTED or FINALIZED, got {et!r}")
        c.done()
        msg = NegotiationEventMessage(str(provider_pid), str(consumer_pid), str(et), mid)
    else:  # ContractNegotiationTerminationMessage
        provider_pid, consumer_pid = c.pid("providerPid"), c.pid("consumerPid")
        code = body.get("code")
        reason = body.get("reason")
        reasons: tuple[str, ...] = ()
        if isinstance(reason, list):
            reasons = tuple(r if isinstance(r, str) else str(r) for r in reason)
        elif reason is not None:
            reasons = (str(reason),)
        c.done()
        msg = TerminationMessage(
            str(provider_pid), str(consumer_pid), None if code is None else str(code), reasons, mid
        )
    return msg
