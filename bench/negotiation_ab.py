"""A/B of the negotiation machinery: this checkout against another one, interleaved.

``bench/negotiation.py`` run twice (old code, new code) compares two runs minutes apart; on a
shared 2-core machine their figures move by 10-30 % between runs, more than most changes do.
Here two pairs of connectors (``--stack node`` or ``serve``, as ``bench/negotiation.py``
starts them) run at the same time, one pair from each checkout, and load alternates between
them in short batches, so slow and fast moments of the machine fall on both alike. Per batch:
negotiations per second (``--concurrency`` in flight), and CPU ms per negotiation of the
provider, the consumer and (PostgreSQL) the server. The median of each over the rounds is
compared as new / old.

Run: ``.venv/bin/python bench/negotiation_ab.py OLD_CHECKOUT`` where OLD_CHECKOUT is a
directory with the other code, e.g. ``git worktree add /tmp/old HEAD~1``. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import negotiation as nb  # the benchmark next to this file


def batch(
    pair: nb.NodePair | nb.ServePair, fin: nb.Finalized, tag: str, n: int, concurrency: int, *, pg: bool
) -> dict[str, float]:
    """``n`` negotiations with ``concurrency`` in flight; rate and CPU ms per negotiation."""

    def pg_cpu() -> float | None:
        return nb.postgres_cpu_s() if pg else None

    cpu0 = (nb.cpu_s(pair.provider_pid), nb.cpu_s(pair.consumer_pid), pg_cpu())
    m0 = nb.machine_busy()
    t0 = time.perf_counter()
    ids = nb.load(pair, fin, f"{tag}-", n, concurrency)
    elapsed = time.perf_counter() - t0
    cpu1 = (nb.cpu_s(pair.provider_pid), nb.cpu_s(pair.consumer_pid), pg_cpu())
    m1 = nb.machine_busy()
    finalized = sum(1 for nid in ids if fin.done.get(nid, (0, ""))[1] == "FINALIZED")
    if finalized != n:
        raise RuntimeError(f"{n - finalized} of {n} negotiations did not finalize")
    res = {"per_s": n / elapsed}
    for key, a, b in zip(("provider_ms", "consumer_ms", "postgres_ms"), cpu0, cpu1, strict=True):
        if a is not None and b is not None:
            res[key] = (b - a) / n * 1000
    if m0 is not None and m1 is not None:  # the whole machine's, the idle pair's included
        res["switches"] = (m1[3] - m0[3]) / n
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path, help="checkout with the code to compare against")
    ap.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    ap.add_argument("--stack", choices=("node", "serve"), default="node")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batch", type=int, default=300, help="negotiations per batch")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    old = args.old.resolve()
    if not (old / "contracts" / "_node.py").is_file():
        ap.error(f"{old} is not a dadam checkout (no contracts/_node.py)")

    pg = args.backend == "postgres"
    pairs: dict[str, nb.NodePair | nb.ServePair] = {}
    make_pair = nb.ServePair if args.stack == "serve" else nb.NodePair
    here = nb.ROOT
    rows: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with nb.databases("dadam-ab") as make, tempfile.TemporaryDirectory() as d:
        try:  # the pairs stop before their databases are dropped
            for label, root in (("old", old), ("new", here)):
                nb.ROOT = root  # the pairs run the code of this directory
                (Path(d) / label).mkdir()
                pairs[label] = make_pair(functools.partial(make, args.backend), Path(d) / label)
            nb.ROOT = here
            fins = {k: nb.Finalized(p.mgmt, p.headers) for k, p in pairs.items()}
            for label, pair in pairs.items():  # warm-up: connections, prepared statements, caches
                batch(pair, fins[label], f"warm-{label}", 100, args.concurrency, pg=pg)
            for r in range(args.rounds):
                order = ("old", "new") if r % 2 == 0 else ("new", "old")
                for label in order:
                    res = batch(
                        pairs[label], fins[label], f"r{r}-{label}", args.batch, args.concurrency, pg=pg
                    )
                    rows[label].append(res)
                    shown = " ".join(f"{k} {v:.2f}" for k, v in res.items())
                    print(f"round {r + 1}/{args.rounds} {label}: {shown}", flush=True)
            for f in fins.values():
                f.stop = True
        finally:
            nb.ROOT = here
            for pair in pairs.values():
                pair.stop()

    summary: dict[str, Any] = {"bench": "negotiation_ab", "stack": args.stack, "backend": args.backend,
                               "rounds": args.rounds, "batch": args.batch,
                               "concurrency": args.concurrency}  # fmt: skip
    for key in rows["old"][0]:
        a = statistics.median(x[key] for x in rows["old"])
        b = statistics.median(x[key] for x in rows["new"])
        summary[f"old_{key}"] = round(a, 2)
        summary[f"new_{key}"] = round(b, 2)
        summary[f"new_over_old_{key}"] = round(b / a, 3) if a else None
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
