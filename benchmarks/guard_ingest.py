"""Ingest throughput with injection scanning on vs off, in one run, on the same SciFact documents.

    python benchmarks/guard_ingest.py [--limit N] [--rounds R]

Each round ingests the same documents into two fresh stores, one with `guard_scan_ingest` off and one with it on,
in alternating order (so a warming or a neighbour's load does not favour one side); the fastest round of each is
reported. On shared cores the two wall clocks swing by more than scanning costs, so the run also times the scanning
step itself inside each ingest with scanning on: its share of that same ingest is the slowdown measured under one
load. Scanning reuses the chunk and sentence vectors the pipeline computed (bundled MiniLM), so its cost is the
detector's features and a dot product per unit. Writes benchmarks/results/guard_ingest.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import console, datasets_dir, print_table, write_result

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.ingest.pipeline import IngestPipeline
from archivist.store import open_store

#: seconds spent in the scanning step (`IngestPipeline._scan`) since the last reset
_SCAN_SECONDS = [0.0]


def _timed_scan() -> None:
    """Time every call of the pipeline's scanning step (the benchmark's own instrument, the code is unchanged)."""
    scan = IngestPipeline._scan

    def timed(self: IngestPipeline, *args: Any) -> None:
        t0 = time.perf_counter()
        scan(self, *args)
        _SCAN_SECONDS[0] += time.perf_counter() - t0

    IngestPipeline._scan = timed  # type: ignore[method-assign]


def _ingest(corpus: Path, store: Path, embedder: MiniLMEmbedder, *, scan: bool) -> tuple[float, int, int, float]:
    """Return the seconds an ingest took, its chunks, how many were flagged and the seconds spent scanning."""
    url = f"sqlite:///{store}"
    with Archivist(load_settings(store=url, guard_scan_ingest=scan), open_store(url), embedder) as app:
        if scan:
            app.injection_detector()  # loaded once per process in a server: not part of an ingest's cost
        _SCAN_SECONDS[0] = 0.0
        t0 = time.perf_counter()
        report = app.ingest([corpus])
        seconds = time.perf_counter() - t0
        flagged = len(app.store.flagged_chunks(None, 10**6))
    return seconds, report.chunks_written, flagged, _SCAN_SECONDS[0]


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=500, help="the first N SciFact documents (default 500)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    _timed_scan()
    embedder = MiniLMEmbedder()
    embedder.embed(["warm up the session"])
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        with (datasets_dir() / "scifact" / "corpus.jsonl").open() as src:
            corpus.write_text("".join(line for _, line in zip(range(args.limit), src, strict=False)))
        best: dict[bool, tuple[float, int, int, float]] = {}
        shares: list[float] = []
        for r in range(args.rounds):
            for scan in (False, True) if r % 2 == 0 else (True, False):
                result = _ingest(corpus, Path(tmp) / f"r{r}-{scan}.db", embedder, scan=scan)
                console.print(f"round {r + 1}, scanning {'on' if scan else 'off'}: {result[0]:.1f} s")
                if scan:
                    shares.append(result[3] / (result[0] - result[3]))
                if scan not in best or result[0] < best[scan][0]:
                    best[scan] = result
    off_s, chunks, _, _ = best[False]
    on_s, _, flagged, scan_s = best[True]
    slowdown = on_s / off_s - 1
    share = statistics.median(shares)
    rows = [
        {"scanning": "off", "seconds": round(off_s, 2), "chunks/s": chunks / off_s, "scan s": "-", "flagged": "-"},
        {
            "scanning": "on",
            "seconds": round(on_s, 2),
            "chunks/s": chunks / on_s,
            "scan s": round(scan_s, 2),
            "flagged": flagged,
        },
    ]
    title = f"ingest of {args.limit} SciFact documents ({chunks} chunks): wall clock {slowdown:+.1%}"
    print_table(f"{title}, scanning step {share:+.1%} of the rest of the same ingest (median)", rows)
    write_result(
        "guard_ingest",
        {
            "documents": args.limit,
            "chunks": chunks,
            "rounds": args.rounds,
            "seconds_off": round(off_s, 2),
            "seconds_on": round(on_s, 2),
            "chunks_per_s_off": round(chunks / off_s, 1),
            "chunks_per_s_on": round(chunks / on_s, 1),
            "slowdown_wall_clock": round(slowdown, 4),
            "scan_seconds": round(scan_s, 2),
            "slowdown_scan_share_median": round(share, 4),
            "scan_shares": [round(x, 4) for x in shares],
            "flagged": flagged,
        },
    )


if __name__ == "__main__":
    main()
