"""Record counting (connector/dataplane/_records.py): the C extension and the pure-Python counter
against references that parse the whole document (json, csv, splitlines), for documents split at
random chunk boundaries; the two implementations against each other on arbitrary bytes."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.dataplane import RecordCounter
from connector.dataplane._records import KINDS, PyCounter, record_kind

try:
    from connector.dataplane._recordcount import Counter as CCounter
except ImportError:  # not built: the C cases skip, test_c_extension_is_built says why it matters
    CCounter = None  # type: ignore[assignment,misc]

NO_CEXT = os.environ.get("DADAM_NO_CEXT", "") not in ("", "0")
NOT_BUILT = "the C extension connector.dataplane._recordcount is not built (make install builds it)"

IMPLS = [
    pytest.param(PyCounter, id="python"),
    pytest.param(CCounter, id="c", marks=pytest.mark.skipif(CCounter is None, reason=NOT_BUILT)),
]


def test_c_extension_is_built() -> None:
    """In a dev or CI install (make install) the C counter is built and is what the data plane uses;
    only DADAM_NO_CEXT (set where no compiler is wanted) allows the pure-Python fallback."""
    if NO_CEXT:
        pytest.skip("DADAM_NO_CEXT is set: the pure-Python counter is expected")
    assert CCounter is not None, NOT_BUILT
    assert RecordCounter("application/json").implementation == "c"


def count(make: Callable[[str], Any], kind: str, chunks: Sequence[bytes | bytearray | memoryview]) -> int:
    counter = make(kind)
    for chunk in chunks:
        counter.feed(chunk)
    total: int = counter.total()
    return total


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes | bytearray | memoryview]:
    """``data`` cut at random places (empty chunks too), as bytes, bytearray or memoryview."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    kinds = draw(st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=len(bounds)))
    return [kinds[i](data[a:b]) for i, (a, b) in enumerate(itertools.pairwise(bounds))]


utf8_text = st.text(st.characters(blacklist_categories=["Cs"]))  # no lone surrogates: encodes to UTF-8
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | utf8_text
)
json_values = st.recursive(
    scalars,
    lambda c: (
        st.lists(c, max_size=4)
        | st.dictionaries(st.text(st.characters(blacklist_categories=["Cs"]), max_size=4), c, max_size=4)
    ),
    max_leaves=10,
)
WS = st.text(" \t\r\n", max_size=3)


@st.composite
def spaced(draw: st.DrawFn, value: object) -> str:
    """``value`` as JSON with random whitespace between the tokens and ASCII or raw UTF-8 strings."""
    if isinstance(value, list):
        inner = ",".join(draw(WS) + draw(spaced(v)) + draw(WS) for v in value)
        return "[" + (inner or draw(WS)) + "]"
    if isinstance(value, dict):
        members = (
            draw(WS)
            + json.dumps(k, ensure_ascii=draw(st.booleans()))
            + draw(WS)
            + ":"
            + draw(WS)
            + draw(spaced(v))
            for k, v in value.items()
        )
        return "{" + ",".join(m + draw(WS) for m in members) + "}"
    return json.dumps(value, ensure_ascii=draw(st.booleans()))


def json_reference(docs: list[object]) -> int:
    return sum(len(d) if isinstance(d, list) else 1 for d in docs)


@pytest.mark.parametrize("make", IMPLS)
@given(data=st.data(), values=st.lists(json_values | st.lists(json_values), min_size=1, max_size=3))
def test_json_matches_a_parse_of_the_whole_document(
    make: Any, data: st.DataObject, values: list[object]
) -> None:
    # one document (an array or a single value), or a few concatenated, with whitespace anywhere
    texts = [data.draw(WS) + data.draw(spaced(v)) + data.draw(WS) for v in values]
    doc = "\n".join(texts).encode()  # a newline between documents: "1" "2" would read as 12
    docs = [json.loads(t) for t in texts]  # the reference parses each document whole
    assert count(make, "json", data.draw(split(doc))) == json_reference(docs)


