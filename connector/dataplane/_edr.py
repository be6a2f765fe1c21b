"""EDR access and refresh tokens: short-lived JWTs signed with the provider's DID key, bound to one
transfer and one consumer. The provider's data plane is the only verifier.

Refresh. Every token carries a generation ``gen``. The first EDR is generation 1. A refresh
(``POST /api/public/token`` with the refresh token, authenticated by the consumer's DCP
self-issued token, so a stolen refresh token alone is useless) issues the next generation. Older
generations stay valid until a token of a newer generation is *used*: a refresh whose answer is
lost (timeout) therefore never breaks the transfer, the consumer keeps using the old pair and may
refresh again. State per transfer lives in ``dp_tokens`` (absent row: generation 1 only).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson
import sqlalchemy as sa
from joserfc.util import json_b64decode
from sqlalchemy.engine import Connection, Engine

from connector.errors import TokenError
from connector.identity import Identity, verify_jws
from connector.store import metadata, read_only

__all__ = ["EXPIRES_IN", "REFRESH_ENDPOINT", "REFRESH_TOKEN", "EdrRefresher", "EdrService", "tokens"]

ENDPOINT_TYPE = "https://w3id.org/idsa/v4.1/HTTP"
#: EDR property names, as Tractus-X EDC names them (so its consumers find them)
TX_AUTH = "https://w3id.org/tractusx/auth/"
REFRESH_TOKEN = TX_AUTH + "refreshToken"
REFRESH_ENDPOINT = TX_AUTH + "refreshEndpoint"
REFRESH_AUDIENCE = TX_AUTH + "refreshAudience"
EXPIRES_IN = TX_AUTH + "expiresIn"
REFRESH_TTL_S = 30 * 24 * 3600
#: verified token strings remembered (a JWS checked against an unchanged key of ours stays valid)
VERIFIED_MAX = 4096

tokens = sa.Table(
    "dp_tokens",
    metadata,
    sa.Column("transfer_id", sa.String(200), primary_key=True),
    #: the newest generation issued
    sa.Column("issued_gen", sa.Integer, nullable=False),
    #: the oldest generation still accepted (raised when a newer token is first used)
    sa.Column("min_gen", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


class EdrService:
    """Issues the ``dataAddress`` of a pull transfer, verifies and refreshes its tokens."""

    def __init__(
        self,
        identity: Identity,
        public_base_url: str,
        *,
        ttl_seconds: int = 300,
        engine: Engine | None = None,
    ) -> None:
        self.identity = identity
        self.public_base_url = public_base_url.rstrip("/")
        self.ttl_seconds = ttl_seconds
        #: where token generations are kept; without it, refresh is off and gen 1 is always valid
        self.engine = engine
        #: token -> (payload, kid, public JWK it verified with): the signature check is skipped on a
        #: repeat only while that key is still ours and unchanged; claims are checked on every use
        self._verified: OrderedDict[str, tuple[bytes, str, Mapping[str, Any]]] = OrderedDict()
        self._verified_lock = threading.Lock()

    def endpoint(self, transfer_id: str) -> str:
        return f"{self.public_base_url}/api/public/transfers/{transfer_id}"

    @property
    def refresh_endpoint(self) -> str:
        return f"{self.public_base_url}/api/public/token"

    def _jwt(self, claims: dict[str, Any]) -> str:
        return self.identity.sign_jws(orjson.dumps(claims), headers={"typ": "JWT"})

    def token(self, transfer_id: str, consumer_did: str, *, now: float | None = None, gen: int = 1) -> str:
        t = int(now if now is not None else time.time())
        return self._jwt(
            {
                "iss": self.identity.did, "sub": consumer_did, "aud": "dadam-dataplane",
                "tid": transfer_id, "gen": gen, "jti": str(uuid.uuid4()), "iat": t,
                "exp": t + self.ttl_seconds,
            }
        )  # fmt: skip

    def refresh_token(self, transfer_id: str, consumer_did: str, *, gen: int = 1) -> str:
        t = int(time.time())
        return self._jwt(
            {
                "iss": self.identity.did, "sub": consumer_did, "aud": "dadam-refresh", "tid": transfer_id,
                "gen": gen, "jti": str(uuid.uuid4()), "iat": t, "exp": t + REFRESH_TTL_S,
            }
        )  # fmt: skip

    def data_address(self, transfer_id: str, consumer_did: str) -> dict[str, Any]:
        """The DSP ``DataAddress`` (endpoint + bearer token + refresh token) for a TransferStartMessage."""
        props = [
            {
                "@type": "EndpointProperty",
                "name": "authorization",
                "value": self.token(transfer_id, consumer_did),
            },
            {"@type": "EndpointProperty", "name": "authType", "value": "bearer"},
            {"@type": "EndpointProperty", "name": EXPIRES_IN, "value": str(self.ttl_seconds)},
        ]
        if self.engine is not None:
            props += [
                {"@type": "EndpointProperty", "name": REFRESH_TOKEN,
                 "value": self.refresh_token(transfer_id, consumer_did)},
                {"@type": "EndpointProperty", "name": REFRESH_ENDPOINT, "value": self.refresh_endpoint},
                {"@type": "EndpointProperty", "name": REFRESH_AUDIENCE, "value": self.identity.did},
            ]  # fmt: skip
        return {
            "@type": "DataAddress",
            "endpointType": ENDPOINT_TYPE,
            "endpoint": self.endpoint(transfer_id),
            "endpointProperties": props,
        }

    def _payload(self, token: str) -> bytes:
        """The payload of a JWS signed by one of our keys (signature checked once per token string
        and key: a removed or replaced key fails the next use at once)."""
        with self._verified_lock:
            hit = self._verified.get(token)
        if hit is not None:
            payload, kid, jwk = hit
            try:
                current = self.identity.resolve_own(self.identity.did, kid)
            except TokenError:
                current = None
            if current is not None and current.jwk == jwk:
                return payload
            with self._verified_lock:
                self._verified.pop(token, None)
        payload = verify_jws(token, key_resolver=self.identity.resolve_own, expected_did=self.identity.did)
        try:
            kid = str(json_b64decode(token.split(".", 1)[0].encode())["kid"])
            jwk = self.identity.resolve_own(self.identity.did, kid).jwk
        except (ValueError, KeyError, TypeError, TokenError):
            return payload  # verified, but not remembered
        with self._verified_lock:
            self._verified[token] = (payload, kid, jwk)
            while len(self._verified) > VERIFIED_MAX:
                self._verified.popitem(last=False)
        return payload

    def _claims(self, token: str, audience: str) -> dict[str, Any]:
        payload = self._payload(token)
        try:
            claims: dict[str, Any] = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise TokenError("token payload is not JSON") from None
        if claims.get("aud") != audience:
            raise TokenError(
                "not a data plane access token" if audience == "dadam-dataplane" else "not a refresh token"
            )
        if not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
            raise TokenError(
                "access token expired: refresh it or ask the consumer's connector for a fresh EDR"
                if audience == "dadam-dataplane"
                else "refresh token expired"
            )
        return claims

    def _generations(self, transfer_id: str, conn: Connection | None = None) -> tuple[int, int]:
        if self.engine is None:
            return 1, 1
        if conn is None:
            with read_only(self.engine) as own:
                return self._generations(transfer_id, own)
        row = conn.execute(
            sa.select(tokens.c.issued_gen, tokens.c.min_gen).where(tokens.c.transfer_id == transfer_id)
        ).first()
        return (1, 1) if row is None else (int(row.issued_gen), int(row.min_gen))

    def verify(self, authorization: str | None, transfer_id: str) -> dict[str, Any]:
        """The token's claims; TokenError naming the failed check (forged, expired, other transfer,
        superseded by a newer token already in use)."""
        claims = self.token_claims(authorization, transfer_id)
        if self.check_generation(claims, transfer_id):
            self.mark_in_use(claims, transfer_id)
        return claims

    def check_generation(
        self, claims: dict[str, Any], transfer_id: str, conn: Connection | None = None
    ) -> bool:
        """TokenError if the token was superseded by a newer one already in use; True when this
        token is itself newer than the oldest accepted (call :meth:`mark_in_use`, outside ``conn``)."""
        gen = int(claims.get("gen") or 1)
        _issued, min_gen = self._generations(transfer_id, conn)
        if gen < min_gen:
            raise TokenError("access token was replaced by a refreshed one that is in use")
        return gen > min_gen and self.engine is not None

    def mark_in_use(self, claims: dict[str, Any], transfer_id: str) -> None:
        """A newer token is in use: older generations stop working now."""
        assert self.engine is not None
        gen = int(claims.get("gen") or 1)
        with self.engine.begin() as conn:
            conn.execute(
                tokens.update()
                .where(tokens.c.transfer_id == transfer_id, tokens.c.min_gen < gen)
                .values(min_gen=gen, updated_at=time.time())
            )

    def token_claims(self, authorization: str | None, transfer_id: str) -> dict[str, Any]:
        """The claims of a valid access token for ``transfer_id`` (signature, audience, expiry,
        transfer); the generation is checked apart (:meth:`check_generation`)."""
        if not authorization:
            raise TokenError("no access token: send the EDR's authorization value as a bearer token")
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else authorization.strip()
        claims = self._claims(token, "dadam-dataplane")
        if claims.get("tid") != transfer_id:
            raise TokenError(f"access token is for transfer {claims.get('tid')!r}, not {transfer_id!r}")
        return claims

    def refresh(self, refresh_token: str, caller_did: str) -> dict[str, Any]:
        """A new access + refresh token pair (OAuth2 token response) for the caller's transfer."""
        if self.engine is None:
            raise TokenError("token refresh is not enabled on this data plane")
        claims = self._claims(refresh_token.strip(), "dadam-refresh")
        if claims.get("sub") != caller_did:
            raise TokenError("the refresh token was issued to another participant")
        tid = str(claims.get("tid"))
        gen = int(claims.get("gen") or 1)
        _issued, min_gen = self._generations(tid)
        if gen < min_gen:
            raise TokenError("refresh token was replaced by a newer one that is in use")
        now = time.time()
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(tokens.c.issued_gen).where(tokens.c.transfer_id == tid).with_for_update()
            ).first()
            if row is None:
                new_gen = 2
                conn.execute(tokens.insert().values(transfer_id=tid, issued_gen=2, min_gen=1, updated_at=now))
            else:
                new_gen = int(row.issued_gen) + 1
                conn.execute(
                    tokens.update()
                    .where(tokens.c.transfer_id == tid)
                    .values(issued_gen=new_gen, updated_at=now)
                )
        return {
            "access_token": self.token(tid, caller_did, gen=new_gen),
            "refresh_token": self.refresh_token(tid, caller_did, gen=new_gen),
            "token_type": "Bearer",
            "expires_in": self.ttl_seconds,
        }


