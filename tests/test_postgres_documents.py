"""Documents, chunks and search on the PostgreSQL store (a real server, tests/pg_server.py): the backend-neutral
contract suites unchanged, scores equal to the SQLite store's, filtered HNSW search that still returns k rows, and
the CLI ingesting and searching a postgresql:// store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from archivist.store import open_store
from archivist.store.filters import Filters
from archivist.store.protocols import Store
from archivist.store.records import DocumentWrite
from archivist.testing.store import DocumentStoreTests, GuardStoreTests, SearchIndexTests, StoreFactory
from archivist.types import ArchivistError, Chunk, Document, sha256_hex


class TestPostgresDocuments(DocumentStoreTests, SearchIndexTests, GuardStoreTests):
    """The document store's, search index's and guard store's contract, unchanged, on a fresh database per test."""

    @pytest.fixture
    def make_store(self, postgres_url: str) -> Iterator[StoreFactory]:
        with ExitStack() as opened:
            yield lambda: opened.enter_context(closing(open_store(postgres_url)))


DIM = 16
MODEL = "m"


def _writes(
    docs: dict[str, list[str]], *, collection: str = "default", seed: int = 0
) -> tuple[list[DocumentWrite], dict[str, np.ndarray]]:
    """Return writes of documents (one chunk per paragraph) and seeded random unit vectors for their chunks."""
    rng = np.random.default_rng(seed)
    writes, vectors = [], {}
    for source, paragraphs in docs.items():
        text = "\n\n".join(paragraphs)
        doc = Document(source, source.upper(), text, "text/plain", [], {"n": len(paragraphs)}, collection=collection)
        chunks, pos = [], 0
        for i, p in enumerate(paragraphs):
            chunks.append(Chunk(doc.id, i, p, pos, pos + len(p), (), 3))
            pos += len(p) + 2
        hashes = [sha256_hex(c.embedding_text(doc.title)) for c in chunks]
        for h in hashes:
            v = rng.normal(size=DIM).astype(np.float32)
            vectors[h] = v / np.linalg.norm(v)
        writes.append(DocumentWrite(doc, chunks, hashes, "c1"))
    return writes, vectors


CORPUS = {
    "keys.md": ["Rotate the signing keys every quarter.", "Revoke a leaked key at once; rotate the others."],
    "backup.md": ["Run the online backup nightly.", "Test a restore monthly, and keep the backups off site."],
    "tls.md": ["Certificates renew automatically.", "Keys for TLS live in the vault; rotation is yearly."],
    "ops.md": ["On call rotates weekly.", "Backups and keys are audited", "Nothing else here"],
}


def _fill(store: Store) -> None:
    writes, vectors = _writes(CORPUS)
    store.write_documents(MODEL, writes, vectors)
    # Statistics kept through a replacement and a delete, not only through inserts.
    again, more = _writes({"ops.md": ["On call rotates weekly, keys rotate daily.", "Backups are audited."]}, seed=1)
    store.write_documents(MODEL, again, more)
    extra, vecs = _writes({"gone.md": ["keys keys keys backup restore"]}, seed=2)
    store.write_documents(MODEL, extra, vecs)
    assert store.delete_document(extra[0].document.id)


def test_bm25_and_candidate_scores_equal_the_sqlite_stores(postgres_url: str, tmp_path: Path) -> None:
    # The same writes on both backends: PostgreSQL's BM25 in SQL over its kept term statistics gives the scores the
    # in-memory index computes from SQLite's file, and the same corpus moments (what learned fusion was trained on).
    with closing(open_store(postgres_url)) as pg, closing(open_store(f"sqlite:///{tmp_path}/s.db")) as lite:
        _fill(pg)
        _fill(lite)
        assert pg.stats()["chunks"] == lite.stats()["chunks"] == 8
        ids = {
            s: sorted(c.id for d in st.list_documents() for c in st.document_chunks(d.id))
            for s, st in (("pg", pg), ("lite", lite))
        }
        texts = {s: {c: st.get_chunks([c])[c].text for c in ids[s]} for s, st in (("pg", pg), ("lite", lite))}
        q = np.ones(DIM, np.float32) / np.sqrt(DIM)
        for query in ("rotate keys", "backup restore", "how often do keys rotate", "vault", "zzz unknown"):
            found = {
                s: [(texts[s][c], round(v, 4)) for c, v in st.bm25_search(query, 10, Filters())]
                for s, st in (("pg", pg), ("lite", lite))
            }
            assert found["pg"] == found["lite"], query
            scores = {s: st.candidate_scores(MODEL, q, query, ids[s]) for s, st in (("pg", pg), ("lite", lite))}
            by_text = {
                s: dict(
                    zip(
                        [texts[s][c] for c in ids[s]],
                        zip(scores[s].bm25, scores[s].doc_bm25, scores[s].dense, strict=True),
                        strict=True,
                    )
                )
                for s in scores
            }
            assert by_text["pg"].keys() == by_text["lite"].keys()
            for text, values in by_text["pg"].items():
                assert values == pytest.approx(by_text["lite"][text], abs=1e-4), (query, text)
            for field in ("bm25_mean", "bm25_std", "doc_bm25_mean", "doc_bm25_std", "dense_mean", "dense_std"):
                assert getattr(scores["pg"], field) == pytest.approx(getattr(scores["lite"], field), abs=1e-4), field


