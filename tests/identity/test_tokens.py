"""DCP self-issued ID tokens: every attack is rejected with a message naming the failed check."""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI
from joserfc import jwt

from connector.errors import TokenError
from connector.identity import (
    Caller,
    DidWebResolver,
    DspTokenAuth,
    Identity,
    MemoryReplayStore,
    PartnerDirectory,
    ReplayClaim,
    SqlReplayStore,
    StaticDidResolver,
    TokenVerifier,
    did_router,
    dsp_caller_dependency,
)

pytestmark = pytest.mark.anyio

CONSUMER = "did:web:consumer.example.com"
PROVIDER = "did:web:provider.example.com"


@pytest.fixture(params=["ES256", "Ed25519"])
def consumer(request: pytest.FixtureRequest, tmp_path: Path) -> Identity:
    return Identity.load_or_create(CONSUMER, tmp_path / "c", request.param)


def verifier_for(consumer: Identity, **kw: Any) -> TokenVerifier:
    resolver = StaticDidResolver({CONSUMER: consumer.did_document()})
    return TokenVerifier(resolver, PROVIDER, MemoryReplayStore(), leeway_seconds=5, **kw)


async def test_valid_token_gives_the_caller_with_recorded_claims(consumer: Identity, sqlite_url: str) -> None:
    from connector.store import create_engine, migrate

    engine = create_engine(sqlite_url)
    migrate(engine)
    partners = PartnerDirectory(engine)
    partners.put(CONSUMER, {"bpn": "BPNL000000000001", "memberships": ["catena-x"]})
    caller = await verifier_for(consumer, partners=partners).verify(
        "Bearer " + consumer.issue_token(PROVIDER)
    )
    assert caller == Caller(did=CONSUMER, claims=caller.claims, token_id=caller.token_id)
    assert caller.claims == {"bpn": "BPNL000000000001", "memberships": ["catena-x"]}
    # a bare token (DSP's "Authorization: <token>") is accepted too
    assert (await verifier_for(consumer).verify(consumer.issue_token(PROVIDER))).did == CONSUMER
    engine.dispose()


