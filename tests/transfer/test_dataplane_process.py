"""The data plane as its own process (``dadam dataplane``) beside a control plane that does not
embed it: EDRs point at the data plane, pulls and pushes are served and metered there, the control
plane serves no data; the data plane can die and come back without the transfer noticing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from transfer_nodes import BACKENDS, backend_env, bom_agreement, split_connectors, wait_health

from connector._demo import (
    Node,
    pull,
    start_node,
    stop_node,
    usage_of,
)


@pytest.fixture(params=BACKENDS)
def split(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, Node, Node]]:
    with split_connectors(tmp_path, backend_env(request)) as nodes:
        yield nodes


def test_pull_and_push_served_by_a_separate_data_plane(
    split: tuple[Node, Node, Node], tmp_path: Path
) -> None:
    control, data, consumer = split
    agreement = bom_agreement(control, consumer)

    payload, transfer = pull(consumer, control, agreement)
    endpoint = transfer["dataAddress"]["endpoint"]
    assert endpoint.startswith(data.base_url + "/api/public/transfers/")
    assert len(payload) > 0
    # the control plane does not serve data
    assert httpx.get(control.base_url + "/api/public/transfers/x").status_code == 404

    # the data plane dies and comes back: the same EDR works again (state lives in the database)
    token = next(
        p["value"] for p in transfer["dataAddress"]["endpointProperties"] if p["name"] == "authorization"
    )
    assert data.proc is not None
    data.proc.kill()
    data.proc.wait(timeout=10)
    with pytest.raises(httpx.ConnectError):
        httpx.get(endpoint, headers={"Authorization": f"Bearer {token}"})
    restarted = start_node("dataplane", data.data_dir, port=data.port, env=data.env, command="dataplane",
                           log_name="dataplane2.log")  # fmt: skip
    try:
        wait_health(restarted)
        again = httpx.get(endpoint, headers={"Authorization": f"Bearer {token}"})
        assert again.status_code == 200 and again.content == payload

        # a push: queued by the control plane, run by the data plane's worker, completed over DSP
        with consumer.client() as c:
            r = c.post("/transfers", json={"counterPartyAddress": control.dsp_url, "counterPartyId": control.did,
                                           "agreementId": agreement, "format": "HttpData-PUSH"})  # fmt: skip
            tid = r.json()["id"]
            view = {}
            for _ in range(300):
                view = c.get(f"/transfers/{quote(tid, safe='')}").json()
                if view["state"] in ("COMPLETED", "TERMINATED"):
                    break
                time.sleep(0.1)
        assert view["state"] == "COMPLETED", view
        events = usage_of(control, agreement)
        assert sum(1 for e in events if e["id"].endswith(":push")) == 1
        assert sum(1 for e in events if not e["id"].endswith(":push")) == 2  # the two answered pulls
    finally:
        stop_node(restarted)
