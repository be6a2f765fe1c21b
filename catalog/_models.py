"""Typed catalog models: datasets with their metadata, private data addresses, policies, contract definitions.

These are the only shapes the catalog works with internally; DSP compact JSON and DCAT-AP Turtle are
both generated from them (``_dsp.py``, ``_turtle.py``). Validation happens here, once, when a model is
built (management API, samples, store reads), so every later step can trust the data.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from catalog._odrl import odrl_problems

__all__ = [
    "CATEGORY_SCHEME",
    "DADAM_NS",
    "FREQUENCY_NS",
    "Agent",
    "Category",
    "ContractDefinition",
    "DataAddress",
    "Dataset",
    "DatasetSelector",
    "PolicyDefinition",
    "QualityMeasurement",
    "TemporalCoverage",
    "UseCaseSample",
    "category_iri",
    "model_errors",
]

#: SKOS concept scheme of dataset categories; each category is ``<scheme>/<value>``.
CATEGORY_SCHEME = "https://w3id.org/dadam/category"
#: dadam's own vocabulary, for the two properties no standard vocabulary covers (purpose, usage note).
DADAM_NS = "https://w3id.org/dadam/ns#"
#: EU Publications Office frequency authority table (what DCAT-AP uses for dct:accrualPeriodicity).
FREQUENCY_NS = "http://publications.europa.eu/resource/authority/frequency/"
_FREQUENCIES = {
    "continuous": "CONT",
    "hourly": "HOURLY",
    "daily": "DAILY",
    "weekly": "WEEKLY",
    "monthly": "MONTHLY",
    "quarterly": "QUARTERLY",
    "annual": "ANNUAL",
    "irregular": "IRREG",
    "never": "NEVER",
}

_ID = re.compile(r"^[^\s<>\"{}|\\^`]+$")
_IRI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]+$")
_CD_ID = re.compile(r"^[^\s:/<>\"{}|\\^`]+$")
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")

_STRICT = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _reject_nul(data: Any) -> Any:
    """NUL characters are refused everywhere: PostgreSQL cannot store them in text columns."""
    if _has_nul(data):
        raise ValueError("text must not contain NUL (U+0000) characters")
    return data


def _iri(value: str, what: str) -> str:
    if not _IRI.match(value):
        raise ValueError(f"{what} must be an absolute IRI (scheme:...), got {value!r}")
    return value


class Category(StrEnum):
    """What a dataset is about; published as a SKOS concept (``dcat:theme``)."""

    CARBON = "carbon"
    PROCESS = "process"
    SUPPLY_CHAIN = "supply-chain"
    OTHER = "other"


def category_iri(category: Category) -> str:
    """The SKOS concept IRI of ``category``."""
    return f"{CATEGORY_SCHEME}/{category.value}"


class Agent(BaseModel):
    """A publisher or creator: an IRI (DID, BPNL URN, web page) plus a display name."""

    model_config = _STRICT

    id: str = Field(description="IRI of the organisation, e.g. did:web:... or urn:bpn:BPNL...")
    name: str = Field(min_length=1, description="Display name (foaf:name).")

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        return _iri(v, "agent id")


class TemporalCoverage(BaseModel):
    """The period a dataset's content covers (``dct:temporal`` / ``dct:PeriodOfTime``)."""

    model_config = _STRICT

    start: date | None = None
    end: date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> TemporalCoverage:
        if self.start is None and self.end is None:
            raise ValueError("give start, end or both")
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class QualityMeasurement(BaseModel):
    """One DQV quality measurement: which metric (IRI), its value, optionally when it was computed."""

    model_config = _STRICT

    metric: str = Field(description="IRI of the dqv:Metric, e.g. https://w3id.org/dadam/metric/completeness")
    value: float | int | bool | str
    computed_on: date | None = None

    @field_validator("metric")
    @classmethod
    def _check_metric(cls, v: str) -> str:
        return _iri(v, "metric")


class UseCaseSample(BaseModel):
    """A sample showing what the data looks like for one use case (``adms:sample``)."""

    model_config = _STRICT

    title: str = Field(min_length=1)
    description: str | None = None
    url: str | None = Field(default=None, description="Where the sample payload can be downloaded (public).")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        return None if v is None else _iri(v, "sample url")