@pytest.mark.parametrize("make", IMPLS)
@given(data=st.data(), items=st.lists(json_values, max_size=30))
def test_json_array_of_dumps_output(make: Any, data: st.DataObject, items: list[object]) -> None:
    doc = json.dumps(items, indent=data.draw(st.sampled_from([None, 0, 1, 2]))).encode()
    assert count(make, "json", data.draw(split(doc))) == len(json.loads(doc))


@pytest.mark.parametrize("make", IMPLS)
@given(
    data=st.data(),
    lines=st.lists(json_values.map(json.dumps) | st.text(" \t\r", max_size=3), max_size=20),
    ending=st.sampled_from(["\n", "\r\n"]),
    final_newline=st.booleans(),
)
def test_ndjson_matches_splitlines(
    make: Any, data: st.DataObject, lines: list[str], ending: str, final_newline: bool
) -> None:
    doc = (ending.join(lines) + (ending if final_newline else "")).encode()
    expected = [json.loads(line) for line in doc.splitlines() if line.strip()]
    assert count(make, "ndjson", data.draw(split(doc))) == len(expected)


csv_fields = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=6
) | st.sampled_from(['a"b', "x,y", "l1\nl2", "l1\r\nl2", '"', '""', "\r", " "])


@pytest.mark.parametrize("make", IMPLS)
@given(
    data=st.data(),
    rows=st.lists(st.lists(csv_fields, max_size=4) | st.just(None), max_size=12),
    final_newline=st.booleans(),
)
def test_csv_matches_the_csv_module(
    make: Any, data: st.DataObject, rows: list[list[str] | None], final_newline: bool
) -> None:
    parts = []
    for row in rows:  # None: a blank line
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerow(row or [])  # quotes fields with CR or LF
        line = out.getvalue().removesuffix("\r\n") if row is not None else ""
        parts.append(line + data.draw(st.sampled_from(["\n", "\r\n"])))
    text = "".join(parts)
    if not final_newline:
        text = text.removesuffix("\n").removesuffix("\r")
    doc = text.encode()
    parsed = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    assert count(make, "csv", data.draw(split(doc))) == max(len(parsed) - 1, 0)


SPECIAL = st.lists(st.sampled_from(list(b'[]{},"\\ \t\r\n:a1-\x80\xef\xbb\xbf')), max_size=60).map(bytes)


@pytest.mark.skipif(CCounter is None, reason=NOT_BUILT)
@given(data=st.data(), doc=SPECIAL | st.binary(max_size=80), kind=st.sampled_from(KINDS))
def test_c_and_python_agree_on_any_bytes(data: st.DataObject, doc: bytes, kind: str) -> None:
    whole = count(PyCounter, kind, [doc])
    assert count(CCounter, kind, [doc]) == whole
    chunks = data.draw(split(doc))
    assert count(PyCounter, kind, chunks) == whole
    assert count(CCounter, kind, chunks) == whole


@given(data=st.data(), doc=SPECIAL | st.binary(max_size=80), kind=st.sampled_from(KINDS))
def test_python_counter_does_not_depend_on_the_split(data: st.DataObject, doc: bytes, kind: str) -> None:
    assert count(PyCounter, kind, data.draw(split(doc))) == count(PyCounter, kind, [doc])