def _forge(identity: Identity, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A token signed with ``identity``'s key but with arbitrary claims/header."""
    key = identity._keys[identity._current]  # test-only access to sign malicious tokens
    alg = identity.algorithm
    return jwt.encode({"alg": alg, "kid": identity.kid, **(header or {})}, claims, key, algorithms=[alg])


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": CONSUMER,
        "sub": CONSUMER,
        "aud": PROVIDER,
        "jti": "j-1",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


Attack = Callable[[Identity, Path], str]


def _wrong_key(c: Identity, tmp: Path) -> str:
    impostor = Identity.load_or_create(CONSUMER, tmp / "impostor", c.algorithm)  # type: ignore[arg-type]
    return _forge(impostor, _claims(), {"kid": c.kid})  # claims c's key id, signed with another key


ATTACKS: dict[str, tuple[Attack, str]] = {
    "no token": (lambda c, t: "", "no token"),
    "garbage": (lambda c, t: "Bearer not-a-jwt", "malformed token"),
    "wrong key": (_wrong_key, "does not verify"),
    "expired": (lambda c, t: _forge(c, _claims(iat=int(time.time()) - 400, nbf=None, exp=int(time.time()) - 100)), "expired"),
    "future iat": (lambda c, t: _forge(c, _claims(iat=int(time.time()) + 120, exp=int(time.time()) + 180, nbf=None)), "'iat' is"),
    "future nbf": (lambda c, t: _forge(c, _claims(nbf=int(time.time()) + 120)), "not valid before"),
    "too long-lived": (lambda c, t: _forge(c, _claims(exp=int(time.time()) + 3600)), "exceeds the DCP maximum"),
    "wrong aud": (lambda c, t: _forge(c, _claims(aud="did:web:someone-else")), "not for this connector"),
    "iss != sub": (lambda c, t: _forge(c, _claims(sub="did:web:victim")), r"iss .* != sub"),
    "no jti": (lambda c, t: _forge(c, _claims(jti=None)), "no 'jti'"),
    "unknown kid": (lambda c, t: _forge(c, _claims(), {"kid": CONSUMER + "#nope"}), "no verification method"),
    "alg none": (lambda c, t: _none_token(), "unsupported JWS algorithm"),
    "claims swapped": (lambda c, t: _swap_claims(c), "does not verify"),
    "signature cut": (lambda c, t: c.issue_token(PROVIDER)[:-6], "does not verify|malformed"),
    "padded base64": (lambda c, t: c.issue_token(PROVIDER) + "=", "malformed"),
    "standard base64": (lambda c, t: _std_b64(c), "malformed"),
    "critical header": (lambda c, t: c.sign_jws(json.dumps(_claims()).encode(), headers={"crit": ["x-ext"], "x-ext": 1}), "critical header"),
    "header not an object": (lambda c, t: _raw_header(c, "[1]"), "not a JSON object"),
    "alg of the other key type": (lambda c, t: _forge_alg_swap(c), "does not match the key type|does not verify"),
}  # fmt: skip


def _swap_claims(c: Identity) -> str:
    """A real token's header and signature over another payload (another audience's claims)."""
    head, _, sig = c.issue_token(PROVIDER).split(".")
    other = c.issue_token(PROVIDER).split(".")[1]
    return f"{head}.{other}.{sig}"


def _std_b64(c: Identity) -> str:
    head, body, sig = c.issue_token(PROVIDER).split(".")
    # the same bytes in the standard alphabet: '-' and '_' become '+' and '/'
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    std = base64.b64encode(raw).decode().rstrip("=")
    if std == sig:  # no '+' or '/' in this one: force one
        std = "+" + std[1:]
    return f"{head}.{body}.{std}"


def _raw_header(c: Identity, header_json: str) -> str:
    _, body, sig = c.issue_token(PROVIDER).split(".")
    head = base64.urlsafe_b64encode(header_json.encode()).decode().rstrip("=")
    return f"{head}.{body}.{sig}"


def _forge_alg_swap(c: Identity) -> str:
    """A token whose header names the algorithm of the other key type."""
    head, body, sig = c.issue_token(PROVIDER).split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    header["alg"] = "Ed25519" if header["alg"] == "ES256" else "ES256"
    head = base64.urlsafe_b64encode(json.dumps(header).encode()).decode().rstrip("=")
    return f"{head}.{body}.{sig}"


def test_our_tokens_and_signatures_verify_with_another_jose_library(consumer: Identity) -> None:
    """Tokens and JWS are made with `cryptography` directly (decision 0409); a peer verifies them
    with a JOSE library (here joserfc), attached and detached."""
    from joserfc import jws as other_jws
    from joserfc.jwk import JWKRegistry

    public = JWKRegistry.import_key(dict(consumer.did_document()["verificationMethod"][0]["publicKeyJwk"]))
    alg = consumer.algorithm
    decoded = jwt.decode(consumer.issue_token(PROVIDER), public, algorithms=[alg])
    assert decoded.header == {"alg": alg, "kid": consumer.kid, "typ": "JWT"}
    assert decoded.claims["iss"] == decoded.claims["sub"] == CONSUMER and decoded.claims["aud"] == PROVIDER
    payload = b'{"agreement":"x"}'
    attached = consumer.sign_jws(payload)
    assert other_jws.deserialize_compact(attached, public, algorithms=[alg]).payload == payload
    head, _, sig = consumer.sign_jws(payload, detached=True).split(".")
    body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    assert other_jws.deserialize_compact(f"{head}.{body}.{sig}", public, algorithms=[alg]).payload == payload


def _none_token() -> str:
    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'none', 'kid': CONSUMER + '#x'})}.{b64(_claims())}.c2ln"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_attack_is_rejected(attack: str, consumer: Identity, tmp_path: Path) -> None:
    make, message = ATTACKS[attack]
    with pytest.raises(TokenError, match=message):
        await verifier_for(consumer).verify(make(consumer, tmp_path))


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_rejected_without_the_event_loop_too(
    attack: str, consumer: Identity, tmp_path: Path
) -> None:
    """``prepare_now`` (the fast lane's protocol, decision 0412) makes the checks ``prepare`` makes."""
    make, message = ATTACKS[attack]
    token = make(consumer, tmp_path)

    def check() -> None:
        finish = verifier_for(consumer).prepare_now(token)
        assert finish is not None  # the document is at hand
        finish()

    with pytest.raises(TokenError, match=message):
        check()


