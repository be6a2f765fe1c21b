from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from connector.dataplane import RecordCounter

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    max_leaves=8,
)


@given(items=st.lists(json_values, max_size=30), chunk=st.integers(1, 17))
def test_json_array_elements_counted_across_chunk_boundaries(items: list[object], chunk: int) -> None:
    data = json.dumps(items, indent=1 if chunk % 2 else None).encode()
    c = RecordCounter("application/json")
    for i in range(0, len(data), chunk):
        c.feed(data[i : i + chunk])
    assert c.total() == len(items)


def test_ndjson_and_csv() -> None:
    nd = RecordCounter("application/x-ndjson")
    nd.feed(b'{"a":1}\n{"a":2}\n{"a"')
    nd.feed(b":3}")
    assert nd.total() == 3
    csv = RecordCounter("text/csv")
    csv.feed(b"part,qty\nA,1\nB,2\n")
    assert csv.total() == 2
