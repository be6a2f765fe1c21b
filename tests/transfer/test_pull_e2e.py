"""Two real connectors: negotiate, pull with the EDR, and every data-plane rule a user relies on.

Forged, other-transfer and missing tokens are refused; a suspended or terminated transfer answers
403; ranges answer 206 (and 416 beyond the object); usage events equal the answered requests.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from transfer_nodes import BACKENDS, backend_env, connectors

from connector._demo import (
    Node,
    fetch_catalog,
    negotiate,
    pull,
    record_partner,
    seed_provider,
    usage_of,
)


@pytest.fixture(params=BACKENDS)
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    with connectors(tmp_path, backend_env(request)) as pair:
        yield pair


def _steer(consumer: Node, tid: str, action: str) -> dict[str, Any]:
    with consumer.client() as c:
        r = c.post(f"/transfers/{quote(tid, safe='')}/{action}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


def _wait_state(consumer: Node, tid: str, state: str) -> None:
    import time

    with consumer.client() as c:
        for _ in range(200):
            if c.get(f"/transfers/{quote(tid, safe='')}").json()["state"] == state:
                return
            time.sleep(0.05)
    raise AssertionError(f"transfer never reached {state}")


def test_pull_enforced_and_metered(nodes: tuple[Node, Node]) -> None:
    provider, consumer = nodes
    seed_provider(provider)
    record_partner(provider, consumer)
    catalog = fetch_catalog(consumer, provider)
    pcf = next(d for d in catalog["dataset"] if d["@id"] == "pcf-brake-disc-bd330v")
    agreement = negotiate(consumer, provider, pcf["hasPolicy"][0]["@id"])["agreement"]
    data, transfer = pull(consumer, provider, agreement["@id"])
    answered = 1
    address = transfer["dataAddress"]
    token = next(p["value"] for p in address["endpointProperties"] if p["name"] == "authorization")
    endpoint = address["endpoint"]

    def get(auth: str | None, url: str = endpoint, **headers: str) -> httpx.Response:
        if auth is not None:
            headers["Authorization"] = f"Bearer {auth}"
        return httpx.get(url, headers=headers, timeout=30)

    part = get(token, Range="bytes=10-19")
    assert part.status_code == 206
    assert part.content == data[10:20]
    answered += 1
    assert get(token, Range=f"bytes={len(data) + 5}-").status_code == 416
    assert get(None).status_code == 401
    head, body, sig = token.split(".")
    forged = f"{head}.{base64.urlsafe_b64encode(body.encode()[::-1]).decode().rstrip('=')}.{sig}"
    assert get(forged).status_code == 401
    other = get(token, url=endpoint.rsplit("/", 1)[0] + "/urn:uuid:00000000-0000-0000-0000-000000000000")
    assert other.status_code == 401
    assert "not" in other.json()["message"]
    _steer(consumer, transfer["id"], "suspend")
    _wait_state(consumer, transfer["id"], "SUSPENDED")
    suspended = get(token)
    assert suspended.status_code == 403
    assert "SUSPENDED" in suspended.text
    _steer(consumer, transfer["id"], "resume")
    _wait_state(consumer, transfer["id"], "STARTED")
    assert get(token).content == data
    answered += 1
    with provider.client() as c:  # the provider retires the agreement
        retired = c.post(
            f"/agreements/{quote(agreement['@id'], safe='')}/retire", json={"reason": "contract ended"}
        )
    assert retired.status_code == 200, retired.text
    refused = get(token)
    assert refused.status_code == 403
    assert "retired: contract ended" in refused.text
    _wait_state(consumer, transfer["id"], "TERMINATED")  # live transfers are terminated with the reason
    with consumer.client() as c:
        view = c.get(f"/transfers/{quote(transfer['id'], safe='')}").json()
        assert "agreement retired: contract ended" in (view["errorDetail"] or "")
        again = c.post("/transfers", json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                                           "agreementId": agreement["@id"]})  # fmt: skip
    _wait_state(consumer, again.json()["id"], "TERMINATED")  # a new request on it is refused
    events = usage_of(provider, agreement["@id"])
    assert len(events) == answered  # every answered request metered once, refused ones never
    assert sum(e["bytes"] for e in events) == 2 * len(data) + 10
    assert {e["outcome"] for e in events} == {"ok"}