@pytest.mark.parametrize("make", IMPLS)
@pytest.mark.parametrize(
    ("kind", "doc", "expected"),
    [
        ("json", b"", 0),
        ("json", b" \r\n\t ", 0),
        ("json", b"[]", 0),
        ("json", b" [ \n ] ", 0),
        ("json", b"[1]", 1),
        ("json", b'[ 1 , "a,b]" , {"x": [1, 2]} , [3, 4] ]', 4),
        ("json", b'{"a": 1, "b": [1, 2, 3]}', 1),  # a top-level object is one record
        ("json", b'"just a string"', 1),
        ("json", b"42", 1),
        ("json", b"null", 1),
        ("json", b'["a\\"],[", "\\\\", "\\\\\\"]"]', 3),  # escaped quotes and backslashes
        ("json", b"\xef\xbb\xbf[1, 2]", 2),  # a UTF-8 byte order mark
        ("json", b'[1, 2]\n[3]\n{"a": 1}', 4),  # concatenated documents
        ("json", b'[[1, 2], [3], {"a": [4, 5]}]', 3),  # nested arrays are single records
        ("ndjson", b"", 0),
        ("ndjson", b"\n\n \n", 0),
        ("ndjson", b'{"a": 1}', 1),
        ("ndjson", b'{"a": 1}\n\n{"a": 2}\n', 2),  # blank lines are not records
        ("ndjson", b'{"a": 1}\r\n \t\r\n{"a": 2}', 2),
        ("csv", b"", 0),
        ("csv", b"part,qty\n", 0),
        ("csv", b"part,qty\r\n\r\n", 0),
        ("csv", b"part,qty\nA,1\nB,2\n", 2),
        ("csv", b"part,qty\nA,1\n\nB,2", 2),  # a blank line is no row; a last row without newline is
        ("csv", b'part,note\r\nA,"two\r\nlines"\r\nB,"say ""hi""\nthere"\r\n', 2),
        ("csv", b'part,note\nA,"a ""quoted"" comma, here"\n', 1),
        ("none", b"a\nb\nc\n", 0),
    ],
)
def test_edge_cases_whole_and_byte_by_byte(make: Any, kind: str, doc: bytes, expected: int) -> None:
    assert count(make, kind, [doc]) == expected
    assert count(make, kind, [doc[i : i + 1] for i in range(len(doc))]) == expected


@pytest.mark.parametrize(
    ("media_type", "kind"),
    [
        ("application/json", "json"),
        ("application/ld+json; charset=utf-8", "json"),
        ("application/x-ndjson", "ndjson"),
        ("application/jsonl", "ndjson"),
        ("text/csv", "csv"),
        ("Text/CSV; header=present", "csv"),
        ("application/octet-stream", "none"),
    ],
)
def test_media_types(media_type: str, kind: str) -> None:
    assert record_kind(media_type) == kind
    counter = RecordCounter(media_type, implementation="python")
    assert counter.kind == kind
    counter.feed(b"[1, 2]\n[3]\n")
    assert counter.total() == {"json": 3, "ndjson": 2, "csv": 1, "none": 0}[kind]


@pytest.mark.parametrize("make", IMPLS)
def test_refusals(make: Any) -> None:
    with pytest.raises(ValueError, match="unknown record kind"):
        make("xml")
    counter = make("json")
    with pytest.raises(TypeError):
        counter.feed("[1, 2]")  # text, not bytes
    counter.feed(b"[1, 2")
    assert counter.total() == 2  # total() may be read midway; feeding goes on after it
    counter.feed(bytearray(b", 3]"))
    assert counter.total() == 3


def test_python_fallback_when_asked() -> None:
    counter = RecordCounter("text/csv", implementation="python")
    assert counter.implementation == "python"
    counter.feed(memoryview(b'h\n"a\nb"\n'))
    assert counter.total() == 1


@pytest.mark.skipif(CCounter is None, reason=NOT_BUILT)
def test_large_chunks_counted_in_parallel_threads() -> None:
    """A chunk of 64 KiB or more is scanned by the C counter without the GIL: counters fed in
    parallel threads (as the data plane's requests are) each count their own document exactly."""
    import threading

    docs = {
        "json": json.dumps([{"id": i, "s": 'x\\"y' * (i % 7)} for i in range(40_000)]).encode(),
        "ndjson": b"".join(json.dumps({"id": i}).encode() + b"\n" for i in range(50_000)),
        "csv": b"id,text\n" + b"".join(b'%d,"a\nb"\n' % i for i in range(50_000)),
    }
    expected = {"json": 40_000, "ndjson": 50_000, "csv": 50_000}
    assert all(len(d) >= 65_536 for d in docs.values())
    results: dict[tuple[str, int], int] = {}

    def count(kind: str, k: int) -> None:
        c = CCounter(kind)
        doc = docs[kind]
        third = len(doc) // 3  # three big chunks: the state carries across them
        for part in (doc[:third], doc[third : 2 * third], doc[2 * third :]):
            c.feed(memoryview(part))
        results[(kind, k)] = c.total()

    threads = [threading.Thread(target=count, args=(kind, k)) for kind in docs for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {(kind, k): expected[kind] for kind in docs for k in range(4)}
