"""Our own term table: how compact ODRL / Catena-X tokens map to IRIs and back.

Used instead of pyld on the hot path. A token can be written as a bare term (``use``,
``dateTime``, ``BusinessPartnerNumber``), a prefixed name (``odrl:use``,
``cx-policy:Membership``) or a full IRI (either Catena-X namespace). Everything inside the
engine works on full IRIs; the writer turns them back into the shortest DSP compact token.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACTION_PARENT",
    "CX",
    "CX_LEGACY",
    "CX_TERMS",
    "LOGICAL_OPERATORS",
    "ODRL",
    "ODRL_LEFT_OPERANDS",
    "OPERATORS",
    "POLICY_TYPES",
    "XSD",
    "action_covers",
    "compact_iri",
    "display_name",
    "expand_token",
    "is_known_action",
]

ODRL: Final = "http://www.w3.org/ns/odrl/2/"
CX: Final = "https://w3id.org/catenax/2025/9/policy/"
CX_LEGACY: Final = "https://w3id.org/catenax/policy/"
XSD: Final = "http://www.w3.org/2001/XMLSchema#"
RDF_VALUE: Final = "http://www.w3.org/1999/02/22-rdf-syntax-ns#value"

#: Prefixes we accept in prefixed names (``cx-policy:`` means the 2025-09 namespace unless the
#: document's own context said otherwise; the parser passes such overrides in).
PREFIXES: Final[dict[str, str]] = {
    "odrl": ODRL,
    "cx-policy": CX,
    "xsd": XSD,
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dct": "http://purl.org/dc/terms/",
    "dcterms": "http://purl.org/dc/terms/",
}

POLICY_TYPES: Final = frozenset(
    {"Policy", "Set", "Offer", "Agreement", "Request", "Ticket", "Privacy", "Assertion"}
)
OPERATORS: Final = frozenset(
    {"eq", "neq", "lt", "lteq", "gt", "gteq", "isA", "hasPart", "isPartOf", "isAllOf", "isAnyOf", "isNoneOf"}
)
LOGICAL_OPERATORS: Final = ("and", "or", "xone", "andSequence")

#: The 34 left operands of the ODRL 2.2 vocabulary.
ODRL_LEFT_OPERANDS: Final = frozenset(
    {
        "absolutePosition", "absoluteSize", "absoluteSpatialPosition", "absoluteTemporalPosition",
        "count", "dateTime", "delayPeriod", "deliveryChannel", "device", "elapsedTime", "event",
        "fileFormat", "industry", "language", "media", "meteredTime", "payAmount", "percentage",
        "product", "purpose", "recipient", "relativePosition", "relativeSize",
        "relativeSpatialPosition", "relativeTemporalPosition", "resolution", "spatial",
        "spatialCoordinates", "system", "systemDevice", "timeInterval", "unitOfCount", "version",
        "virtualLocation",
    }
)  # fmt: skip

#: Catena-X profile terms (CX-0152): left operands plus the ``access`` action.
CX_TERMS: Final = frozenset(
    {
        "access", "AffiliatesBpnl", "AffiliatesRegion", "BusinessPartnerGroup",
        "BusinessPartnerNumber", "ConfidentialInformationMeasures", "ConfidentialInformationSharing",
        "ContractReference", "ContractTermination", "DataFrequency", "DataProvisioningEndDate",
        "DataProvisioningEndDurationDays", "DataUsageEndDate", "DataUsageEndDurationDays",
        "DataUsageEndDefinition", "ExclusiveUsage", "FrameworkAgreement", "JurisdictionLocation",
        "JurisdictionLocationReference", "Liability", "ManagedLegalEntityBpnl",
        "ManagedLegalEntityRegion", "Membership", "Precedence", "UsagePurpose", "UsageRestriction",
        "VersionChanges", "Warranty", "WarrantyDefinition", "WarrantyDuration",
        "WarrantyDurationMonths",
    }
)  # fmt: skip

#: Action hierarchy (``odrl:includedIn``), from the ODRL 2.2 vocabulary. Deprecated ODRL 2.1
#: actions without an ``includedIn`` are placed under the action that replaced them (``write``
#: is ``modify``, ``copy`` is ``reproduce``, ...). ``cx-policy:access`` (see the catalog entry)
#: is a kind of use. ``use`` and ``transfer`` are the two roots.
ACTION_PARENT: Final[dict[str, str | None]] = {
    ODRL + "use": None,
    ODRL + "transfer": None,
    **{
        ODRL + name: ODRL + "use"
        for name in (
            "acceptTracking", "aggregate", "annotate", "anonymize", "archive", "attribute",
            "compensate", "concurrentUse", "delete", "derive", "digitize", "distribute",
            "ensureExclusivity", "execute", "grantUse", "include", "index", "inform", "install",
            "modify", "move", "nextPolicy", "obtainConsent", "play", "present", "print", "read",
            "reproduce", "reviewPolicy", "stream", "synchronize", "textToSpeech", "transform",
            "translate", "uninstall", "watermark",
            # deprecated ODRL 2.1 actions, filed under their replacement's root
            "write", "append", "appendTo", "writeTo", "attachPolicy", "attachSource",
            "adHocShare", "share", "shareAlike", "commercialize", "secondaryUse", "license",
            "pay", "preview",
        )
    },
    ODRL + "display": ODRL + "play",
    ODRL + "extract": ODRL + "reproduce",
    ODRL + "copy": ODRL + "reproduce",
    ODRL + "extractChar": ODRL + "extract",
    ODRL + "extractPage": ODRL + "extract",
    ODRL + "extractWord": ODRL + "extract",
    ODRL + "export": ODRL + "transform",
    ODRL + "give": ODRL + "transfer",
    ODRL + "sell": ODRL + "transfer",
    ODRL + "lease": ODRL + "transfer",
    ODRL + "lend": ODRL + "transfer",
    **{"http://creativecommons.org/ns#" + n: ODRL + "use" for n in (
        "Attribution", "CommercialUse", "DerivativeWorks", "Distribution", "Notice",
        "Reproduction", "ShareAlike", "Sharing", "SourceCode")},
    CX + "access": ODRL + "use",
    CX_LEGACY + "access": ODRL + "use",
}  # fmt: skip

_ODRL_ACTION_NAMES: Final = frozenset(k[len(ODRL) :] for k in ACTION_PARENT if k.startswith(ODRL))


def is_known_action(iri: str) -> bool:
    """True if ``iri`` is an action we know the place of in the hierarchy."""
    return iri in ACTION_PARENT


def action_covers(rule_action: str, requested: str) -> bool:
    """True if a rule about ``rule_action`` is about ``requested`` too (same or included in it)."""
    if rule_action.startswith(CX_LEGACY):  # the 2024 and 2025 Catena-X actions are the same
        rule_action = CX + rule_action[len(CX_LEGACY) :]
    current: str | None = CX + requested[len(CX_LEGACY) :] if requested.startswith(CX_LEGACY) else requested
    while current is not None:
        if current == rule_action:
            return True
        current = ACTION_PARENT.get(current)
    return False


def expand_token(token: str, *, prefixes: dict[str, str] | None = None, vocab: str = ODRL) -> str:
    """The full IRI of a compact token.

    Bare terms resolve to ODRL if ODRL defines them, to the Catena-X profile if it does,
    and otherwise to ``vocab`` + token (DSP's ODRL profile context does the same for
    ``@vocab``-typed properties). Prefixed names use ``prefixes`` (the document's own
    context) before our defaults. Absolute IRIs are returned unchanged.
    """
    if ":" in token:
        prefix, _, rest = token.partition(":")
        if rest.startswith("//"):
            return token
        table = PREFIXES if prefixes is None else {**PREFIXES, **prefixes}
        ns = table.get(prefix)
        if ns is not None:
            return ns + rest
        return token  # urn:, did:, BPNL... ids and other absolute IRIs
    if token in _ODRL_ACTION_NAMES or token in ODRL_LEFT_OPERANDS or token in OPERATORS:
        return ODRL + token
    if token in LOGICAL_OPERATORS or token in POLICY_TYPES:
        return ODRL + token
    if token in CX_TERMS:
        return CX + token
    return vocab + token


#: ODRL terms the DSP 2025-1 ODRL profile context defines; other ODRL terms need ``odrl:``
#: on the wire (a bare ``read`` or ``dateTime`` would expand to a relative IRI there).
DSP_CONTEXT_TERMS: Final = frozenset(
    {"use", "Policy", "Set", "Offer", "Agreement", "Assertion", "Permission", "Prohibition", "Duty"}
    | OPERATORS
    | set(LOGICAL_OPERATORS)
)


def compact_iri(iri: str) -> str:
    """The DSP wire token of ``iri``: a bare term where the DSP context defines it, else
    ``odrl:name``, else the full IRI (the DSP context defines no Catena-X prefix)."""
    if iri.startswith(ODRL):
        name = iri[len(ODRL) :]
        return name if name in DSP_CONTEXT_TERMS else "odrl:" + name
    return iri


def display_name(iri: str) -> str:
    """A short name for messages: ``use``, ``cx-policy:Membership``, or the IRI."""
    if iri.startswith(ODRL):
        return iri[len(ODRL) :]
    if iri.startswith(CX):
        return "cx-policy:" + iri[len(CX) :]
    if iri.startswith(CX_LEGACY):
        return "cx-policy(2024):" + iri[len(CX_LEGACY) :]
    return iri
