"""The SQLite store's in-memory indexes, built from the file and then kept up to date by what changed.

Every write bumps the store's generation. Rebuilding the dense, sentence and BM25 indexes after each write made
the first search after it read the whole file again (265 ms at COVID-QA's 3,600 chunks, 4.5 s at 100k), so an
answer served while documents were being ingested paid that every time. Instead each index remembers the
generation it describes, and the change feed (`changes`, the store's `changes_since`) says what happened since:
triggers log every deleted chunk's id (migration 7), every hash that gained vectors (migration 8) and every
inserted chunk's id (migration 10) with the generation its write started from. The next refresh drops the chunks
deleted since and reads only the chunks added since.

An index stays in chunk id order, so the added chunks are appended when they all come after every kept one (as
SQLite's ids always do); otherwise (a backend whose ids are not in commit order) it is built in full. So is an
index with an older chunk among those whose hash gained vectors (the same text in another document, written before
under another model or without sentence vectors: that chunk now joins the index out of order), one older than the
logs reach back, or one whose store went back to an older generation. The rows, vectors and BM25 statistics then
equal a full build's (`tests/test_index_refresh.py`); large indexes keep their sign codes centred on the mean they
were computed at until they double.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from archivist.store.lexical import decode_counts
from archivist.store.memindex import EXACT_SCAN_MAX, DenseIndex, LexicalIndex, dense_rows
from archivist.store.records import Changes

#: how many writes back the chunk deletion log reaches
DELETION_LOG_GENERATIONS = 1000

# A full build lets the planner scan the vectors in their own order (2.3x faster than looking each one up by chunk
# at 100k chunks); an update reads only the chunks above an id, so it goes chunks first (CROSS JOIN fixes the
# order), or the planner would still scan every vector of the model to find them.
_DENSE_SQL = (
    "SELECT c.id, d.rowid, e.vector FROM chunks c {join} documents d ON d.id = c.document_id"
    " {join} embeddings e ON e.model = ? AND e.text_hash = c.embed_hash{where} ORDER BY c.id"
)
_SENTENCE_SQL = (
    "SELECT c.id, d.rowid, c.start, s.spans, s.vectors FROM chunks c {join} documents d ON d.id = c.document_id"
    " {join} sentence_vectors s ON s.model = ? AND s.text_hash = c.embed_hash{where} ORDER BY c.id"
)
_TERMS_SQL = (
    "SELECT c.id, d.rowid, c.terms FROM chunks c {join} documents d ON d.id = c.document_id{where} ORDER BY c.id"
)


def _rows(
    conn: sqlite3.Connection, sql: str, params: tuple[object, ...], added: npt.NDArray[np.int64] | None
) -> list[tuple[Any, ...]]:
    """Return the rows of an index query: every chunk (added None), or the chunks with these ids."""
    if added is None:
        return conn.execute(sql.format(join="JOIN", where=""), params).fetchall()
    if not added.size:
        return []
    where = " WHERE c.id IN (SELECT value FROM json_each(?))"
    return conn.execute(sql.format(join="CROSS JOIN", where=where), (*params, json.dumps(added.tolist()))).fetchall()


def generation(conn: sqlite3.Connection) -> int:
    """Return the store's generation (as of the caller's transaction)."""
    return int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])


def changes(conn: sqlite3.Connection, since: int) -> Changes | None:
    """Return what changed in the chunks after generation `since` (as of the caller's transaction), or None when
    the logs do not reach back that far or the store went back to an older generation (a backup restored)."""
    reach = conn.execute("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'deletions_since'").fetchone()
    now = generation(conn)
    if reach is None or since < int(reach[0]) or since > now:
        return None

    def ids(sql: str) -> npt.NDArray[np.int64]:
        return np.fromiter((r[0] for r in conn.execute(sql, (since,))), dtype=np.int64)

    deleted = ids("SELECT DISTINCT chunk_id FROM chunk_deletions WHERE generation >= ? ORDER BY chunk_id")
    # Inserted since and still there: SQLite gives a rewritten newest document's chunks their deleted ids again.
    added = ids(
        "SELECT DISTINCT i.chunk_id FROM chunk_inserts i JOIN chunks c ON c.id = i.chunk_id"
        " WHERE i.generation >= ? ORDER BY i.chunk_id"
    )
    hashes = conn.execute("SELECT DISTINCT text_hash FROM vector_inserts WHERE generation >= ?", (since,))
    return Changes(now, deleted, added, frozenset(str(r[0]) for r in hashes))


@dataclass(frozen=True, slots=True)
class Delta:
    """From an index's generation to now: which of its rows stay, and the ids of the chunks to append."""

    keep: npt.NDArray[np.bool_]
    added: npt.NDArray[np.int64]


def delta(
    conn: sqlite3.Connection, since: int, chunk_ids: npt.NDArray[np.int64], *, vectors: bool = False
) -> Delta | None:
    """Return the change since generation `since` for an index of these chunk ids (sorted), or None when the index
    must be built anew: the change feed does not reach back that far, or a chunk to add sorts before a kept one (an
    index stays in id order). With `vectors` (an index of vectors), the chunks to add include those whose text
    gained vectors since, through another document with the same text."""
    change = changes(conn, since)
    if change is None:
        return None
    keep = ~np.isin(chunk_ids, change.deleted) if change.deleted.size else np.ones(chunk_ids.size, dtype=bool)
    kept = chunk_ids[keep]
    added = change.added
    if vectors and change.vectors_added:
        # A chunk written before may join an index of vectors now: the same text, in another document, brought the
        # vectors (or sentence vectors) its own write did not store.
        hashes = json.dumps(sorted(change.vectors_added))
        rows = conn.execute("SELECT id FROM chunks WHERE embed_hash IN (SELECT value FROM json_each(?))", (hashes,))
        gained = np.fromiter((r[0] for r in rows), dtype=np.int64)
        added = np.union1d(added, gained[~np.isin(gained, kept)])
    if added.size and kept.size and added[0] <= kept[-1]:
        return None
    return Delta(keep, added)


def dense_index(conn: sqlite3.Connection, model: str, now: int, old: tuple[DenseIndex, int] | None) -> DenseIndex:
    """Return the dense index of `model`'s chunk vectors at generation `now`, updated from `old` (an index and
    the generation it describes) where the deletion log allows."""
    change = delta(conn, old[1], old[0].chunk_ids, vectors=True) if old is not None else None
    rows = _rows(conn, _DENSE_SQL, (model,), change.added if change else None)
    if old is None or change is None:
        return DenseIndex.build(rows)
    if not rows and change.keep.all():
        return old[0]
    ids, docs, matrix = dense_rows(rows)
    return old[0].updated(change.keep, ids, docs, matrix)


Located = npt.NDArray[np.int64]


def _sentence_rows(
    rows: Sequence[tuple[int, int, int, bytes, bytes]], seen: set[tuple[int, int]]
) -> tuple[Located, npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Return each new sentence's (chunk id, start, end), document rowid and vector; a sentence already `seen`
    (document rowid, start), as overlapping chunks repeat one, is left out."""
    where: list[tuple[int, int, int]] = []
    owners: list[int] = []
    blocks: list[npt.NDArray[np.float32]] = []
    for chunk_id, doc_row, start, spans, blob in rows:
        offsets = np.frombuffer(spans, dtype=np.int32).reshape(-1, 2) + int(start)
        if not len(offsets):
            continue
        vectors = np.frombuffer(blob, dtype=np.float16).reshape(len(offsets), -1)
        keep = [j for j, (a, _) in enumerate(offsets.tolist()) if (doc_row, a) not in seen]
        seen.update((doc_row, int(offsets[j][0])) for j in keep)
        where.extend((chunk_id, int(offsets[j][0]), int(offsets[j][1])) for j in keep)
        owners.extend([doc_row] * len(keep))
        blocks.append(vectors[keep].astype(np.float32))
    matrix = np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=np.float32)
    return np.asarray(where, dtype=np.int64).reshape(-1, 3), np.asarray(owners, dtype=np.int64), matrix


def sentence_index(
    conn: sqlite3.Connection, model: str, now: int, old: tuple[DenseIndex, Located, int] | None
) -> tuple[DenseIndex, Located]:
    """Return the index of every stored sentence vector (row i: sentence i) and each row's (chunk id, start, end)
    in document offsets, at generation `now`; a sentence repeated by overlapping chunks is kept once."""
    change = delta(conn, old[2], old[1][:, 0], vectors=True) if old is not None else None
    rows = _rows(conn, _SENTENCE_SQL, (model,), change.added if change else None)
    if old is None or change is None:
        located, owners, matrix = _sentence_rows(rows, set())
        index = DenseIndex(np.arange(len(located), dtype=np.int64), owners, matrix)
        if len(located) > EXACT_SCAN_MAX:
            index.quantize()
        return index, located
    previous, was_located, _ = old
    if not rows and change.keep.all():
        return previous, was_located
    keep = change.keep
    # A new chunk of a document with kept sentences (not written by this store, which writes documents whole)
    # must not repeat one of them.
    new_docs = {int(r[1]) for r in rows}
    shared = keep & np.isin(previous.doc_rows, list(new_docs))
    seen = {(int(d), int(a)) for d, a in zip(previous.doc_rows[shared], was_located[shared, 1], strict=True)}
    located, owners, matrix = _sentence_rows(rows, seen)
    n_kept = int(keep.sum())
    index = previous.updated(keep, np.arange(n_kept, n_kept + len(located), dtype=np.int64), owners, matrix)
    if n_kept < keep.size:
        index.chunk_ids[:n_kept] = np.arange(n_kept)  # rows are sentence numbers: renumber the kept ones
    return index, np.concatenate([was_located[keep], located])


@dataclass(slots=True)
class Lexical:
    """The BM25 index of chunks, the vocabulary it speaks, the generation it describes, and (once asked for) the
    BM25 index of whole documents derived from it."""

    chunks: LexicalIndex
    vocab: dict[str, int]
    generation: int
    documents: LexicalIndex | None = None


def lexical_index(conn: sqlite3.Connection, now: int, old: Lexical | None) -> Lexical:
    """Return the BM25 indexes at generation `now`, updated from `old` where the deletion log allows."""
    change = delta(conn, old.generation, old.chunks.chunk_ids) if old is not None else None
    if old is None or change is None:
        vocab = {str(t): int(i) for t, i in conn.execute("SELECT term, id FROM terms")}
        rows = _rows(conn, _TERMS_SQL, (), None)
        return Lexical(LexicalIndex.build(rows, max(vocab.values(), default=0) + 1), vocab, now)
    rows = _rows(conn, _TERMS_SQL, (), change.added)
    # Term ids are never reused or changed: only terms added since are new (even if their chunks are gone again).
    added_terms = conn.execute("SELECT term, id FROM terms WHERE id > ?", (max(old.vocab.values(), default=0),))
    vocab = old.vocab | {str(t): int(i) for t, i in added_terms}
    if not rows and change.keep.all() and len(vocab) == len(old.vocab):
        return Lexical(old.chunks, old.vocab, now, old.documents)
    n = len(rows)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    docs = np.fromiter((r[1] for r in rows), dtype=np.int64, count=n)
    pairs = [decode_counts(r[2]) for r in rows]
    chunks = old.chunks.updated(change.keep, ids, docs, pairs, max(vocab.values(), default=0) + 1)
    out = Lexical(chunks, vocab, now)
    if old.documents is not None:
        gone = np.unique(old.chunks.doc_rows[~change.keep])
        out.documents = _documents_updated(old.documents, chunks, gone, docs, pairs)
    return out


def document_index(lexical: Lexical) -> LexicalIndex:
    """Return the BM25 index of whole documents (built from the chunk index on first use)."""
    if lexical.documents is None:
        lexical.documents = lexical.chunks.by_document()
    return lexical.documents


def _documents_updated(
    before: LexicalIndex,
    chunks: LexicalIndex,
    gone: npt.NDArray[np.int64],
    new_docs: npt.NDArray[np.int64],
    pairs: Sequence[npt.NDArray[np.int32]],
) -> LexicalIndex | None:
    """Return the document index without the documents whose chunks are gone and with the new chunks' documents
    (None: rebuild it from `chunks`). `gone` holds the documents of the chunks deleted."""
    staying = np.unique(chunks.doc_rows[: chunks.doc_rows.size - new_docs.size])
    keep = np.isin(before.chunk_ids, staying)
    added = np.unique(new_docs)
    if np.isin(gone, staying).any() or np.isin(added, staying).any():
        return None  # a document lost or gained some chunks and kept others: sum it from the chunks instead
    if added.size and staying.size and added.min() <= staying.max():
        return None
    by_doc: dict[int, list[npt.NDArray[np.int32]]] = {}
    for p, d in zip(pairs, new_docs.tolist(), strict=True):
        by_doc.setdefault(d, []).append(p)
    summed = []
    for doc in added.tolist():
        flat = np.concatenate(by_doc[doc])
        terms, inverse = np.unique(flat[:, 0], return_inverse=True)
        counts = np.bincount(inverse, weights=flat[:, 1]).astype(np.int32)
        summed.append(np.stack([terms.astype(np.int32), counts], axis=1))
    return before.updated(keep, added, added, summed, chunks.idf.size)
