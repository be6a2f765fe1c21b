"""AmazonS3-PUSH in signaling mode (decision record 0452): a provider control plane signals a
separate ``dadam dataplane`` process, which reads the dataset from S3 and pushes it into the
consumer's bucket on a real S3 server (SeaweedFS), then calls back ``completed``; on SQLite and
PostgreSQL."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from transfer_nodes import BACKENDS, backend_env, split_connectors, wait_until

from catalog import DataAddress
from catalog.samples import sample_datasets
from connector._demo import Node, fetch_catalog, negotiate, record_partner, seed_provider, usage_of
from connector.dataplane import S3Config
from connector.dataplane._signal_auth import CONTROL_PLANE, SignalAuth

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SECRET = "s3cret-for-signaling-tests-0123456789"
RECORDS = 2500


@pytest.fixture(params=BACKENDS)
def signaled_s3(
    request: pytest.FixtureRequest, s3_server: S3Config, tmp_path: Path
) -> Iterator[tuple[Node, Node, Node, S3Config]]:
    s3 = {"DADAM_S3_ENDPOINT": s3_server.endpoint, "DADAM_S3_ACCESS_KEY": s3_server.access_key,
          "DADAM_S3_SECRET_KEY": s3_server.secret_key}  # fmt: skip
    env = {"DADAM_DATAPLANE_SIGNALING_SECRET": SECRET, **s3, **backend_env(request)}
    control_env = {"DADAM_DATAPLANE_SIGNALING_URL": "http://127.0.0.1:{dp_port}/api/signaling"}
    with split_connectors(tmp_path, env, control_env, consumer_env=s3) as nodes:
        yield (*nodes, s3_server)


def test_s3_push_through_a_signaled_data_plane(signaled_s3: tuple[Node, Node, Node, S3Config]) -> None:
    control, data, consumer, s3 = signaled_s3
    client = s3.client()
    stamp = f"{os.getpid()}-{int(time.time() * 1000)}"
    source, target = f"sig-src-{stamp}", f"sig-dst-{stamp}"
    client.make_bucket(source)
    client.make_bucket(target)
    blob = orjson.dumps([{"part": f"P-{i}", "qty": i % 7, "note": 'a "quoted" ]'} for i in range(RECORDS)])
    client.put_object(source, "exports/parts.json", io.BytesIO(blob), len(blob))
    seed_provider(control)
    record_partner(control, consumer)
    base = next(d for d in sample_datasets() if d.id == "bom-brake-assembly-as-built")
    dataset = base.model_copy(
        update={"id": "parts-s3", "title": "Parts in S3", "media_type": "application/json", "byte_size": None,
                "data_address": DataAddress(type="s3", properties={"bucket": source, "key": "exports/parts.json"})}
    )  # fmt: skip
    with control.client() as c:
        r = c.post("/datasets", json=dataset.model_dump(mode="json", by_alias=True))
        assert r.status_code in (200, 201), r.text
    offer = next(d for d in fetch_catalog(consumer, control)["dataset"] if d["@id"] == "parts-s3")
    agreement = negotiate(consumer, control, offer["hasPolicy"][0]["@id"])["agreement"]["@id"]

    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": control.dsp_url, "counterPartyId": control.did,
                                       "agreementId": agreement, "format": "AmazonS3-PUSH",
                                       "dataDestination": {"bucketName": target, "objectName": "in/parts.json"}})  # fmt: skip
        assert r.status_code == 201, r.text
        tid = r.json()["id"]

    def consumer_view() -> dict[str, Any]:
        with consumer.client() as c:
            body: dict[str, Any] = c.get(f"/transfers/{quote(tid, safe='')}").json()
            return body

    view = wait_until(
        lambda: (v := consumer_view())["state"] in ("COMPLETED", "TERMINATED") and v, "the push", 60
    )
    assert view["state"] == "COMPLETED", view
    with control.client() as c:
        provider = next(t for t in c.get("/transfers").json()["items"] if t["consumerPid"] == tid)
    assert provider["state"] == "COMPLETED", provider

    # the data plane, not the control plane, ran the push: its flow ended COMPLETED and its
    # `completed` callback was acknowledged (nothing left to send)
    flow = httpx.get(f"{data.base_url}/api/signaling/v1/dataflows/{quote(provider['id'], safe=':')}/status",
                     auth=SignalAuth(SECRET.encode(), CONTROL_PLANE), timeout=10)  # fmt: skip
    assert flow.status_code == 200 and flow.json()["state"] == "COMPLETED", flow.text
    assert flow.json()["transferType"] == "AmazonS3-PUSH"

    got = client.get_object(target, "in/parts.json")
    try:
        assert got.read() == blob
    finally:
        got.close()
        got.release_conn()
    pushed = [e for e in usage_of(control, agreement) if e["id"].endswith(":push")]
    assert len(pushed) == 1, pushed
    assert pushed[0]["bytes"] == len(blob) and pushed[0]["records"] == RECORDS
