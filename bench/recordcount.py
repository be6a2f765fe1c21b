"""Record counting benchmark: the C counter and the pure-Python counter of the data plane.

Usage: ``.venv/bin/python bench/recordcount.py [--size-mb 50] [--repeat 3]``. Builds, in memory,
about ``--size-mb`` MB of each kind from the PACT PCF sample (``catalog/sample_data``):

* JSON: a top-level array of PCF records (``json.dumps(indent=2)``, as the sample is written);
* NDJSON: the same records, one compact line each;
* CSV: a header and one row per record, with quoted fields holding commas, doubled quotes and
  newlines;

then feeds each in the data plane's 256 KiB chunks to ``RecordCounter`` with
``implementation="c"`` and ``"python"`` (best of ``--repeat`` runs each), checks both count the
records that were written, and reports MB/s against a floor measured in the same run: one
``bytes.count(b"\\n")`` pass over the same chunks (the old NDJSON/CSV counting, about the least a
pass over every byte costs from Python). The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

# bench/catalog.py is named like the catalog package: keep this folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from connector.dataplane._records import C_COUNTER, RecordCounter  # noqa: E402

CHUNK = 256 * 1024
SAMPLE = Path(__file__).resolve().parent.parent / "catalog" / "sample_data" / "pcf-brake-disc-pact-v3.json"
MEDIA = {"json": "application/json", "ndjson": "application/x-ndjson", "csv": "text/csv"}


def records(size: int, indent: int | None) -> list[dict[str, Any]]:
    """PCF records, each with its own id, until their JSON (with ``indent``) passes ``size`` bytes."""
    base = json.loads(SAMPLE.read_text())["data"][0]
    one = len(json.dumps(base, indent=indent))
    out = []
    for i in range(size // one + 1):
        rec = dict(base)
        rec["id"] = f"{i:08x}-8a3b-4c5d-9e7f-0a1b2c3d4e5f"
        rec["comment"] = f'Batch {i}: "cradle-to-gate", line {i % 7}\nprimary data, Q3/2026'
        out.append(rec)
    return out


def documents(size: int) -> dict[str, tuple[bytes, int]]:
    """Each kind's document and the number of records written into it."""
    recs = records(size, indent=2)
    docs: dict[str, tuple[bytes, int]] = {}
    docs["json"] = (json.dumps(recs, indent=2).encode(), len(recs))
    recs = records(size, indent=None)
    docs["ndjson"] = (b"".join(json.dumps(r).encode() + b"\n" for r in recs), len(recs))
    rows = io.StringIO()
    w = csv.writer(rows, lineterminator="\r\n")
    w.writerow(["id", "company", "product", "comment", "pcf", "unit"])
    while rows.tell() < size:  # CSV rows are shorter than the JSON records: write until size
        for r in recs:
            w.writerow([r["id"], r["companyName"], r["productDescription"], r["comment"],
                        r["pcf"]["pcfExcludingBiogenicUptake"], r["pcf"]["declaredUnitOfMeasurement"]])  # fmt: skip
            if rows.tell() >= size:
                break
    text = rows.getvalue()
    docs["csv"] = (text.encode(), sum(1 for _ in csv.reader(io.StringIO(text, newline=""))) - 1)
    return docs


def best_seconds(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if C_COUNTER is None:
        sys.exit("the C counter is not built (make install) or DADAM_NO_CEXT is set")
    figures: dict[str, Any] = {"size_mb": args.size_mb, "chunk_kib": CHUNK // 1024}
    for kind, (doc, expected) in documents(int(args.size_mb * 1e6)).items():
        chunks = [doc[i : i + CHUNK] for i in range(0, len(doc), CHUNK)]
        mb = len(doc) / 1e6

        def floor(chunks: list[bytes] = chunks) -> int:
            return sum(c.count(b"\n") for c in chunks)

        def counted(
            impl: Literal["c", "python"], kind: str = kind, chunks: list[bytes] = chunks
        ) -> Callable[[], int]:
            def run() -> int:
                counter = RecordCounter(MEDIA[kind], implementation=impl)
                for c in chunks:
                    counter.feed(c)
                return counter.total()

            return run

        floor_s, _ = best_seconds(floor, args.repeat)
        c_s, c_total = best_seconds(counted("c"), args.repeat)
        py_s, py_total = best_seconds(counted("python"), max(1, args.repeat - 1))
        if c_total != expected or py_total != expected:
            sys.exit(f"{kind}: counted C {c_total}, Python {py_total}, written {expected}")
        row = {
            "mb": round(mb, 1),
            "records": expected,
            "floor_mb_s": round(mb / floor_s),
            "c_mb_s": round(mb / c_s),
            "python_mb_s": round(mb / py_s, 1),
            "c_vs_floor": round(floor_s / c_s, 2),
            "c_vs_python": round(py_s / c_s, 1),
        }
        figures[kind] = row
        print(
            f"{kind:6} {row['mb']:6.1f} MB, {expected} records: C {row['c_mb_s']} MB/s, Python "
            f"{row['python_mb_s']} MB/s, floor (bytes.count) {row['floor_mb_s']} MB/s; "
            f"C/floor {row['c_vs_floor']}, C/Python {row['c_vs_python']}"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
