"""The SQLite store's in-memory indexes, updated after each write, equal what a fresh build reads from the file."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from archivist.store.filters import Filters
from archivist.store.memindex import DenseIndex, LexicalIndex
from archivist.store.records import DocumentWrite, SentenceVectors
from archivist.store.sqlite import SQLiteStore
from archivist.types import Block, Chunk, Document, sha256_hex

MODEL = "test-model"
SENTENCES = "test-model|sentences"
DIM = 8
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def _write(rng: random.Random, source: str, seed: int) -> tuple[DocumentWrite, dict, dict]:
    """Return a write of a random document (1–4 chunks), its vectors and its sentence vectors."""
    paragraphs = [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) + "." for _ in range(rng.randint(1, 4))]
    text = "\n\n".join(paragraphs)
    blocks, pos = [], 0
    for p in paragraphs:
        blocks.append(Block("paragraph", pos, pos + len(p)))
        pos += len(p) + 2
    doc = Document(source, f"Title {source}", text, "text/plain", blocks, {"n": seed})
    chunks = [Chunk(doc.id, i, text[b.start : b.end], b.start, b.end, (), 5) for i, b in enumerate(blocks)]
    hashes = [sha256_hex(c.embedding_text(doc.title)) for c in chunks]
    vectors, sentences = {}, {}
    gen = np.random.default_rng(seed)
    for chunk, h in zip(chunks, hashes, strict=True):
        v = gen.normal(size=DIM).astype(np.float32)
        vectors[h] = v / np.linalg.norm(v)
        half = len(chunk.text) // 2
        rows = gen.normal(size=(2, DIM)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1)[:, None]
        sentences[h] = SentenceVectors([(0, half), (half + 1, len(chunk.text))], rows)
    return DocumentWrite(doc, chunks, hashes, "c1"), vectors, sentences


def _put(store: SQLiteStore, rng: random.Random, source: str, seed: int) -> None:
    w, vectors, sentences = _write(rng, source, seed)
    store.write_documents(MODEL, [w], vectors, (SENTENCES, sentences))


def _same_as_a_fresh_build(live: SQLiteStore, path: Path, query: np.ndarray, words: str) -> None:
    """Assert that the live store's updated indexes equal those a new store object builds from the file."""
    fresh = SQLiteStore(path)
    try:
        a, b = live._dense_index(MODEL), fresh._dense_index(MODEL)
        assert np.array_equal(a.chunk_ids, b.chunk_ids) and np.array_equal(a.doc_rows, b.doc_rows)
        assert np.array_equal(a.matrix, b.matrix)
        assert np.allclose(a.score_stats(query), b.score_stats(query), atol=1e-5)
        (sa, la), (sb, lb) = live._sentence_index(SENTENCES), fresh._sentence_index(SENTENCES)
        assert np.array_equal(la, lb) and np.array_equal(sa.matrix, sb.matrix)
        assert np.array_equal(sa.doc_rows, sb.doc_rows) and np.array_equal(sa.chunk_ids, sb.chunk_ids)
        la_, lb_ = live._lexical(), fresh._lexical()
        assert la_.vocab == lb_.vocab
        for x, y in ((la_.chunks, lb_.chunks), (live._document_lexical_index(la_), fresh._document_lexical_index(lb_))):
            for name in ("chunk_ids", "doc_rows", "ptr", "rows", "tf"):
                assert np.array_equal(getattr(x, name), getattr(y, name)), name
            assert np.allclose(x.idf, y.idf) and np.allclose(x.norm, y.norm)
        # What users see: the same hits, scores and candidate features.
        assert live.dense_search(MODEL, query, 5, Filters()) == fresh.dense_search(MODEL, query, 5, Filters())
        assert live.bm25_search(words, 5, Filters()) == fresh.bm25_search(words, 5, Filters())
        assert live.sentence_search(SENTENCES, query, 5, Filters()) == fresh.sentence_search(
            SENTENCES, query, 5, Filters()
        )
        ids = [c for c, _ in live.dense_search(MODEL, query, 5, Filters())]
        got, want = (asdict(s.candidate_scores(MODEL, query, words, ids)) for s in (live, fresh))
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    finally:
        fresh.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_indexes_updated_after_each_write_equal_a_full_build(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = {"dense": 0, "bm25": 0}
    for name, cls in (("dense", DenseIndex), ("bm25", LexicalIndex)):
        real = cls.build

        def counted(*args: object, _real: object = real, _name: str = name, **kw: object) -> object:
            builds[_name] += 1
            return _real(*args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(cls, "build", counted)
    rng = random.Random(seed)
    path = tmp_path / "store.db"
    live = SQLiteStore(path)
    sources: list[str] = []
    try:
        for step in range(40):
            op = rng.random()
            if op < 0.45 or not sources:  # a new document
                sources.append(f"doc-{step}.txt")
                _put(live, rng, sources[-1], seed * 1000 + step)
            elif op < 0.65:  # the newest document rewritten: SQLite gives its rows the same ids again
                _put(live, rng, sources[-1], seed * 1000 + step)
            elif op < 0.8:  # an older document rewritten, changed
                _put(live, rng, rng.choice(sources), seed * 1000 + step)
            else:  # a document deleted
                gone = sources.pop(rng.randrange(len(sources)))
                live.delete_document(Document(gone, "", "", "text/plain", []).id)
            query = np.random.default_rng(step).normal(size=DIM).astype(np.float32)
            _same_as_a_fresh_build(live, path, query / np.linalg.norm(query), " ".join(rng.choices(WORDS, k=3)))
        # Each fresh store built its indexes once; the live store built them once, then only updated them.
        assert builds == {"dense": 40 + 1, "bm25": 40 + 1}
    finally:
        live.close()


def test_a_write_in_another_process_or_store_object_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import archivist.store.sqlite.documents as sqlite_module

    path = tmp_path / "store.db"
    reader, writer = SQLiteStore(path), SQLiteStore(path)
    rng = random.Random(0)
    try:
        _put(writer, rng, "a.txt", 1)
        assert len(reader.bm25_search("alpha beta gamma delta", 10, Filters())) >= 0
        before = reader._dense_index(MODEL).chunk_ids.size
        _put(writer, rng, "b.txt", 2)
        assert reader._dense_index(MODEL).chunk_ids.size > before
        writer.delete_document(Document("a.txt", "", "", "text/plain", []).id)
        _same_as_a_fresh_build(reader, path, np.ones(DIM, dtype=np.float32) / DIM**0.5, "alpha")
        # A reader further behind than the deletion log reaches builds its indexes anew, and is right.
        monkeypatch.setattr(sqlite_module, "DELETION_LOG_GENERATIONS", 2)
        for i in range(5):
            _put(writer, rng, "b.txt", 10 + i)  # each rewrite deletes the chunks before
        since = writer.generation()
        reach = writer._conn().execute("SELECT value FROM meta WHERE key = 'deletions_since'").fetchone()[0]
        assert int(reach) == since - 2 > reader._dense[2]  # type: ignore[index]
        _same_as_a_fresh_build(reader, path, np.ones(DIM, dtype=np.float32) / DIM**0.5, "alpha")
    finally:
        reader.close()
        writer.close()


def test_a_large_dense_index_keeps_its_codes_and_finds_what_an_exact_scan_finds() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(300, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(300, dtype=np.int64)
    index = DenseIndex(ids[:200], ids[:200] // 3, vectors[:200])
    index.quantize()
    index.min_rescore = 50
    keep = np.ones(200, dtype=bool)
    keep[::7] = False
    updated = index.updated(keep, ids[200:], ids[200:] // 3, vectors[200:], exact_max=100)
    assert updated.codes is not None and updated.codes.shape[0] == updated.chunk_ids.size == 100 + keep.sum()
    exact = DenseIndex(updated.chunk_ids, updated.doc_rows, updated.matrix)
    query = vectors[250]
    assert updated.search(query, 5, None)[0][0] == 250
    assert {c for c, _ in updated.search(query, 5, None)} <= {c for c, _ in exact.search(query, 50, None)}
    # Grown past twice the rows its codes were centred on, the index centres them anew.
    everything = np.ones(updated.chunk_ids.size, dtype=bool)
    grown = updated.updated(everything, ids[200:] + 300, ids[200:], vectors[200:], 100)
    grown = grown.updated(np.ones(grown.chunk_ids.size, dtype=bool), ids[:200] + 400, ids[:200], vectors[:200], 100)
    assert grown.coded_rows == grown.chunk_ids.size
    # Shrunk to the exact-scan size, it scans exactly again, as a full build would.
    few = np.zeros(grown.chunk_ids.size, dtype=bool)
    few[:50] = True
    empty = np.zeros((0, DIM), dtype=np.float32)
    shrunk = grown.updated(few, ids[:0], ids[:0], empty, 100)
    assert shrunk.codes is None and shrunk.chunk_ids.size == 50


def _same_text_write(source: str, text: str) -> tuple[DocumentWrite, dict, dict]:
    """Return a write of a one-chunk document whose embedded text is the same for every source."""
    doc = Document(source, "Shared title", text, "text/plain", [Block("paragraph", 0, len(text))])
    chunk = Chunk(doc.id, 0, text, 0, len(text), (), 5)
    h = sha256_hex(chunk.embedding_text(doc.title))
    v = np.random.default_rng(7).normal(size=(3, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    half = len(text) // 2
    return (
        DocumentWrite(doc, [chunk], [h], "c1"),
        {h: v[0]},
        {h: SentenceVectors([(0, half), (half + 1, len(text))], v[1:])},
    )


def test_an_older_chunk_that_gains_vectors_through_another_document_joins_the_indexes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    live = SQLiteStore(path)
    rng = random.Random(3)
    text = "alpha beta gamma delta. epsilon zeta eta theta iota."
    try:
        # Written under another model and without sentence vectors: not in this model's indexes.
        w, vectors, _ = _same_text_write("a.txt", text)
        live.write_documents("other-model", [w], vectors)
        _put(live, rng, "c.txt", 1)
        query = np.ones(DIM, dtype=np.float32) / DIM**0.5
        _same_as_a_fresh_build(live, path, query, "alpha")
        before = live._dense_index(MODEL).chunk_ids.size
        # The same text in another document brings vectors under this model: a.txt's chunk now has them too.
        w, vectors, sentences = _same_text_write("b.txt", text)
        live.write_documents(MODEL, [w], vectors, (SENTENCES, sentences))
        _same_as_a_fresh_build(live, path, query, "alpha")
        assert live._dense_index(MODEL).chunk_ids.size == before + 2
    finally:
        live.close()


@pytest.mark.parametrize("kept_before", [True, False], ids=["after-kept-chunks", "into-an-empty-index"])
def test_an_older_chunk_that_gains_vectors_joins_an_index_that_is_only_updated(
    tmp_path: Path, kept_before: bool
) -> None:
    path = tmp_path / "store.db"
    live = SQLiteStore(path)
    text = "alpha beta gamma delta. epsilon zeta eta theta iota."
    query = np.ones(DIM, dtype=np.float32) / DIM**0.5
    try:
        if kept_before:
            _put(live, random.Random(3), "c.txt", 1)  # chunk ids 1, 2: a.txt's chunk comes after them
        w, vectors, _ = _same_text_write("a.txt", text)
        live.write_documents("other-model", [w], vectors)
        live._dense_index(MODEL), live._sentence_index(SENTENCES), live._lexical()
        w, vectors, sentences = _same_text_write("b.txt", text)
        live.write_documents(MODEL, [w], vectors, (SENTENCES, sentences))
        _same_as_a_fresh_build(live, path, query, "alpha")
    finally:
        live.close()


def test_an_index_behind_more_writes_than_the_feed_reaches_sees_every_addition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import archivist.store.sqlite.documents as documents

    monkeypatch.setattr(documents, "DELETION_LOG_GENERATIONS", 2)
    path = tmp_path / "store.db"
    live = SQLiteStore(path)
    rng = random.Random(1)
    try:
        _put(live, rng, "a.txt", 1)
        live._dense_index(MODEL), live._lexical()
        for i in range(5):  # additions only: no deletion is logged, yet the feed's older entries are pruned
            _put(live, rng, f"new-{i}.txt", 10 + i)
        _same_as_a_fresh_build(live, path, np.ones(DIM, dtype=np.float32) / DIM**0.5, "alpha")
    finally:
        live.close()


def test_a_store_restored_from_an_older_backup_is_read_anew(tmp_path: Path) -> None:
    import sqlite3

    path, backup = tmp_path / "store.db", tmp_path / "backup.db"
    live = SQLiteStore(path)
    rng = random.Random(4)
    query = np.ones(DIM, dtype=np.float32) / DIM**0.5
    try:
        _put(live, rng, "a.txt", 1)
        with sqlite3.connect(path) as src, sqlite3.connect(backup) as dst:
            src.backup(dst)
        for i in range(4):
            _put(live, rng, f"later-{i}.txt", 10 + i)
        _same_as_a_fresh_build(live, path, query, "alpha")
        # The backup goes back into the live file (SQLite's backup API, as docs/storage.md shows), then one write.
        with sqlite3.connect(backup) as src, sqlite3.connect(path) as dst:
            src.backup(dst)
        _put(live, rng, "z.txt", 20)
        _same_as_a_fresh_build(live, path, query, "alpha")
        assert "later-0.txt" not in {
            c.source for c in live.get_chunks(list(live._dense_index(MODEL).chunk_ids)).values()
        }
    finally:
        live.close()


def test_a_term_whose_only_chunk_is_gone_again_still_joins_the_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    live = SQLiteStore(path)
    rng = random.Random(5)
    try:
        _put(live, rng, "a.txt", 1)
        _same_as_a_fresh_build(live, path, np.ones(DIM, dtype=np.float32) / DIM**0.5, "alpha")
        w, vectors, sentences = _same_text_write("z.txt", "zebra zebra crossing here.")
        live.write_documents(MODEL, [w], vectors, (SENTENCES, sentences))
        live.delete_document(w.document.id)
        _same_as_a_fresh_build(live, path, np.ones(DIM, dtype=np.float32) / DIM**0.5, "zebra")
        assert "zebra" in live._lexical().vocab
    finally:
        live.close()
