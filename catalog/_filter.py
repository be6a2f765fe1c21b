"""The catalog filter grammar (``CatalogRequestMessage.filter``; DSP leaves the format to us).

``filter`` is an array of conditions; a dataset is listed when it meets **all** of them::

    [{"property": "category",   "operator": "eq", "value": "carbon"},
     {"property": "keyword",    "operator": "in", "value": ["pcf", "co2"]},
     {"property": "conformsTo", "operator": "eq", "value": "urn:samm:io.catenax.pcf:7.0.0#Pcf"},
     {"property": "id",         "operator": "in", "value": ["CAT0101", "CAT0102"]}]

``eq`` takes one string, ``in`` a non-empty array of strings (any of them). ``keyword`` and
``conformsTo`` hold when the dataset has the value among its keywords / conformsTo IRIs. Anything
else (another property or operator, a wrong value type, extra keys) is refused with every problem
listed; the DSP edge answers 400 + ``CatalogError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from catalog._models import Category, Dataset
from connector.errors import ValidationError

__all__ = ["FILTER_PROPERTIES", "CatalogFilter", "parse_filter"]

FILTER_PROPERTIES = ("id", "category", "keyword", "conformsTo")
_OPERATORS = ("eq", "in")


@dataclass(frozen=True, slots=True)
class CatalogFilter:
    """Parsed filter: a tuple of ``(property, allowed values)``; all must hold. Hashable (a cache key)."""

    conditions: tuple[tuple[str, frozenset[str]], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def matches(self, ds: Dataset) -> bool:
        for prop, values in self.conditions:
            if prop == "id":
                ok = ds.id in values
            elif prop == "category":
                ok = ds.category.value in values
            elif prop == "keyword":
                ok = not values.isdisjoint(ds.keywords)
            else:
                ok = not values.isdisjoint(ds.conforms_to)
            if not ok:
                return False
        return True


def parse_filter(raw: Any) -> CatalogFilter:
    """Parse ``raw`` (None, or the JSON array of the grammar above); ValidationError lists every problem."""
    if raw is None:
        return CatalogFilter()
    if not isinstance(raw, list):
        raise ValidationError("unsupported filter", errors=["filter: must be an array of conditions"])
    problems: list[str] = []
    conditions: list[tuple[str, frozenset[str]]] = []
    for i, cond in enumerate(raw):
        path = f"filter[{i}]"
        if not isinstance(cond, Mapping):
            problems.append(f"{path}: must be an object with property, operator, value")
            continue
        extra = sorted(set(cond) - {"property", "operator", "value"})
        if extra:
            problems.append(f"{path}: unknown keys {', '.join(extra)}")
        prop, op, value = cond.get("property"), cond.get("operator"), cond.get("value")
        if prop not in FILTER_PROPERTIES:
            problems.append(f"{path}.property: {prop!r} is not one of {', '.join(FILTER_PROPERTIES)}")
        if op not in _OPERATORS:
            problems.append(f"{path}.operator: {op!r} is not one of eq, in")
            continue
        if op == "eq":
            if not isinstance(value, str) or not value:
                problems.append(f"{path}.value: 'eq' needs a non-empty string")
                continue
            values = [value]
        else:
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                problems.append(f"{path}.value: 'in' needs a non-empty array of non-empty strings")
                continue
            values = list(value)
        if prop == "category":
            bad = [v for v in values if v not in {c.value for c in Category}]
            if bad:
                problems.append(
                    f"{path}.value: unknown category {', '.join(map(repr, bad))}; "
                    f"known: {', '.join(c.value for c in Category)}"
                )
                continue
        if prop in FILTER_PROPERTIES:
            conditions.append((str(prop), frozenset(values)))
    if problems:
        raise ValidationError("unsupported filter", errors=problems)
    return CatalogFilter(tuple(sorted(conditions, key=lambda c: (c[0], sorted(c[1])))))
