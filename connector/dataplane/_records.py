"""Record counting while bytes stream by, for metering (``records`` of a usage event).

A counter is fed the chunks of one response or push in order, split anywhere (inside a string, an
escape, a CRLF or a quoted CSV field), and ``total()`` gives the records so far. The rules, by the
kind the dataset's media type names (``record_kind``):

``json`` (a media type containing ``json``, e.g. ``application/json``, ``application/ld+json``)
    Each top-level value is counted: a top-level array counts its elements (``[]`` is 0), any other
    value (object, string, number, ``true``/``false``/``null``) counts 1. Values nested inside the
    top-level value are never counted. Whitespace may stand anywhere. Strings are skipped with
    their escapes (``\\"``, ``\\\\``). Several top-level values in a row (concatenated JSON) each
    count by the same rule, so ``[1,2]{"a":1}`` counts 3. Bytes >= 0x80 outside strings (a UTF-8
    byte order mark) are skipped like whitespace. The whole document counts the same however it
    is split.
``ndjson`` (``ndjson`` or ``jsonl``)
    Non-blank lines: lines end at LF; a line of nothing but spaces, tabs and CRs is blank and not
    counted; a last line without a newline counts.
``csv`` (``csv``)
    RFC 4180 rows minus the header row: rows end at LF or CRLF outside double-quoted fields (a
    newline inside quotes does not end a row, ``""`` inside quotes is a quote); a line of nothing
    but CRs is blank and not counted, anywhere; a last row without a newline counts. Every double
    quote toggles the quoted state: exact for RFC 4180 data with any delimiter; a stray quote in an
    unquoted field (not RFC 4180) opens a quoted field.
``none`` (any other media type)
    0.

Malformed input is counted by the same byte rules (never an error); the result is not meaningful
but is the same in both implementations and for any split.

Two implementations with exactly these rules: the C extension ``connector.dataplane._recordcount``
(built by ``setup.py`` when a compiler is there, hundreds of MB/s) and ``PyCounter`` here, used
when the extension is not built or ``DADAM_NO_CEXT`` is set to a non-empty value other than ``0``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Literal, Protocol

__all__ = ["C_COUNTER", "KINDS", "PyCounter", "RecordCounter", "record_kind"]

Kind = Literal["json", "ndjson", "csv", "none"]
KINDS: tuple[Kind, ...] = ("json", "ndjson", "csv", "none")
Chunk = bytes | bytearray | memoryview


class Counter(Protocol):
    """What both implementations offer."""

    @property
    def kind(self) -> str: ...

    def feed(self, data: Chunk, /) -> None: ...

    def total(self) -> int: ...


def record_kind(media_type: str) -> Kind:
    """The record kind a media type is counted as."""
    mt = media_type.lower()
    if "csv" in mt:
        return "csv"
    if "ndjson" in mt or "jsonl" in mt:
        return "ndjson"
    if "json" in mt:
        return "json"
    return "none"


# JSON: the bytes that matter inside a string; the bytes that are not whitespace (bytes >= 0x80
# outside strings count as whitespace)
_STR_STOP = re.compile(rb'["\\]')
# what leaves the state as it is: at depth >= 2 anything but " [ ] { } and whole strings; at depth 1
# of a top-level object, or of a top-level array between an element's start and the next comma, the
# same without commas
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_SKIP_DEEP = re.compile(rb'(?:[^"\[\]{}]+|' + _STRING + rb")*", re.DOTALL)
_SKIP_TOP = re.compile(rb'(?:[^"\[\]{},]+|' + _STRING + rb")*", re.DOTALL)
_NOT_WS = re.compile(rb"[^ \t\n\r\x80-\xff]")
_WS = frozenset(b" \t\n\r")
# line kinds: the newline before a blank line (a literal first byte: the regex engine jumps from one
# newline to the next), and a byte that makes a line not blank
_ND_BLANK_LINE = re.compile(rb"\n(?=[ \t\r]*\n)")
_ND_CONTENT = re.compile(rb"[^ \t\r\n]")
_CSV_BLANK_LINE = re.compile(rb"\n(?=\r*\n)")
_CSV_CONTENT = re.compile(rb"[^\r\n]")
_QUOTED = re.compile(rb'"[^"]*"')


class PyCounter:
    """The pure-Python counter: the same rules as the C extension (module docstring)."""

    __slots__ = (
        "_content",
        "_count",
        "_depth",
        "_esc",
        "_expect",
        "_in_quotes",
        "_in_str",
        "_scalar",
        "_top_array",
        "kind",
    )

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown record kind '{kind}' (json, ndjson, csv or none)")
        self.kind = kind
        self._count = 0  # JSON: values counted; NDJSON/CSV: lines ended with content
        self._depth = 0
        self._in_str = False
        self._esc = False
        self._top_array = False
        self._expect = False
        self._scalar = False
        self._content = False
        self._in_quotes = False

    def feed(self, data: Chunk, /) -> None:
        if isinstance(data, memoryview):
            data = data.tobytes()
        elif not isinstance(data, bytes | bytearray):
            data = bytes(memoryview(data))
        if self.kind == "json":
            self._feed_json(data)
        elif self.kind == "ndjson":
            self._lines(data, 0, len(data), _ND_BLANK_LINE, _ND_CONTENT)
        elif self.kind == "csv":
            self._feed_csv(data)

    def total(self) -> int:
        if self.kind == "json":
            return self._count
        if self.kind == "ndjson":
            return self._count + self._content
        if self.kind == "csv":
            return max(self._count + self._content - 1, 0)  # minus the header row
        return 0

    def _feed_json(self, data: bytes | bytearray) -> None:
        depth, in_str, esc = self._depth, self._in_str, self._esc
        top_array, expect, scalar, count = self._top_array, self._expect, self._scalar, self._count
        i, n = 0, len(data)
        while i < n:
            if in_str:
                if esc:
                    esc = False
                    i += 1
                    continue
                m = _STR_STOP.search(data, i)
                if m is None:
                    break
                i = m.end()
                if data[i - 1] == 0x5C:  # backslash: the next byte is escaped
                    esc = True
                else:
                    in_str = False
                continue
            skip = (
                _SKIP_DEEP if depth >= 2 else _SKIP_TOP if depth == 1 and not (top_array and expect) else None
            )
            if skip is not None and (m := skip.match(data, i)) is not None:  # it always matches
                i = m.end()
                if i == n:
                    break
            c = data[i]
            i += 1
            if c == 0x22:  # "
                if depth == 0:
                    count += 1
                    scalar = False
                elif depth == 1 and top_array and expect:
                    count += 1
                    expect = False
                in_str = True
            elif c == 0x5B or c == 0x7B:  # [ {
                if depth == 0:
                    scalar = False
                    top_array = expect = c == 0x5B
                    if c == 0x7B:
                        count += 1
                elif depth == 1 and top_array and expect:
                    count += 1
                    expect = False
                depth += 1
            elif c == 0x5D or c == 0x7D:  # ] }
                if depth > 0:
                    depth -= 1
                else:
                    scalar = False
            elif c == 0x2C:  # ,
                if depth == 1 and top_array:
                    expect = True
                elif depth == 0:
                    scalar = False
            elif c in _WS or c >= 0x80:
                if depth == 0:
                    scalar = False
                elif depth == 1:  # expecting an element: skip the rest of the whitespace
                    m = _NOT_WS.search(data, i)
                    i = n if m is None else m.start()
            elif depth == 0:
                if not scalar:
                    count += 1
                    scalar = True
            elif depth == 1 and top_array and expect:
                count += 1
                expect = False
        self._depth, self._in_str, self._esc = depth, in_str, esc
        self._top_array, self._expect, self._scalar, self._count = top_array, expect, scalar, count

    def _feed_csv(self, data: bytes | bytearray) -> None:
        start, end = 0, len(data)
        if self._in_quotes:  # the rest of a quoted field from the previous chunk
            start = data.find(b'"') + 1
            if start == 0:
                return
            self._in_quotes = False
        opens = data.count(b'"', start) % 2 == 1  # the last quote opens a field going on in the next chunk
        if opens:
            end = data.rfind(b'"')
        part = data if (start, end) == (0, len(data)) else data[start:end]
        if b'"' in part:  # every quoted field (paired quotes now) stands as one content byte
            part = _QUOTED.sub(b"x", part)
        self._lines(part, 0, len(part), _CSV_BLANK_LINE, _CSV_CONTENT)
        if opens:
            self._in_quotes = self._content = True

    def _lines(
        self,
        data: bytes | bytearray,
        start: int,
        end: int,
        blank: re.Pattern[bytes],
        content: re.Pattern[bytes],
    ) -> None:
        """Count the lines of ``data[start:end]`` (no quoted field in it)."""
        first = data.find(b"\n", start, end)
        if first < 0:
            if not self._content and content.search(data, start, end):
                self._content = True
            return
        if self._content or content.search(data, start, first):
            self._count += 1
        last = data.rfind(b"\n", first, end)
        if last > first:  # whole lines between the first and the last newline
            lines = data.count(b"\n", first + 1, last + 1)
            self._count += lines - len(blank.findall(data, first, last + 1))
        self._content = content.search(data, last + 1, end) is not None


def _load_c() -> Callable[[str], Counter] | None:
    if os.environ.get("DADAM_NO_CEXT", "") not in ("", "0"):
        return None
    try:
        from connector.dataplane._recordcount import Counter as CCounter
    except ImportError:
        return None
    return CCounter


#: the C counter's class, or None when the extension is not built (or DADAM_NO_CEXT is set)
C_COUNTER = _load_c()


class RecordCounter:
    """Counts the records of one response or push: ``feed(chunk)`` in order, then ``total()``.

    ``implementation`` picks ``"c"`` or ``"python"``; by default the C counter when it is built.
    """

    __slots__ = ("feed", "implementation", "kind", "total")

    feed: Callable[[Chunk], None]
    total: Callable[[], int]

    def __init__(self, media_type: str, *, implementation: Literal["c", "python"] | None = None) -> None:
        self.kind = record_kind(media_type)
        if implementation is None:
            implementation = "python" if C_COUNTER is None else "c"
        if implementation == "c":
            if C_COUNTER is None:
                raise RuntimeError("the C record counter (connector.dataplane._recordcount) is not available")
            counter = C_COUNTER(self.kind)
        else:
            counter = PyCounter(self.kind)
        self.implementation = implementation
        self.feed = counter.feed
        self.total = counter.total