async def test_without_the_event_loop_a_token_is_checked_only_when_the_did_document_is_cached(
    tmp_path: Path,
) -> None:
    consumer = Identity.load_or_create("did:web:consumer.test", tmp_path / "c")
    consumer_app = FastAPI()
    consumer_app.include_router(did_router(consumer))
    resolver = DidWebResolver(transport=httpx.ASGITransport(app=consumer_app), cache_seconds=300)
    verifier = TokenVerifier(resolver, PROVIDER, MemoryReplayStore())
    assert resolver.cached("did:web:consumer.test") is None
    assert verifier.prepare_now(consumer.issue_token(PROVIDER)) is None  # it would have to fetch
    with pytest.raises(TokenError, match="malformed token"):  # the checks before it still apply
        verifier.prepare_now("Bearer not-a-jwt")
    assert (await verifier.verify(consumer.issue_token(PROVIDER))).did == "did:web:consumer.test"
    finish = verifier.prepare_now("Bearer " + consumer.issue_token(PROVIDER))
    assert finish is not None
    assert finish().did == "did:web:consumer.test"
    token = consumer.issue_token(PROVIDER)
    finish = verifier.prepare_now(token)
    assert finish is not None
    finish()
    replayed = verifier.prepare_now(token)
    assert replayed is not None
    with pytest.raises(TokenError, match="replay"):
        replayed()
    resolver.invalidate("did:web:consumer.test")
    assert verifier.prepare_now(consumer.issue_token(PROVIDER)) is None
    await resolver.aclose()


async def test_sub_must_be_the_did_document_id(consumer: Identity) -> None:
    doc = dict(consumer.did_document())
    doc["id"] = "did:web:somebody-else"
    v = TokenVerifier(StaticDidResolver({CONSUMER: doc}), PROVIDER, MemoryReplayStore())
    with pytest.raises(TokenError, match="is not the id of its DID document"):
        await v.verify(consumer.issue_token(PROVIDER))
    with pytest.raises(TokenError, match="is not the id of its DID document"):
        v.prepare_now(consumer.issue_token(PROVIDER))


async def test_replayed_token_is_rejected(consumer: Identity) -> None:
    v = verifier_for(consumer)
    token = consumer.issue_token(PROVIDER)
    await v.verify(token)
    with pytest.raises(TokenError, match="replay"):
        await v.verify(token)


async def test_untrusted_issuer_is_rejected(consumer: Identity) -> None:
    with pytest.raises(TokenError, match="not one of the trusted"):
        await verifier_for(consumer, trusted_dids=["did:web:only-this-one"]).verify(
            consumer.issue_token(PROVIDER)
        )


def test_sql_replay_store_is_shared_between_replicas(engine: sa.Engine) -> None:
    replica_a, replica_b = SqlReplayStore(engine), SqlReplayStore(engine)
    exp = int(time.time()) + 60
    assert replica_a.add(CONSUMER, "jti-1", exp) is True
    assert replica_b.add(CONSUMER, "jti-1", exp) is False  # seen on the other replica
    assert replica_b.add("did:web:other", "jti-1", exp) is True  # ids are per issuer


def test_sql_replay_store_forgets_expired_ids_and_still_rejects_live_ones(engine: sa.Engine) -> None:
    from connector.identity._store import token_replay_table

    store = SqlReplayStore(engine, prune_every=3)
    now = int(time.time())
    assert store.add(CONSUMER, "old", now - 10) is True
    assert store.add(CONSUMER, "live", now + 60) is True
    assert store.add(CONSUMER, "third", now + 60) is True  # the 3rd add prunes first
    with engine.connect() as conn:
        keys = set(conn.execute(sa.select(token_replay_table.c.token_key)).scalars())
    assert keys == {f"{CONSUMER}|live", f"{CONSUMER}|third"}
    assert store.add(CONSUMER, "live", now + 60) is False