class DataAddress(BaseModel):
    """Where the provider's data plane finds the data. PRIVATE: never serialised to DSP or Turtle."""

    model_config = _STRICT

    type: Literal["http", "s3", "file"]
    properties: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _required(self) -> DataAddress:
        need = {"http": ("url",), "s3": ("bucket", "key"), "file": ("path",)}[self.type]
        missing = [k for k in need if not self.properties.get(k)]
        if missing:
            raise ValueError(f"a {self.type} data address needs properties {', '.join(missing)}")
        return self


class Dataset(BaseModel):
    """A dataset offered in the catalog, with the metadata data-space users search and decide on.

    Every IRI-valued field takes an absolute IRI; ``accrual_periodicity`` also takes the short
    names ``daily``, ``weekly``, ``monthly``... and stores the EU frequency IRI.
    """

    model_config = _STRICT

    id: str = Field(
        min_length=1, max_length=500, description="Dataset id (@id); may be an IRI or a plain token."
    )
    title: str = Field(min_length=1, max_length=500)
    description: str = Field(min_length=1)
    keywords: list[str] = Field(default_factory=list)
    category: Category
    type: str | None = Field(
        None, description="dct:type IRI, e.g. https://w3id.org/catenax/taxonomy#PcfExchange"
    )
    publisher: Agent
    creator: Agent | None = None
    issued: datetime | None = None
    modified: datetime | None = None
    accrual_periodicity: str | None = Field(
        default=None, description="Update cycle (dct:accrualPeriodicity)."
    )
    temporal: TemporalCoverage | None = None
    spatial: list[str] = Field(default_factory=list, description="IRIs of covered places (dct:spatial).")
    conforms_to: list[str] = Field(
        default_factory=list,
        description="Data models the payload follows, e.g. urn:samm:io.catenax.pcf:7.0.0#Pcf",
    )
    media_type: str = Field("application/json", description="IANA media type of the payload.")
    byte_size: int | None = Field(default=None, ge=0)
    license: str | None = Field(default=None, description="License IRI (dct:license).")
    purpose: str | None = Field(default=None, description="What the data is for.")
    usage_notes: str | None = Field(
        default=None, description="How to use it: units, caveats, update semantics."
    )
    related: list[str] = Field(
        default_factory=list, description="Related dataset ids or IRIs (dct:relation)."
    )
    samples: list[UseCaseSample] = Field(default_factory=list)
    quality: list[QualityMeasurement] = Field(default_factory=list)
    version: str | None = None
    transfer_types: list[str] = Field(
        default_factory=lambda: ["HttpData-PULL"],
        min_length=1,
        description="DSP distribution formats (transfer types) this dataset can be transferred with.",
    )
    data_address: DataAddress

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return _reject_nul(data)

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError('dataset id must not contain whitespace or any of <>"{}|\\^`')
        return v

    @field_validator("keywords")
    @classmethod
    def _check_keywords(cls, v: list[str]) -> list[str]:
        out = [k.strip() for k in v]
        if any(not k for k in out):
            raise ValueError("keywords must not be empty")
        return list(dict.fromkeys(out))

    @field_validator("type", "license")
    @classmethod
    def _check_iri(cls, v: str | None) -> str | None:
        return None if v is None else _iri(v, "value")

    @field_validator("spatial", "conforms_to")
    @classmethod
    def _check_iris(cls, v: list[str]) -> list[str]:
        return [_iri(x, f"item {i}") for i, x in enumerate(v)]

    @field_validator("related")
    @classmethod
    def _check_related(cls, v: list[str]) -> list[str]:
        for x in v:
            if not _ID.match(x):
                raise ValueError(f"related id {x!r} contains whitespace or a forbidden character")
        return v

    @field_validator("accrual_periodicity")
    @classmethod
    def _check_frequency(cls, v: str | None) -> str | None:
        if v is None:
            return None
        short = _FREQUENCIES.get(v.lower())
        if short:
            return FREQUENCY_NS + short
        return _iri(v, "accrual_periodicity (or one of " + ", ".join(_FREQUENCIES) + ")")

    @field_validator("media_type")
    @classmethod
    def _check_media_type(cls, v: str) -> str:
        if not _MEDIA_TYPE.match(v):
            raise ValueError(f"not a media type (type/subtype): {v!r}")
        return v

    @field_validator("transfer_types")
    @classmethod
    def _check_transfer_types(cls, v: list[str]) -> list[str]:
        for t in v:
            if not re.match(r"^[A-Za-z][A-Za-z0-9_.-]*$", t):
                raise ValueError(f"transfer type {t!r} must be a token like HttpData-PULL")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _dates(self) -> Dataset:
        if self.issued and self.modified and self.modified < self.issued:
            raise ValueError("modified is before issued")
        return self


