"""The BM25 impact index on PostgreSQL (store/postgres/impacts.py): searches that read each term's best postings
first return exactly what reading every posting returns (ids, order, ties by id, scores), through many rounds of
reading deeper, under filters, and after the mean chunk length drifted from the index's; the index is built at the
configured size, rebuilt on drift by a write or by `migrate`, and replaced, not added to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import numpy as np
import psycopg
import pytest

from archivist.store import open_store
from archivist.store.filters import Filters
from archivist.store.postgres import impacts
from archivist.store.postgres import search as pg_search
from archivist.store.protocols import Store
from archivist.store.records import DocumentWrite
from archivist.types import Chunk, Document, sha256_hex

DIM = 8
MODEL = "m"
WORDS = [f"w{i}" for i in range(120)]


def _corpus(
    docs: int, chunks: int, lengths: tuple[int, int], seed: int, prefix: str
) -> tuple[list[DocumentWrite], dict[str, np.ndarray]]:
    """Return writes of `docs` documents of `chunks` chunks each, words drawn Zipf-like (common words in most
    chunks, many equal term counts and lengths: ties), half the documents with tenant=a, half with tenant=b."""
    rng = np.random.default_rng(seed)
    p = 1 / (np.arange(len(WORDS)) + 3.0)
    p /= p.sum()
    writes, vectors = [], {}
    for d in range(docs):
        texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(*lengths)), p=p)) for _ in range(chunks)]
        text = "\n\n".join(texts)
        meta = {"tenant": "a" if d % 2 else "b"}
        doc = Document(f"{prefix}{d}.txt", "", text, "text/plain", [], meta)
        parts, pos = [], 0
        for i, t in enumerate(texts):
            parts.append(Chunk(doc.id, i, t, pos, pos + len(t), (), 3))
            pos += len(t) + 2
        hashes = [sha256_hex(c.embedding_text(doc.title)) for c in parts]
        for h in hashes:
            v = rng.normal(size=DIM).astype(np.float32)
            vectors[h] = v / np.linalg.norm(v)
        writes.append(DocumentWrite(doc, parts, hashes, "c1"))
    return writes, vectors


def _queries(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    # common and rare words together: the common ones' lists are read in part, the rare ones' whole
    return [" ".join(rng.choice(WORDS[: 10 + 10 * (i % 11)], size=1 + i % 4, replace=False)) for i in range(n)]


@pytest.fixture
def shallow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read 4 postings of each term first and twice as deep each round: many rounds on a small corpus."""
    monkeypatch.setattr(pg_search, "IMPACT_MIN_DEPTH", 4)
    monkeypatch.setattr(pg_search, "IMPACT_DEPTH_PER_ROW", 1)
    monkeypatch.setattr(pg_search, "IMPACT_DEEPER", 2)


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    # exact_dense_below=0: a filtered search takes the impact path too, not the few-chunks path
    with closing(open_store(f"{postgres_url}&bm25_impact_from=500&exact_dense_below=0")) as opened:
        yield opened


def _index_names(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'chunk_terms_impact_%'")
        return sorted(str(r[0]) for r in rows)


def _every_posting(store: Store, monkeypatch: pytest.MonkeyPatch, query: str, k: int, filters: Filters) -> Any:
    """Return the search as it is without the impact index (every posting of the query's terms read)."""
    with monkeypatch.context() as m:
        m.setattr(impacts, "reference_length", lambda conn: 0)
        return store.bm25_search(query, k, filters)


def _assert_same(store: Store, monkeypatch: pytest.MonkeyPatch, queries: list[str]) -> int:
    """Assert the impact search equals the search over every posting; return how many searches were compared."""
    compared = 0
    for filters in (Filters(), Filters.parse(["tenant=a"])):
        for query in queries:
            for k in (1, 7, 60):
                got = store.bm25_search(query, k, filters)
                want = _every_posting(store, monkeypatch, query, k, filters)
                assert [c for c, _ in got] == [c for c, _ in want], (query, k, filters)
                assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-9), (query, k)
                compared += 1
    return compared


def test_impact_search_equals_reading_every_posting(
    store: Store, postgres_url: str, shallow: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes, vectors = _corpus(40, 20, (4, 40), seed=1, prefix="d")
    store.write_documents(MODEL, writes[:20], vectors)
    assert _index_names(postgres_url) == []  # 400 chunks: below bm25_impact_from
    store.write_documents(MODEL, writes[20:], vectors)
    names = _index_names(postgres_url)
    assert len(names) == 1, names  # 800 chunks: the write that reached 500 built it
    with psycopg.connect(postgres_url) as conn:
        assert impacts.reference_length(conn) > 0
    searched = _assert_same(store, monkeypatch, _queries(3, 24))
    assert searched == 2 * 24 * 3


def test_impact_search_stays_exact_when_the_mean_length_drifts(
    store: Store, postgres_url: str, shallow: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes, vectors = _corpus(30, 20, (4, 20), seed=2, prefix="short")
    store.write_documents(MODEL, writes, vectors)
    before = _index_names(postgres_url)
    # Longer chunks: the mean length moves past the index's reference, which is kept (no rebuild), so bounds are
    # widened by avgdl / reference and the index order is no longer the scores' order.
    monkeypatch.setattr(impacts, "REBUILD_DRIFT", 100.0)
    longer, more = _corpus(20, 20, (40, 90), seed=3, prefix="long")
    store.write_documents(MODEL, longer, more)
    assert _index_names(postgres_url) == before
    with psycopg.connect(postgres_url) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        chunks, length = int(meta["bm25_chunks"]), int(meta["bm25_chunk_length"])
        assert length / chunks * impacts.PER_TERM > 1.5 * impacts.reference_length(conn)
    _assert_same(store, monkeypatch, _queries(4, 20))
    # A shorter mean than the reference: the index over-rates long chunks instead; still exact.
    shorter, few = _corpus(60, 20, (1, 4), seed=5, prefix="tiny")
    store.write_documents(MODEL, shorter, few)
    _assert_same(store, monkeypatch, _queries(6, 20))


def test_a_drifted_index_is_rebuilt_by_a_write_or_by_migrate(postgres_url: str) -> None:
    url = f"{postgres_url}&bm25_impact_from=200"
    with closing(open_store(url)) as store:
        writes, vectors = _corpus(12, 20, (4, 10), seed=7, prefix="a")
        store.write_documents(MODEL, writes, vectors)
        (first,) = _index_names(postgres_url)
        longer, more = _corpus(12, 20, (30, 60), seed=8, prefix="b")
        store.write_documents(MODEL, longer, more)  # the mean length more than doubles: rebuilt, old one dropped
        (second,) = _index_names(postgres_url)
        assert second != first
    # A store past the size a write rebuilds at: the write leaves it drifted, `migrate` rebuilds it.
    with closing(open_store(url)) as store:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(impacts, "INLINE_REBUILD_UNTIL", 0)
            again, vecs = _corpus(24, 20, (100, 160), seed=9, prefix="c")
            store.write_documents(MODEL, again, vecs)
            assert _index_names(postgres_url) == [second]
        # `archivist migrate` (a process of its own): no schema change, and the index is rebuilt all the same
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")} | {"ARCHIVIST_STORE": url}
        proc = subprocess.run(
            [sys.executable, "-m", "archivist.cli", "migrate", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["schema_version"] == json.loads(proc.stdout)["expected_schema_version"]
        (third,) = _index_names(postgres_url)
        assert third != second
        assert store.bm25_search("w1 w2", 5, Filters())
