"""RFC 8785 JSON Canonicalization Scheme (JCS): the bytes we sign agreements and receipts over.

Rules: objects with members sorted by the UTF-16 code units of their names; no whitespace;
strings with the minimal JSON escapes (``\\b \\f \\n \\r \\t \\" \\\\`` and ``\\u00XX`` for other
control characters; everything else as UTF-8); numbers in the ECMAScript ``Number.toString``
form (integers without a fraction or exponent, ``1e+21`` style exponents, ``-0`` as ``0``);
``NaN`` and infinities are not JSON and are refused.
"""

from __future__ import annotations

import json
import json.encoder
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["canonical_json"]


def _string_py(s: str) -> str:
    """The escaping rules spelled out (the reference for :func:`_string`)."""
    out = ['"']
    for ch in s:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: The standard library's C string encoder applies exactly these rules (short escapes for
#: " \\ \\b \\f \\n \\r \\t, \\u00xx for other control characters, nothing else escaped) and is
#: ~20x faster; tests/identity compare it with :func:`_string_py`.
_string = json.encoder.encode_basestring


def _number(x: float) -> str:
    """ECMAScript Number.prototype.toString for a finite double (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(x):
        raise ValueError("NaN and Infinity are not allowed in canonical JSON")
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 2**53:
        return str(int(x))
    # Shortest round-tripping digits, as repr gives them; then reformat per ECMAScript.
    sign = "-" if x < 0 else ""
    r = repr(abs(x))
    if "e" in r:
        mant, exp_s = r.split("e")
        exp = int(exp_s)
    else:
        mant, exp = r, 0
    if "." in mant:
        int_part, frac = mant.split(".")
        if frac == "0":
            frac = ""
    else:
        int_part, frac = mant, ""
    digits = (int_part + frac).lstrip("0")
    # n = position of the decimal point relative to the digit string (ECMAScript's "n")
    n = len(int_part.lstrip("0")) + exp if int_part.strip("0") else exp - (len(frac) - len(frac.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    exp_str = f"e+{e}" if e >= 0 else f"e-{-e}"
    if k == 1:
        return sign + digits + exp_str
    return sign + digits[0] + "." + digits[1:] + exp_str


def _utf16_key(s: str) -> list[int]:
    data = s.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def _sorted_keys(obj: Mapping[Any, Any]) -> list[str]:
    """The member names in RFC 8785 order (UTF-16 code units). For ASCII names that is plain
    string order, which needs no key function (the common case, several times faster)."""
    for key in obj:
        if not isinstance(key, str):
            raise TypeError(f"object keys must be strings, got {type(key).__name__}")
    if all(map(str.isascii, obj)):
        return sorted(obj)
    return sorted(obj, key=_utf16_key)


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        if abs(value) > 2**53:
            raise ValueError(
                f"integer {value} is outside the IEEE 754 double range JCS can represent exactly"
            )
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, Mapping):
        out.append("{")
        first = True
        for key in _sorted_keys(value):
            if not first:
                out.append(",")
            first = False
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON")


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (dict, list, str, int, float, bool, None)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")