class PolicyDefinition(BaseModel):
    """A stored ODRL policy (compact DSP ODRL profile form: ``permission``, ``prohibition``, ``obligation``).

    The policy JSON is checked structurally (rules, actions, constraints, operators) when the model is
    built; whether a constraint can be *evaluated* is the policy engine's business.
    """

    model_config = _STRICT

    id: str = Field(min_length=1, max_length=200)
    policy: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return _reject_nul(data)

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError('policy id must not contain whitespace or any of <>"{}|\\^`')
        return v

    @field_validator("policy")
    @classmethod
    def _check_policy(cls, v: dict[str, Any]) -> dict[str, Any]:
        problems = odrl_problems(v)
        if problems:
            raise ValueError("\n".join(problems))
        return v


class DatasetSelector(BaseModel):
    """Which datasets a contract definition offers.

    A dataset is selected when ``match_all`` is set, or its id is in ``dataset_ids``, or the criteria
    (``categories``, ``keywords``, ``conforms_to``; at least one given) all hold: category in
    ``categories``, any keyword in ``keywords``, any conformsTo in ``conforms_to``.
    """

    model_config = _STRICT

    match_all: bool = False
    dataset_ids: list[str] = Field(default_factory=list)
    categories: list[Category] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    conforms_to: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> DatasetSelector:
        if not (self.match_all or self.dataset_ids or self.categories or self.keywords or self.conforms_to):
            raise ValueError("selector selects nothing: set match_all, dataset_ids or at least one criterion")
        return self

    def has_criteria(self) -> bool:
        return bool(self.categories or self.keywords or self.conforms_to)

    def matches(self, ds: Dataset) -> bool:
        """Whether ``ds`` is offered under this selector."""
        if self.match_all or ds.id in self.dataset_ids:
            return True
        if not self.has_criteria():
            return False
        if self.categories and ds.category not in self.categories:
            return False
        if self.keywords and not set(self.keywords).intersection(ds.keywords):
            return False
        return not (self.conforms_to and not set(self.conforms_to).intersection(ds.conforms_to))


class ContractDefinition(BaseModel):
    """Offers datasets (``selector``) to callers satisfying ``access_policy_id`` under ``contract_policy_id``.

    ``accept_any_offer_tag``: offer ids are ``<definition>:<dataset>:<tag>`` where the tag is a hash
    of the contract policy, so a changed policy changes every offer id and stale offers are refused.
    Setting this flag makes the definition accept any tag (peers and test kits that use fixed offer
    ids, e.g. the DSP TCK's ``CD123:ACN0101:456``). Off by default.
    """

    model_config = _STRICT

    id: str = Field(min_length=1, max_length=200)
    access_policy_id: str = Field(min_length=1)
    contract_policy_id: str = Field(min_length=1)
    selector: DatasetSelector
    accept_any_offer_tag: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return _reject_nul(data)

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _CD_ID.match(v):
            raise ValueError("contract definition id must not contain ':', '/', whitespace or <>\"{}|\\^`")
        return v


def model_errors(errors: Any) -> list[str]:
    """Every problem of a pydantic ``ValidationError`` (or its ``.errors()``), as ``field.path: message``.

    Validators that find several problems put one per line; each line becomes its own entry.
    """
    items = errors.errors() if hasattr(errors, "errors") else errors
    out = []
    for err in items:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        for line in msg.splitlines() or ["invalid"]:
            out.append(f"{loc}: {line}" if loc else line)
    return out
