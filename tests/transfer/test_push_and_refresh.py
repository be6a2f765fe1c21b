"""Two real connectors: HTTP push into the consumer's inbox, a push to a dead endpoint (retries,
then TERMINATED with the reason), EDR refresh (old token valid until the new one is used, a lost
refresh breaks nothing), and a usage policy that can never permit again terminating the transfer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from transfer_nodes import BACKENDS, backend_env, bom_agreement, connectors, request_transfer

from catalog.samples import sample_datasets
from connector._demo import (
    Node,
    fetch_catalog,
    free_port,
    negotiate,
    pull,
    record_partner,
    seed_provider,
    start_node,
    stop_node,
    usage_of,
    wait_ready,
)

FAST_RETRY = {"DADAM_SEND_RETRY_LIMIT": "2", "DADAM_SEND_RETRY_BASE_MS": "100"}


@pytest.fixture(params=BACKENDS)
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    with connectors(tmp_path, {**FAST_RETRY, **backend_env(request)}) as pair:
        yield pair


def wait_state(node: Node, tid: str, *states: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    with node.client() as c:
        while time.monotonic() < deadline:
            view = c.get(f"/transfers/{quote(tid, safe='')}").json()
            if view["state"] in states:
                return view
            time.sleep(0.05)
    raise AssertionError(f"transfer {tid} never reached {states}: {view}")


def test_http_push_into_the_consumer_inbox_metered_once(nodes: tuple[Node, Node]) -> None:
    provider, consumer = nodes
    agreement = bom_agreement(provider, consumer)
    tid = request_transfer(consumer, provider, agreement, "HttpData-PUSH")
    done = wait_state(consumer, tid, "COMPLETED", "TERMINATED")
    assert done["state"] == "COMPLETED", done
    source = next(d for d in sample_datasets() if d.id == "bom-brake-assembly-as-built")
    assert source.data_address is not None
    expected = Path(source.data_address.properties["path"]).read_bytes()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tid)
    received = consumer.data_dir / "inbox" / safe / "bom-brake-assembly-as-built"
    assert received.read_bytes() == expected
    # the provider's view never shows the consumer's secret
    with provider.client() as p:
        views = p.get("/transfers").json()["items"]
    pushed = next(v for v in views if v["consumerPid"] == tid)
    assert pushed["state"] == "COMPLETED"
    secret = {x["name"]: x["value"] for x in pushed["dataAddress"]["endpointProperties"]}["authorization"]
    assert secret == "**********"
    events = [e for e in usage_of(provider, agreement) if e["transfer_id"] == pushed["id"]]
    assert len(events) == 1 and events[0]["bytes"] == len(expected) and events[0]["outcome"] == "ok"
    # the inbox refuses anyone without the transfer's secret
    r = httpx.post(f"{consumer.base_url}/api/public/inbox/{quote(tid, safe='')}", content=b"x",
                   headers={"Authorization": "Bearer guess"})  # fmt: skip
    assert r.status_code == 403


def test_push_to_a_dead_endpoint_retries_then_terminates_with_the_reason(nodes: tuple[Node, Node]) -> None:
    provider, consumer = nodes
    agreement = bom_agreement(provider, consumer)
    dead = f"http://127.0.0.1:{free_port()}/incoming"
    tid = request_transfer(consumer, provider, agreement, "HttpData-PUSH", dataDestination={"endpoint": dead})
    view = wait_state(consumer, tid, "TERMINATED", "COMPLETED")
    assert view["state"] == "TERMINATED"
    assert "push to " + dead in view["errorDetail"] and "gave up after 2 attempts" in view["errorDetail"]
    with provider.client() as p:
        pushed = next(v for v in p.get("/transfers").json()["items"] if v["consumerPid"] == tid)
    assert pushed["state"] == "TERMINATED" and "gave up after 2 attempts" in pushed["errorDetail"]
    assert not [e for e in usage_of(provider, agreement) if e["transfer_id"] == pushed["id"]]


def test_a_push_format_needs_a_usable_destination(nodes: tuple[Node, Node]) -> None:
    provider, consumer = nodes
    agreement = bom_agreement(provider, consumer)
    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "agreementId": agreement,
                                       "format": "AmazonS3-PUSH", "dataDestination": {"bucketName": "x"}})  # fmt: skip
    assert r.status_code == 400 and "DADAM_S3_" in r.text
    with consumer.client() as c:
        r = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "agreementId": agreement,
                                       "format": "FTP-PUSH"})  # fmt: skip
    assert r.status_code == 400 and "unknown transfer type" in r.text


def _props(address: dict[str, Any]) -> dict[str, str]:
    return {p["name"].rsplit("/", 1)[-1]: p["value"] for p in address["endpointProperties"]}


def test_edr_refresh_keeps_the_old_token_until_the_new_one_is_used(tmp_path: Path) -> None:
    provider = start_node("provider", tmp_path / "p")
    consumer = start_node("consumer", tmp_path / "c")
    try:
        wait_ready(provider)
        wait_ready(consumer)
        agreement = bom_agreement(provider, consumer)
        _data, transfer = pull(consumer, provider, agreement)
        tid = quote(transfer["id"], safe="")
        old = _props(transfer["dataAddress"])
        assert old["refreshToken"] and old["refreshEndpoint"].endswith("/api/public/token")
        endpoint = transfer["dataAddress"]["endpoint"]

        def get(token: str) -> int:
            return httpx.get(endpoint, headers={"Authorization": f"Bearer {token}"}).status_code

        # a refresh token alone is useless: the caller must prove it is the consumer (DCP token)
        r = httpx.post(
            old["refreshEndpoint"], data={"grant_type": "refresh_token", "refresh_token": old["refreshToken"]}
        )
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"

        with consumer.client() as c:
            fresh = c.post(f"/transfers/{tid}/edr/refresh").json()
        assert "refreshError" not in fresh and fresh["authorization"] != old["authorization"]
        assert fresh["expiresAt"] > time.time()
        assert get(old["authorization"]) == 200  # still valid: the new one was not used yet
        assert get(fresh["authorization"]) == 200
        assert get(old["authorization"]) == 401  # superseded now
        with consumer.client() as c:  # the management view holds the refreshed pair
            view = c.get(f"/transfers/{tid}").json()
        assert _props(view["dataAddress"])["authorization"] == fresh["authorization"]

        # the provider is unreachable during a refresh: the current EDR is handed out, still valid
        stop_node(provider)
        with consumer.client() as c:
            kept = c.post(f"/transfers/{tid}/edr/refresh").json()
        assert kept["authorization"] == fresh["authorization"] and "refreshError" in kept
    finally:
        stop_node(consumer)
        stop_node(provider)


def test_a_policy_that_can_never_permit_again_terminates_the_transfer(tmp_path: Path) -> None:
    provider = start_node("provider", tmp_path / "p")
    consumer = start_node("consumer", tmp_path / "c")
    try:
        wait_ready(provider)
        wait_ready(consumer)
        seed_provider(provider)
        record_partner(provider, consumer)
        with provider.client() as p:
            r = p.post("/policies", json={"id": "one-use", "policy": {"@type": "Set", "permission": [
                {"action": "use", "constraint": [{"leftOperand": "count", "operator": "lteq", "rightOperand": "1"}]}]}})  # fmt: skip
            assert r.status_code in (200, 201), r.text
            r = p.post("/contract-definitions", json={"id": "track-counted", "access_policy_id": "open-access",
                       "contract_policy_id": "one-use", "selector": {"dataset_ids": ["production-tracking-line2"]}})  # fmt: skip
            assert r.status_code in (200, 201), r.text
        catalog = fetch_catalog(consumer, provider)
        track = next(d for d in catalog["dataset"] if d["@id"] == "production-tracking-line2")
        offer = next(o for o in track["hasPolicy"] if "count" in str(o))
        agreement = negotiate(consumer, provider, offer["@id"])["agreement"]["@id"]
        _data, transfer = pull(consumer, provider, agreement)  # the one use the agreement allows
        token = _props(transfer["dataAddress"])["authorization"]
        endpoint = transfer["dataAddress"]["endpoint"]
        refused = httpx.get(endpoint, headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403 and "count" in refused.text
        view = wait_state(consumer, transfer["id"], "TERMINATED")
        assert "usage policy" in view["errorDetail"]
    finally:
        stop_node(consumer)
        stop_node(provider)
