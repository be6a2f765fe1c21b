"""The consumer's fetch route (``GET <mgmt>/transfers/{id}/data``), two real connectors: the
application gets the data without handling the EDR, the consumer meters the request under the
provider's own event id (so a receipt matches without anything posted to ``/bank/usage``), ranges
pass through, an expired token is refreshed and the request retried, and every failure says why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
import sqlalchemy as sa
from transfer_nodes import bom_agreement, connectors, transfer_view, wait_until

from catalog.samples import sample_datasets
from connector._demo import Node, start_pull, stop_node, usage_of
from contracts._transfer import transfers


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    with connectors(tmp_path) as pair:
        yield pair


def _source_bytes() -> bytes:
    source = next(d for d in sample_datasets() if d.id == "bom-brake-assembly-as-built")
    assert source.data_address is not None
    return Path(source.data_address.properties["path"]).read_bytes()


def test_fetch_through_the_consumer_is_metered_on_both_sides_under_one_id(nodes: tuple[Node, Node]) -> None:
    provider, consumer = nodes
    agreement = bom_agreement(provider, consumer)
    view = start_pull(consumer, provider, agreement)
    tid = quote(str(view["id"]), safe="")
    expected = _source_bytes()
    with consumer.client() as c:
        whole = c.get(f"/transfers/{tid}/data", headers={"X-Request-Id": "app-req-1"})
        part = c.get(f"/transfers/{tid}/data", headers={"Range": "bytes=10-109"})
    assert whole.status_code == 200 and whole.content == expected
    assert whole.headers["x-request-id"] == "app-req-1"
    assert whole.headers["content-length"] == str(len(expected))
    assert part.status_code == 206 and part.content == expected[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(expected)}"
    generated = part.headers["x-request-id"]  # none given: the connector chose one and says which

    theirs = {e["id"]: e for e in usage_of(provider, agreement)}
    ours = {e["id"]: e for e in usage_of(consumer, agreement)}
    provider_pid = str(view["providerPid"])
    assert set(ours) == set(theirs) == {f"{provider_pid}:app-req-1", f"{provider_pid}:{generated}"}
    for event_id, mine in ours.items():
        assert (mine["bytes"], mine["records"], mine["outcome"]) == (
            theirs[event_id]["bytes"], theirs[event_id]["records"], "ok",
        )  # fmt: skip
        assert mine["category"] == theirs[event_id]["category"] == "supply-chain"
        assert mine["consumer"] == consumer.did and mine["provider"] == provider.did
        assert mine["transfer_id"] == provider_pid and mine["dataset_id"] == "bom-brake-assembly-as-built"


def test_an_expired_token_is_refreshed_and_the_request_retried(nodes: tuple[Node, Node]) -> None:
    provider, consumer = nodes
    agreement = bom_agreement(provider, consumer)
    view = start_pull(consumer, provider, agreement)
    # the stored token no longer works (as if it had expired): the provider answers 401
    engine = sa.create_engine(f"sqlite:///{consumer.data_dir / 'dadam.db'}")
    try:
        with engine.begin() as conn:
            stored = orjson.loads(
                conn.execute(
                    sa.select(transfers.c.data_address).where(transfers.c.id == view["id"])
                ).scalar_one()
            )
            for prop in stored["endpointProperties"]:
                if prop["name"] == "authorization":
                    prop["value"] = prop["value"][:-8] + "AAAAAAAA"  # a broken signature
            conn.execute(
                transfers.update()
                .where(transfers.c.id == view["id"])
                .values(data_address=orjson.dumps(stored).decode())
            )
    finally:
        engine.dispose()
    with consumer.client() as c:
        got = c.get(f"/transfers/{quote(str(view['id']), safe='')}/data")
    assert got.status_code == 200 and got.content == _source_bytes()
    assert len(usage_of(provider, agreement)) == len(usage_of(consumer, agreement)) == 1


def test_fetch_failures_say_why_and_meter_nothing(nodes: tuple[Node, Node]) -> None:
    provider, consumer = nodes
    agreement = bom_agreement(provider, consumer)
    view = start_pull(consumer, provider, agreement)
    tid = quote(str(view["id"]), safe="")
    with consumer.client() as c:
        unknown = c.get("/transfers/urn:uuid:nothing/data")
        assert unknown.status_code == 404 and "no consumer transfer" in unknown.json()["message"]
        # the provider refuses a range beyond the data: its status and explanation come back
        beyond = c.get(f"/transfers/{tid}/data", headers={"Range": "bytes=99999999-"})
        assert beyond.status_code == 416
        c.post(f"/transfers/{tid}/suspend", json={"reason": "pause"})
        wait_until(lambda: transfer_view(consumer, view["id"])["state"] == "SUSPENDED", "SUSPENDED")
        suspended = c.get(f"/transfers/{tid}/data")
        assert (
            suspended.status_code == 409
            and "not a started HttpData-PULL transfer" in suspended.json()["message"]
        )
        c.post(f"/transfers/{tid}/resume")
        wait_until(lambda: transfer_view(consumer, view["id"])["state"] == "STARTED", "STARTED again")
        assert usage_of(consumer, agreement) == []
        stop_node(provider)
        down = c.get(f"/transfers/{tid}/data")
    assert down.status_code == 502 and "unreachable" in down.json()["message"]
    assert usage_of(consumer, agreement) == []
