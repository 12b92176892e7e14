"""The first search (and answer) after a write: in-memory indexes updated by what changed vs built anew.

    python benchmarks/index_refresh.py [--chunks 100000] [--rounds 15]

Every write bumps the store's generation, and the next search brings the dense, sentence and BM25 indexes up to
date. Each round writes one small new document, then times the next request. The baseline, measured in the same
run on the same store, drops the indexes before the request, which is what every write cost before the indexes
were updated (a full read of the file). Two stores:

- COVID-QA (a copy of `archivist eval answers`' cached store, 98 papers, 3.6k chunks, 15k sentence vectors;
  skipped when absent): the document is ingested through the real pipeline and the request is an answer;
- synthetic (the 100k-chunk store of `benchmarks/search.py`, no sentence vectors): the document is written with
  random vectors and the request is a hybrid search.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import ROOT, console, percentiles, print_table, write_result
from search import build_synthetic, load_queries

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.store.filters import Filters
from archivist.store.records import DocumentWrite
from archivist.types import Block, Chunk, Document, sha256_hex

QUESTION = "What is the incubation period of COVID-19?"


def drop_indexes(app: Archivist) -> None:
    """Forget the store's in-memory indexes: the next request builds them from the file, as every write used to."""
    store = app.store
    store._dense = store._sentences = store._bm25 = store._manifest = None  # type: ignore[attr-defined]


def rounds(app: Archivist, write: Callable[[int], None], request: Callable[[], object], n: int) -> dict[str, dict]:
    """Return latency percentiles of the request with no write, after a write, and after a write with a full build.

    The updated rounds run back to back, as writes come during an ingestion; the full builds after them.
    """
    for _ in range(3):
        request()
    samples: dict[str, list[float]] = {}
    written = iter(range(10**9))
    for label in ("no write", "after a write (updated)", "after a write (full build)"):
        samples[label] = []
        for _ in range(n):
            if label != "no write":
                write(next(written))
            if label.endswith("(full build)"):
                drop_indexes(app)
            t0 = time.perf_counter()
            request()
            samples[label].append((time.perf_counter() - t0) * 1000)
    return {label: percentiles(s) for label, s in samples.items()}


def covidqa(n: int) -> dict[str, dict] | None:
    """Return the answer latencies on a copy of the COVID-QA eval store (None when it is not cached)."""
    cached = ROOT / ".archivist" / "evals" / "covidqa-minilm.db"
    if not cached.exists():
        console.print(f"[yellow]skipped COVID-QA: no {cached} (run `archivist eval answers` on COVID-QA first)[/]")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "covidqa.db"
        shutil.copy(cached, copy)
        docs = Path(tmp) / "new"
        docs.mkdir()
        with Archivist.from_settings(load_settings(store=f"sqlite:///{copy}")) as app:
            answerer = app.answerer()

            def write(i: int) -> None:
                path = docs / f"note-{i}.md"
                path.write_text(f"# Note {i}\n\nA short note number {i}. It says nothing about any virus at all.\n")
                app.ingest([path])

            return rounds(app, write, lambda: answerer.answer(QUESTION), n)


def synthetic(n_chunks: int, n: int) -> dict[str, dict]:
    """Return the hybrid search latencies on the synthetic store (built first if missing)."""
    path = ROOT / ".archivist" / "bench-synthetic.db"
    settings = load_settings(store=f"sqlite:///{path}")
    marker = path.with_suffix(f".{n_chunks}.done")
    with Archivist.from_settings(settings) as app:
        model, dim = app.embedder.model_id, app.embedder.dim
    if not marker.exists():
        build_synthetic(path, n_chunks, model, dim)
        marker.touch()
    queries = load_queries(50)
    rng = np.random.default_rng(11)
    with Archivist.from_settings(settings) as app:

        def write(i: int) -> None:
            text = f"refresh benchmark document {i} " * 20
            doc = Document(f"refresh/{i}.txt", f"Refresh {i}", text, "text/plain", [Block("paragraph", 0, len(text))])
            chunk = Chunk(doc.id, 0, text, 0, len(text), (), 100)
            h = sha256_hex(chunk.embedding_text(doc.title))
            vector = rng.normal(size=dim).astype(np.float32)
            app.store.write_documents(
                model, [DocumentWrite(doc, [chunk], [h], "synthetic")], {h: vector / np.linalg.norm(vector)}
            )

        count = iter(range(10**9))
        out = rounds(app, write, lambda: app.search(queries[next(count) % len(queries)], k=10), n)
        # Leave the shared synthetic store as `benchmarks/search.py` expects it.
        for doc in app.store.list_documents(limit=10_000, filters=Filters.parse(["source=refresh/*"])):
            app.store.delete_document(doc.id)
    return out


def main() -> None:
    """Measure both stores, print one table and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    if (found := covidqa(args.rounds)) is not None:
        results["covidqa answer"] = found
    results[f"synthetic {args.chunks:,} search"] = synthetic(args.chunks, args.rounds)
    rows = []
    for store, by_label in results.items():
        base = by_label["after a write (full build)"]["p50_ms"]
        for label, p in by_label.items():
            ratio = f"{base / p['p50_ms']:.1f}x" if p["p50_ms"] else "—"
            rows.append(
                {
                    "store, request": store,
                    "when": label,
                    "p50 ms": p["p50_ms"],
                    "p95 ms": p["p95_ms"],
                    "full build / this": ratio,
                }
            )
    print_table("first request after a write", rows)
    write_result("index_refresh", {"rounds": args.rounds, "results": results})


if __name__ == "__main__":
    main()