def test_ids_recorded_in_a_write_transaction_are_pruned_without_blocking_it(engine: sa.Engine) -> None:
    """A :class:`ReplayClaim` settled by a commit callback (a negotiation message recording its
    token with its own write, decision 0409) counts towards pruning; the pruning must not open
    a write transaction there (SQLite's group commit holds its lock while callbacks run)."""
    from connector.identity._store import token_replay_table
    from connector.store import on_commit, write_tx

    store = SqlReplayStore(engine, prune_every=2)
    now = int(time.time())
    assert store.add(CONSUMER, "old", now - 10) is True

    def record_with_a_write(jti: str) -> None:
        claim = ReplayClaim(store, CONSUMER, jti, now + 60)
        with write_tx(engine) as conn:
            conn.execute(token_replay_table.insert().values(token_key=claim.key, expires_at=claim.expires_at))
            on_commit(conn, functools.partial(claim.settle, True))
        assert claim.recorded

    writer = threading.Thread(target=lambda: [record_with_a_write(f"t{i}") for i in range(3)], daemon=True)
    writer.start()
    writer.join(10)
    assert not writer.is_alive(), "a commit callback blocked the writer"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            keys = set(conn.execute(sa.select(token_replay_table.c.token_key)).scalars())
        if f"{CONSUMER}|old" not in keys:
            break
        time.sleep(0.05)
    assert keys == {f"{CONSUMER}|t0", f"{CONSUMER}|t1", f"{CONSUMER}|t2"}
    assert store.add(CONSUMER, "t1", now + 60) is False
    assert store._pruning.acquire(timeout=10)  # the pruning thread is done with its connection
    store._pruning.release()


def test_partner_claims_are_validated(engine: sa.Engine) -> None:
    from connector.errors import ValidationError

    d = PartnerDirectory(engine)
    with pytest.raises(ValidationError) as err:
        d.put(CONSUMER, {"memberships": "catena-x", "colour": "blue"})
    assert any("memberships" in e for e in err.value.errors)
    assert any("colour: unknown claim" in e for e in err.value.errors)
    d.put(CONSUMER, {"framework_agreements": ["DataExchangeGovernance:1.0"]})
    assert d.claims_for(CONSUMER) == {"framework_agreements": ["DataExchangeGovernance:1.0"]}
    assert d.claims_for("did:web:unknown") == {}


async def test_over_http_did_web_resolution_and_token_auth(tmp_path: Path) -> None:
    """The consumer's DID document is served by its app; the provider resolves it over (ASGI) HTTP."""
    consumer = Identity.load_or_create("did:web:consumer.test", tmp_path / "c")
    consumer_app = FastAPI()
    consumer_app.include_router(did_router(consumer))
    resolver = DidWebResolver(transport=httpx.ASGITransport(app=consumer_app))
    verifier = TokenVerifier(resolver, PROVIDER, MemoryReplayStore())
    provider_app = FastAPI()

    @provider_app.get("/whoami")
    async def whoami(caller: Caller = Depends(dsp_caller_dependency(verifier))) -> dict[str, str]:
        return {"did": caller.did}

    from connector.api import install_error_handlers

    install_error_handlers(provider_app, dsp_path="/dsp")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=provider_app), base_url="http://provider.test"
    ) as client:
        ok = await client.get("/whoami", auth=DspTokenAuth(consumer, PROVIDER))
        assert ok.status_code == 200
        assert ok.json() == {"did": "did:web:consumer.test"}
        denied = await client.get("/whoami")
        assert denied.status_code == 401
        assert "no token" in denied.text
    await resolver.aclose()


def test_memory_replay_store_keeps_unexpired_tokens_and_prunes_in_amortised_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(MemoryReplayStore, "PRUNE_AT", 10)
    store = MemoryReplayStore()
    now = int(time.time())
    for i in range(5):
        assert store.add("did:web:a", f"old-{i}", now - 100)  # already expired: dropped at a prune
    marks = set()
    for i in range(1000):
        assert store.add("did:web:a", f"t-{i}", now + 300)
        marks.add(store._prune_at)
    # past the mark every entry is still unexpired: no replay gets through ...
    assert not any(store.add("did:web:a", f"t-{i}", now + 300) for i in range(1000))
    # ... and the map was pruned a few times (at doubling sizes), not on every add
    assert sorted(marks)[0] == 10 and 4 <= len(marks) <= 10 and max(marks) >= 1000
    assert not any(k.startswith("did:web:a|old-") for k in store._seen)
