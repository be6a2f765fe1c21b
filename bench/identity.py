"""Identity benchmark: DCP self-issued token issue and verify rates (warm DID cache, memory replay store).

Usage: ``.venv/bin/python bench/identity.py [--seconds 2]``. Prints one line per figure; the last
line is one JSON object. The floor is a bare ``hashlib.sha256`` of the token in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import tempfile
import time
from pathlib import Path

from connector.identity import Identity, MemoryReplayStore, StaticDidResolver, TokenVerifier, canonical_json

AUD = "did:web:provider.example.com"


def rate(fn: object, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()  # type: ignore[operator]
        n += 1
    return n / (time.perf_counter() - start)


async def verify_rate(verifier: TokenVerifier, tokens: list[str]) -> float:
    start = time.perf_counter()
    for t in tokens:
        await verifier.verify(t)
    return len(tokens) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for alg in ("ES256", "Ed25519"):
            ident = Identity.load_or_create("did:web:consumer.example.com", Path(tmp) / alg, alg)  # type: ignore[arg-type]
            issue = rate(lambda i=ident: i.issue_token(AUD), args.seconds)
            n = max(1000, int(issue * args.seconds / 2))
            tokens = [ident.issue_token(AUD) for _ in range(n)]
            verifier = TokenVerifier(
                StaticDidResolver({ident.did: ident.did_document()}), AUD, MemoryReplayStore()
            )
            verify = asyncio.run(verify_rate(verifier, tokens))
            payload = canonical_json({"agreement": "x" * 1500, "n": 1})
            sign = rate(lambda i=ident, p=payload: i.sign_jws(p, detached=True), args.seconds)
            figures[f"{alg}_token_issue_per_s"] = round(issue)
            figures[f"{alg}_token_verify_per_s"] = round(verify)
            figures[f"{alg}_jws_sign_per_s"] = round(sign)
            print(
                f"{alg}: issue {issue:,.0f}/s, verify (all DCP checks) {verify:,.0f}/s, JWS sign {sign:,.0f}/s"
            )
        token = tokens[0].encode()
        floor = rate(lambda: hashlib.sha256(token).digest(), args.seconds)
        figures["floor_sha256_per_s"] = round(floor)
        print(f"floor: sha256 of a token {floor:,.0f}/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