def test_a_selective_filter_still_returns_k_rows_through_the_hnsw_index(postgres_url: str) -> None:
    # 3,000 chunks, 12 of them with metadata n=2. The planner cannot estimate a metadata match, so it walks the
    # HNSW index and filters as it goes: a scan that stopped at ef_search (400) candidates finds a few of the 12 at
    # most (hnsw.iterative_scan off); iterative scanning goes on until k rows pass, inside the one statement.
    with closing(open_store(postgres_url)) as store:
        store.create_collection("rare")
        big = {f"d{i}.txt": [f"chunk {i} {j}" for j in range(30)] for i in range(100)}
        writes, vectors = _writes(big, seed=3)
        store.write_documents(MODEL, writes, vectors)
        rare_writes, rare_vectors = _writes(
            {f"r{i}.txt": [f"rare {i} a", f"rare {i} b"] for i in range(6)}, collection="rare", seed=4
        )
        store.write_documents(MODEL, rare_writes, rare_vectors)
        q = np.ones(DIM, np.float32) / np.sqrt(DIM)
        exact = sorted((float(v @ q) for v in rare_vectors.values()), reverse=True)[:10]
        for filters in (Filters.parse(["n=2"]), Filters().within(["rare"])):
            hits = store.dense_search(MODEL, q, 10, filters)
            assert len(hits) == 10
            assert {store.get_chunks([c])[c].collection for c, _ in hits} == {"rare"}
            # Every one of the 12 is a candidate: the best 10 come back, best first, with exact scores.
            assert [s for _, s in hits] == pytest.approx(exact, abs=1e-5)
        plan = store._fetchall(  # type: ignore[attr-defined]
            "EXPLAIN SELECT text_hash FROM embeddings WHERE model = 'm'"
            f" ORDER BY vector::vector({DIM}) <=> '{q.tolist()}'::vector({DIM}) LIMIT 10"
        )
        assert "embeddings_hnsw_" in " ".join(r[0] for r in plan)  # the model's own index serves the search
        assert len(store.dense_search(MODEL, q, 50, Filters())) == 50


def test_a_query_vector_of_another_size_is_refused_by_name(postgres_url: str) -> None:
    with closing(open_store(postgres_url)) as store:
        writes, vectors = _writes({"a.txt": ["alpha"]})
        store.write_documents(MODEL, writes, vectors)
        with pytest.raises(ArchivistError, match=f"query vector has 4 dimensions, stored m vectors have {DIM}"):
            store.dense_search(MODEL, np.ones(4, np.float32), 5, Filters())
        other, other_vectors = _writes({"b.txt": ["beta"]})
        short = {h: v[:4] for h, v in other_vectors.items()}
        with pytest.raises(ArchivistError, match=f"m vectors have 4 dimensions, stored m vectors have {DIM}"):
            store.write_documents(MODEL, other, short)
        assert store.dense_search("unknown-model", np.ones(4, np.float32), 5, Filters()) == []


def test_collections_count_their_documents(postgres_url: str) -> None:
    with closing(open_store(postgres_url)) as store:
        store.create_collection("team")
        writes, vectors = _writes({"a.txt": ["one"], "b.txt": ["two"]}, collection="team")
        store.write_documents(MODEL, writes, vectors)
        counts = {c.name: c.documents for c in store.list_collections()}
        assert counts == {"default": 0, "team": 2}


def test_the_cli_ingests_and_searches_a_postgres_store(postgres_url: str, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keys.md").write_text("# Keys\n\nRotate API keys every 90 days. Revoke a leaked key at once.\n")
    (docs / "backup.md").write_text("# Backups\n\nRun the online backup nightly and test a restore monthly.\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")} | {"ARCHIVIST_STORE": postgres_url}

    def cli(*args: str) -> Any:
        proc = subprocess.run(
            [sys.executable, "-m", "archivist.cli", *args, "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert cli("ingest", "docs")["added"] == 2
    assert cli("ingest", "docs")["unchanged"] == 2  # the content hashes are read back from PostgreSQL
    hits = cli("search", "how often should keys be rotated")
    assert hits[0]["source"] == "docs/keys.md" and hits[0]["dense_score"] > 0 and hits[0]["bm25_score"] > 0
    scoped = cli("search", "backup", "--filter", "source=docs/k*")
    assert {h["source"] for h in scoped} == {"docs/keys.md"}
    stats = cli("stats")
    assert stats["documents"] == 2 and stats["chunks"] == 2
    # A NUL past the loader's binary check (8 KB in), and one in a JSON Lines record's text and metadata: PostgreSQL
    # refuses NUL in text, so each is stored as U+FFFD and the rest of the ingest goes on.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "long.md").write_text("# Long\n\n" + "word " * 2000 + "\x00 after the check\n")
    record = {"id": "r1", "text": "a record with a \u0000 inside", "title": "r\u0000", "meta": "x\u0000"}
    (damaged / "records.jsonl").write_text(json.dumps(record) + "\n")
    done = cli("ingest", "damaged")
    assert done["added"] == 2 and not done["failed"], done
    found = cli("search", "a record with a inside")
    assert any("\ufffd" in h["text"] for h in found)


def test_a_model_of_more_than_2000_dimensions_is_indexed_as_halfvec(postgres_url: str) -> None:
    from archivist.types import UsageError

    with closing(open_store(postgres_url)) as store:
        writes, vectors = _writes({"wide.txt": ["a wide model", "as text-embedding-3-large makes"]})
        rng = np.random.default_rng(7)
        wide = {h: (v := rng.normal(size=3072).astype(np.float32)) / np.linalg.norm(v) for h in vectors}
        store.write_documents("wide-3072", writes, wide)
        query = next(iter(wide.values()))
        hits = store.dense_search("wide-3072", query, 2, Filters())
        # Ranked through the halfvec index; the score is the exact float32 cosine.
        assert len(hits) == 2 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        too_wide, vectors = _writes({"x.txt": ["too wide"]}, seed=3)
        with pytest.raises(UsageError, match="4100 dimensions cannot be indexed on PostgreSQL"):
            store.write_documents("wider", too_wide, {h: np.ones(4100, np.float32) for h in vectors})
