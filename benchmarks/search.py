"""Hybrid search latency (query embedding included): SciFact, and a synthetic store of 100,000 chunks.

    python benchmarks/search.py [--chunks 100000] [--queries 300] [--scifact-store PATH]

SciFact uses the store `benchmarks/ingest.py` leaves behind (run it first; skipped otherwise). The
synthetic store holds random Zipf-distributed text with random unit vectors (embedding 100k chunks
would take over an hour here); queries are SciFact's real questions, embedded by the real model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import ROOT, console, datasets_dir, percentiles, print_table, write_result

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.registry import embedder_entry
from archivist.store.filters import Filters
from archivist.store.memindex import DenseIndex
from archivist.store.records import DocumentWrite
from archivist.types import Block, Chunk, Document, sha256_hex


def load_queries(n: int) -> list[str]:
    """Return up to n SciFact test queries."""
    path = datasets_dir() / "scifact" / "queries.jsonl"
    with path.open() as f:
        return [json.loads(line)["text"] for line in f][:n]


def build_synthetic(path: Path, n_chunks: int, model: str, dim: int, seed: int = 7) -> None:
    """Create a store of n_chunks random chunks (Zipf vocabulary, random unit vectors)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    # Real words so queries hit realistic posting lists: the SciFact vocabulary, Zipf-weighted.
    words: dict[str, int] = {}
    with (datasets_dir() / "scifact" / "corpus.jsonl").open() as f:
        for line in f:
            for w in json.loads(line)["text"].lower().split():
                words[w] = words.get(w, 0) + 1
    vocab = np.array(sorted(words, key=words.__getitem__, reverse=True)[:30000])
    probs = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    probs /= probs.sum()
    app = Archivist.from_settings(load_settings(store=f"sqlite:///{path}"))
    per_doc, batch = 4, 250
    t0 = time.perf_counter()
    for start in range(0, n_chunks, per_doc * batch):
        writes, vectors = [], {}
        for d in range(start // per_doc, min((start + per_doc * batch) // per_doc, n_chunks // per_doc)):
            paras = [" ".join(rng.choice(vocab, size=120, p=probs)) for _ in range(per_doc)]
            text = "\n\n".join(paras)
            blocks, pos = [], 0
            for p in paras:
                blocks.append(Block("paragraph", pos, pos + len(p)))
                pos += len(p) + 2
            doc = Document(f"synthetic/{d}.txt", f"Synthetic {d}", text, "text/plain", blocks, {"lang": "en"})
            chunks = [Chunk(doc.id, i, text[b.start : b.end], b.start, b.end, (), 150) for i, b in enumerate(blocks)]
            hashes = [sha256_hex(c.embedding_text(doc.title)) for c in chunks]
            vecs = rng.normal(size=(len(chunks), dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            vectors.update(zip(hashes, vecs, strict=True))
            writes.append(DocumentWrite(doc, chunks, hashes, "synthetic"))
        app.store.write_documents(model, writes, vectors)
    console.print(f"built {n_chunks:,} synthetic chunks in {time.perf_counter() - t0:.0f}s")
    app.close()


def measure(store_url: str, queries: list[str], filters: Filters = Filters()) -> dict[str, dict[str, float]]:
    """Return latency percentiles per mode over the queries (after one warm-up pass)."""
    app = Archivist.from_settings(load_settings(store=store_url))
    out = {}
    for q in queries[:20]:  # warm: model session, page cache, dense matrix load
        app.search(q, k=10, filters=filters)
    for mode in ("hybrid", "dense", "bm25"):
        samples = []
        for q in queries:
            t0 = time.perf_counter()
            app.search(q, k=10, filters=filters, mode=mode)  # type: ignore[arg-type]
            samples.append((time.perf_counter() - t0) * 1000)
        out[mode] = percentiles(samples)
    app.close()
    return out


def quantized_recall(store_url: str, queries: list[str]) -> dict[str, float]:
    """Return recall@10/@100 of the sign-code dense path against the exact scan, on real vectors."""
    app = Archivist.from_settings(load_settings(store=store_url))
    store = app.store
    exact = store._dense_index(app.embedder.model_id)  # type: ignore[attr-defined]
    approx = DenseIndex(exact.chunk_ids, exact.doc_rows, exact.matrix)
    approx.quantize()
    r10, r100 = [], []
    for q in queries:
        v = app.embedder.embed_query(q)
        a = [c for c, _ in approx.search(v, 100, None)]
        e = (
            [c for c, _ in exact.search(v, 100, None)]
            if exact.codes is None
            else [c for c, _ in DenseIndex(exact.chunk_ids, exact.doc_rows, exact.matrix).search(v, 100, None)]
        )
        r10.append(len(set(a[:10]) & set(e[:10])) / 10)
        r100.append(len(set(a) & set(e)) / max(len(e), 1))
    app.close()
    return {"recall@10": round(float(np.mean(r10)), 4), "recall@100": round(float(np.mean(r100)), 4)}


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--scifact-store", type=Path, default=ROOT / ".archivist/bench-scifact.db")
    parser.add_argument("--synthetic-store", type=Path, default=ROOT / ".archivist/bench-synthetic.db")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the synthetic store even if present")
    args = parser.parse_args()
    queries = load_queries(args.queries)
    results: dict[str, object] = {}
    rows = []

    if args.scifact_store.exists():
        r = measure(f"sqlite:///{args.scifact_store}", queries)
        results["scifact"] = r
        rows += [{"store": "scifact", "mode": m, **v} for m, v in r.items()]
        results["scifact_sign_code_recall"] = quantized_recall(f"sqlite:///{args.scifact_store}", queries)
        console.print(f"sign-code prefilter vs exact on SciFact vectors: {results['scifact_sign_code_recall']}")
    else:
        console.print(f"[yellow]no {args.scifact_store}: run benchmarks/ingest.py first for the SciFact figures[/]")

    settings = load_settings()
    embedder = embedder_entry(settings.embedder).build(settings)
    model, dim = embedder.model_id, embedder.dim
    marker = args.synthetic_store.with_suffix(f".{args.chunks}.done")
    if args.rebuild or not marker.exists():
        marker.unlink(missing_ok=True)
        build_synthetic(args.synthetic_store, args.chunks, model, dim)
        marker.touch()
    url = f"sqlite:///{args.synthetic_store}"
    r = measure(url, queries)
    results[f"synthetic_{args.chunks}"] = r
    rows += [{"store": f"synthetic {args.chunks:,}", "mode": m, **v} for m, v in r.items()]
    r = measure(url, queries, Filters.parse(["source=synthetic/1*"]))
    results[f"synthetic_{args.chunks}_filtered"] = r
    rows += [{"store": f"synthetic {args.chunks:,} +filter", "mode": m, **v} for m, v in r.items()]

    print_table("search latency (ms, k=10, query embedding included)", rows)
    write_result("search", {"queries": len(queries), "results": results})


if __name__ == "__main__":
    main()
