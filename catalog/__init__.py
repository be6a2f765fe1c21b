"""The catalog: datasets with rich metadata, ODRL policies, contract definitions, DSP catalogs.

* Models (:class:`Dataset`, :class:`DataAddress`, :class:`PolicyDefinition`,
  :class:`ContractDefinition`) validate once, when built.
* :class:`CatalogStore` persists them (SQLite or PostgreSQL, migration branch ``catalog``).
* :class:`CatalogService` builds DSP 2025-1 catalogs and datasets per caller (only what the
  caller's access policies allow), resolves offer ids for contract negotiation and exports the
  catalog as DCAT-AP Turtle.
* :class:`AccessEvaluator` decides access; :class:`FailClosedEvaluator` is the default.
"""

from __future__ import annotations

from catalog._access import (
    NO_ENGINE_REASON,
    AccessDecision,
    AccessEvaluator,
    FailClosedEvaluator,
    PolicyEngineEvaluator,
    caller_context,
)
from catalog._dsp import CONTEXT, policy_tag
from catalog._filter import FILTER_PROPERTIES, CatalogFilter, parse_filter
from catalog._models import (
    CATEGORY_SCHEME,
    Agent,
    Category,
    ContractDefinition,
    DataAddress,
    Dataset,
    DatasetSelector,
    PolicyDefinition,
    QualityMeasurement,
    TemporalCoverage,
    UseCaseSample,
    category_iri,
    model_errors,
)
from catalog._odrl import odrl_problems, policy_has_constraints
from catalog._service import CatalogPage, CatalogService, ResolvedOffer, split_offer_id
from catalog._store import CatalogStore, Page

__all__ = [
    "CATEGORY_SCHEME",
    "CONTEXT",
    "FILTER_PROPERTIES",
    "NO_ENGINE_REASON",
    "AccessDecision",
    "AccessEvaluator",
    "Agent",
    "CatalogFilter",
    "CatalogPage",
    "CatalogService",
    "CatalogStore",
    "Category",
    "ContractDefinition",
    "DataAddress",
    "Dataset",
    "DatasetSelector",
    "FailClosedEvaluator",
    "Page",
    "PolicyDefinition",
    "PolicyEngineEvaluator",
    "QualityMeasurement",
    "ResolvedOffer",
    "TemporalCoverage",
    "UseCaseSample",
    "caller_context",
    "category_iri",
    "model_errors",
    "odrl_problems",
    "parse_filter",
    "policy_has_constraints",
    "policy_tag",
    "split_offer_id",
]
