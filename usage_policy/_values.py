"""Typed operand values and the operator algebra (pure functions, no policy knowledge)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

__all__ = [
    "ORDERED_OPERATORS",
    "SET_OPERATORS",
    "Kind",
    "OperandTypeError",
    "apply_operator",
    "coerce",
    "parse_duration",
    "render",
]

Kind = Literal["datetime", "integer", "decimal", "duration", "string", "iri"]

ORDERED_OPERATORS = frozenset({"eq", "neq", "lt", "lteq", "gt", "gteq"})
SET_OPERATORS = frozenset({"isA", "hasPart", "isPartOf", "isAllOf", "isAnyOf", "isNoneOf"})

_XSD = "http://www.w3.org/2001/XMLSchema#"
_XSD_KIND: dict[str, Kind] = {
    "dateTime": "datetime",
    "dateTimeStamp": "datetime",
    "date": "datetime",
    "integer": "integer",
    "int": "integer",
    "long": "integer",
    "nonNegativeInteger": "integer",
    "positiveInteger": "integer",
    "decimal": "decimal",
    "double": "decimal",
    "float": "decimal",
    "duration": "duration",
    "dayTimeDuration": "duration",
    "yearMonthDuration": "duration",
    "string": "string",
    "anyURI": "iri",
}

_DURATION = re.compile(
    r"^(?P<sign>-)?P(?:(?P<y>\d+(?:\.\d+)?)Y)?(?:(?P<mo>\d+(?:\.\d+)?)M)?(?:(?P<w>\d+(?:\.\d+)?)W)?"
    r"(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<mi>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


class OperandTypeError(ValueError):
    """A right operand cannot be read as the type its left operand needs."""


def parse_duration(text: str) -> timedelta:
    """ISO 8601 / xsd:duration to a timedelta (a year is 365 days, a month 30 days)."""
    m = _DURATION.match(text.strip())
    if not m or text.strip() in ("P", "-P") or text.strip().endswith("T"):
        raise OperandTypeError(f"{text!r} is not an xsd:duration")
    g = {k: float(v) if v else 0.0 for k, v in m.groupdict().items() if k != "sign"}
    delta = timedelta(
        days=g["y"] * 365 + g["mo"] * 30 + g["w"] * 7 + g["d"], hours=g["h"], minutes=g["mi"], seconds=g["s"]
    )
    return -delta if m.group("sign") else delta


def _datetime(text: str) -> datetime:
    t = text.strip()
    try:
        if len(t) == 10:
            d = date.fromisoformat(t)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        # xsd allows "2023-12-31T06:00Z" (no seconds) and "Z"
        if re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})?$", t):
            t = t[:16] + ":00" + t[16:]
        value = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError as exc:
        raise OperandTypeError(f"{text!r} is not an xsd:dateTime") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _scalar(value: Any, kind: Kind) -> Any:
    if isinstance(value, Mapping):
        if "@value" in value:
            dtype = str(value.get("@type", ""))
            short = dtype.removeprefix("xsd:").removeprefix(_XSD)
            kind = _XSD_KIND.get(short, kind)
            value = value["@value"]
        elif "@id" in value:
            value = value["@id"]
            kind = "iri" if kind in ("string", "iri") else kind
        else:
            raise OperandTypeError(f"unsupported right operand object {dict(value)!r}")
    if isinstance(value, bool):
        raise OperandTypeError(f"boolean {value!r} is not a valid right operand")
    if kind == "datetime":
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if not isinstance(value, str):
            raise OperandTypeError(f"{value!r} is not an xsd:dateTime")
        return _datetime(value)
    if kind == "integer":
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise OperandTypeError(f"{value!r} is not an integer")
    if kind == "decimal":
        if isinstance(value, int | float | Decimal):
            return Decimal(str(value))
        try:
            return Decimal(str(value).strip())
        except InvalidOperation as exc:
            raise OperandTypeError(f"{value!r} is not a decimal") from exc
    if kind == "duration":
        if isinstance(value, timedelta):
            return value
        if not isinstance(value, str):
            raise OperandTypeError(f"{value!r} is not an xsd:duration")
        return parse_duration(value)
    if not isinstance(value, str | int | float | Decimal):
        raise OperandTypeError(f"{value!r} is not a string")
    return str(value)


def coerce(raw: Any, kind: Kind) -> Any:
    """A right operand as a typed value: a scalar, or a tuple of scalars for a list."""
    if isinstance(raw, Mapping) and "@list" in raw:
        raw = raw["@list"]
    if isinstance(raw, list | tuple):
        if not raw:
            raise OperandTypeError("empty list as right operand")
        return tuple(_scalar(v, kind) for v in raw)
    return _scalar(raw, kind)


def _as_set(value: Any) -> frozenset[Any]:
    if isinstance(value, frozenset):
        return value
    if isinstance(value, tuple | list | set):
        return frozenset(value)
    return frozenset((value,))


def apply_operator(op: str, left: Any, right: Any) -> bool:
    """Apply an ODRL operator. ``left`` may be a frozenset (a multi-valued fact, e.g. the
    requester's framework agreements): then ``eq`` means "one of them equals"."""
    if op in ORDERED_OPERATORS:
        if isinstance(right, tuple):
            raise OperandTypeError(f"operator {op} needs a single right operand, got a list")
        if isinstance(left, frozenset):
            if op == "eq":
                return right in left
            if op == "neq":
                return right not in left
            raise OperandTypeError(f"operator {op} cannot compare a set of values")
        if op == "eq":
            return bool(left == right)
        if op == "neq":
            return bool(left != right)
        try:
            if op == "lt":
                return bool(left < right)
            if op == "lteq":
                return bool(left <= right)
            if op == "gt":
                return bool(left > right)
            return bool(left >= right)
        except TypeError as exc:
            raise OperandTypeError(f"cannot order {left!r} and {right!r}") from exc
    lset = _as_set(left)
    rset = _as_set(right)
    if op == "isAnyOf":
        return bool(lset & rset)
    if op == "isNoneOf":
        return not (lset & rset)
    if op in ("isAllOf", "hasPart"):
        return rset <= lset
    if op == "isPartOf":
        return lset <= rset
    if op == "isA":
        return bool(lset & rset)
    raise OperandTypeError(f"unsupported operator {op}")


def render(value: Any) -> Any:
    """A JSON-able rendering of a typed value (for explanations); ``None`` for a missing one."""
    if type(value).__name__ == "_Missing":
        return None
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return f"PT{int(value.total_seconds())}S"
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(render(v) for v in value)
    if isinstance(value, tuple | list):
        return [render(v) for v in value]
    return value