def _jwt_exp(token: str) -> float | None:
    """The ``exp`` of a compact JWS we hold (the consumer cannot and need not verify its own EDR)."""
    try:
        return float(json_b64decode(token.split(".")[1].encode())["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class EdrRefresher:
    """Consumer side: hands out the EDR of a pull transfer, refreshing it shortly before it expires.

    A refresh that fails (provider down, timeout) keeps the current EDR, which stays valid until
    it expires: the answer then says ``refreshError``. The refreshed pair is stored on the transfer.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        auth_for: Any = None,
        http: Any = None,
        margin_s: float = 60.0,
        timeout_s: float = 10.0,
    ) -> None:
        import httpx

        self.engine = engine
        self.auth_for = auth_for
        self.http = http or httpx.Client(timeout=timeout_s)
        self.margin_s = margin_s

    def edr(self, transfer_id: str, *, force: bool = False) -> dict[str, Any]:
        from contracts._transfer import address_properties, transfers

        with read_only(self.engine) as conn:
            row = conn.execute(sa.select(transfers).where(transfers.c.id == transfer_id)).mappings().first()
        if row is None or row["role"] != "consumer":
            from connector.errors import NotFoundError

            raise NotFoundError(f"no consumer transfer {transfer_id!r}")
        if not row["data_address"] or row["format"] != "HttpData-PULL":
            from connector.errors import ConflictError

            raise ConflictError(f"transfer {transfer_id} has no EDR (not a started pull transfer)")
        address: dict[str, Any] = orjson.loads(row["data_address"])
        props = address_properties(address)
        expires_at = _jwt_exp(props.get("authorization", ""))
        error = None
        due = force or (expires_at is not None and expires_at - time.time() < self.margin_s)
        if due and props.get("refreshToken") and props.get("refreshEndpoint"):
            try:
                answer = self._refresh(props, row["counterparty_id"])
            except Exception as exc:  # the old EDR stays usable until it expires
                error = f"refresh failed, the current token stays valid until it expires: {exc}"
            else:
                address = self._store(transfer_id, address, answer)
                props = address_properties(address)
                expires_at = _jwt_exp(props.get("authorization", ""))
        out = {
            "transferId": transfer_id,
            "endpoint": address.get("endpoint"),
            "authType": props.get("authType", "bearer"),
            "authorization": props.get("authorization"),
            "expiresAt": expires_at,
            "refreshable": bool(props.get("refreshToken")),
        }
        if error:
            out["refreshError"] = error
        return out

    def _refresh(self, props: dict[str, str], provider: str | None) -> dict[str, Any]:
        auth = self.auth_for(props.get("refreshAudience") or provider) if self.auth_for else None
        response = self.http.post(
            props["refreshEndpoint"],
            data={"grant_type": "refresh_token", "refresh_token": props["refreshToken"]},
            **({"auth": auth} if auth is not None else {}),
        )
        if response.status_code != 200:
            raise TokenError(f"the provider answered {response.status_code}: {response.text[:200]}")
        answer: dict[str, Any] = response.json()
        if not answer.get("access_token") or not answer.get("refresh_token"):
            raise TokenError("the provider's token answer has no access_token / refresh_token")
        return answer

    def _store(self, transfer_id: str, address: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        from contracts._transfer import transfers

        names = {
            "authorization": answer["access_token"],
            REFRESH_TOKEN: answer["refresh_token"],
            "refreshToken": answer["refresh_token"],
            EXPIRES_IN: str(answer.get("expires_in", "")),
        }
        props = []
        for prop in address.get("endpointProperties") or []:
            name = prop.get("name") if isinstance(prop, dict) else None
            props.append({**prop, "value": names[name]} if name in names else prop)
        updated = {**address, "endpointProperties": props}
        with self.engine.begin() as conn:
            conn.execute(
                transfers.update()
                .where(transfers.c.id == transfer_id)
                .values(data_address=orjson.dumps(updated).decode(), updated_at=time.time())
            )
        return updated
