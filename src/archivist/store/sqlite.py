"""The embedded default store: one SQLite file in WAL mode; search runs on in-memory indexes.

The file holds documents, chunks, vectors (float32 blobs keyed by model and embedded-text hash) and
each chunk's BM25 term counts. Searches run over a dense matrix and BM25 posting lists built from
the file and brought up to date when a write bumps the store's generation (see `sqlite_index`). Filters select
documents in SQL and are applied as a mask inside both searches, never after top-k.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from archivist.embed.base import Vectors
from archivist.store.base import (
    BUILTIN_FILTER_KEYS,
    ApiKeyRecord,
    CandidateScores,
    CollectionRecord,
    DocumentWrite,
    Filters,
    JobRecord,
    RequestLogRow,
    SentenceHit,
    SentenceVectors,
    StoredChunk,
    WriteOutcome,
)
from archivist.store.lexical import Analyzer, encode_counts
from archivist.store.memindex import DenseIndex, LexicalIndex
from archivist.store.sqlite_index import (
    DELETION_LOG_GENERATIONS,
    Lexical,
    Located,
    dense_index,
    document_index,
    generation,
    lexical_index,
    sentence_index,
)
from archivist.store.sqlite_migrations import MIGRATIONS
from archivist.types import DEFAULT_COLLECTION, ArchivistError, ConflictError, DocumentRecord

_DOC_COLUMNS = {
    "source": "d.source",
    "title": "d.title",
    "document_id": "d.id",
    "media_type": "d.media_type",
    "collection": "d.collection",
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SQLiteStore:
    """A `Store` in one SQLite file."""

    def __init__(self, path: Path, *, url: str | None = None) -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Every open connection and the thread it belongs to (weakly): a thread's connection is closed once the
        # thread is gone, so the count stays bounded by the threads alive, not by every thread ever created.
        self._conns: dict[sqlite3.Connection, weakref.ref[threading.Thread]] = {}
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._index_lock = threading.Lock()
        # Each in-memory index with the generation it describes (see `sqlite_index`).
        self._dense: tuple[str, DenseIndex, int] | None = None
        self._sentences: tuple[str, DenseIndex, Located, int] | None = None
        self._bm25: Lexical | None = None
        self._analyzer = Analyzer()
        self._allowed_cache: dict[tuple[int, Filters], npt.NDArray[np.bool_]] = {}
        self._keys_cache: tuple[int, dict[str, set[str]]] | None = None
        self.migrate()

    # -- connections and transactions -------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._conns_lock:
                # Before opening: SQLite reuses the file descriptors of connections closed here.
                self._close_orphans()
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
                _use_wal(conn)
            except sqlite3.DatabaseError as exc:
                raise ArchivistError(f"cannot open store {self.path}: {exc}") from exc
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._conns_lock:
                self._conns[conn] = weakref.ref(threading.current_thread())
        return conn

    def _close_orphans(self) -> None:
        """Close the connections of threads that have ended (call with `_conns_lock` held)."""
        for conn, owner in list(self._conns.items()):
            thread = owner()
            if thread is None or not thread.is_alive():
                del self._conns[conn]
                with suppress(sqlite3.Error):
                    conn.close()

    def open_connections(self) -> int:
        """Return how many connections to the file this store holds open, after closing those of ended threads."""
        with self._conns_lock:
            self._close_orphans()
            return len(self._conns)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def schema_version(self) -> int:
        """Return the highest applied migration version (0 for an empty file)."""
        conn = self._conn()
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        return int(row[0])

    def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""
        applied: list[int] = []
        current = self.schema_version()
        latest = MIGRATIONS[-1][0]
        if current > latest:
            raise ArchivistError(
                f"store {self.path} has schema version {current}, newer than this Archivist ({latest}): upgrade"
            )
        if current == latest:
            return applied
        conn = self._conn()
        # A migration that rebuilds a table must not cascade deletes into its children; the pragma only
        # takes effect outside a transaction, and each migration checks the keys before it commits.
        conn.execute("PRAGMA foreign_keys=OFF")
        try:
            for version, name, sql in MIGRATIONS:
                if version <= current:
                    continue
                with self._transaction() as tx:
                    # Another process may have applied it since the version was read: decide under the write lock.
                    if tx.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                        continue
                    for statement in _split_sql(sql):
                        tx.execute(statement)
                    broken = tx.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise ArchivistError(f"migration {version} would break foreign keys: {broken[:3]}")
                    tx.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (version, name, _now()),
                    )
                applied.append(version)
        finally:
            conn.execute("PRAGMA foreign_keys=ON")
        return applied

    def generation(self) -> int:
        """Return a counter bumped by every write, for caches of derived data."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    # -- ingestion ----------------------------------------------------------------------------------

    def document_states(
        self, sources: Sequence[str], collection: str = DEFAULT_COLLECTION
    ) -> dict[str, tuple[str, str]]:
        """Return {source: (content_hash, chunker fingerprint)} for the stored ones among `sources`."""
        conn = self._conn()
        out: dict[str, tuple[str, str]] = {}
        for i in range(0, len(sources), 500):
            part = list(sources[i : i + 500])
            marks = ",".join("?" * len(part))
            for source, h, chunker in conn.execute(
                f"SELECT source, content_hash, chunker FROM documents WHERE collection = ? AND source IN ({marks})",
                [collection, *part],
            ):
                out[source] = (h, chunker)
        return out

    def cached_vectors(self, model: str, hashes: Sequence[str]) -> dict[str, Vectors]:
        """Return the stored vectors of `model` for those embedding hashes that have one."""
        conn = self._conn()
        out: dict[str, Vectors] = {}
        unique = list(dict.fromkeys(hashes))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            for h, blob in conn.execute(
                f"SELECT text_hash, vector FROM embeddings WHERE model = ? AND text_hash IN ({marks})",
                [model, *part],
            ):
                out[h] = np.frombuffer(blob, dtype=np.float32)
        return out

    def write_documents(
        self,
        model: str,
        writes: Sequence[DocumentWrite],
        vectors: dict[str, Vectors],
        sentences: tuple[str, dict[str, SentenceVectors]] | None = None,
        *,
        skip_unchanged: bool = False,
    ) -> list[WriteOutcome]:
        """Store documents, replacing any with the same source; each document is all-or-nothing. Return what
        happened to each write, in order.

        `sentences` is (sentence model key, {embedding hash: its chunk's sentence vectors}), written in the same
        transaction. With `skip_unchanged`, a document stored with the same content hash and chunker is left as it
        is ("unchanged"), decided inside the write transaction: of two concurrent writers of one file, one writes."""
        if not writes:
            return []
        for w in writes:
            missing = [h for h in w.embed_hashes if h not in vectors]
            if missing:
                raise ArchivistError(f"{w.document.source}: {len(missing)} chunk vectors missing from the write")
        now = _now()
        counts = [[self._analyzer.counts(c.embedding_text(w.document.title)) for c in w.chunks] for w in writes]
        outcomes: list[WriteOutcome] = []
        with self._transaction() as conn:
            term_ids = self._term_ids(conn, {t for per_doc in counts for c in per_doc for t in c})
            for w, doc_counts in zip(writes, counts, strict=True):
                doc = w.document
                prev = conn.execute(
                    "SELECT id, version, created_at, content_hash, chunker FROM documents"
                    " WHERE collection = ? AND source = ?",
                    (doc.collection, doc.source),
                ).fetchone()
                if skip_unchanged and prev is not None and (prev[3], prev[4]) == (doc.content_hash, w.chunker):
                    outcomes.append("unchanged")
                    continue
                outcomes.append("updated" if prev is not None else "added")
                if prev is not None:
                    self._delete_in(conn, prev[0])
                version = prev[1] + 1 if prev else 1
                created = prev[2] if prev else now
                conn.execute(
                    "INSERT INTO documents (id, collection, source, title, media_type, content_hash, chunker,"
                    " metadata, chunk_count, char_count, version, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        doc.id,
                        doc.collection,
                        doc.source,
                        doc.title,
                        doc.media_type,
                        doc.content_hash,
                        w.chunker,
                        json.dumps(doc.metadata, ensure_ascii=False, sort_keys=True),
                        len(w.chunks),
                        len(doc.text),
                        version,
                        created,
                        now,
                    ),
                )
                for chunk, h, tc in zip(w.chunks, w.embed_hashes, doc_counts, strict=True):
                    heading = json.dumps(list(chunk.heading_path), ensure_ascii=False)
                    terms = encode_counts([term_ids[t] for t in tc], list(tc.values()))
                    conn.execute(
                        'INSERT INTO chunks (document_id, ordinal, text, heading_path, start, "end", page,'
                        " page_end, token_count, embed_hash, terms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            doc.id,
                            chunk.ordinal,
                            chunk.text,
                            heading,
                            chunk.start,
                            chunk.end,
                            chunk.page,
                            chunk.page_end,
                            chunk.token_count,
                            h,
                            terms,
                        ),
                    )
                conn.executemany(
                    "INSERT OR IGNORE INTO embeddings (model, text_hash, vector) VALUES (?, ?, ?)",
                    [(model, h, np.asarray(vectors[h], dtype=np.float32).tobytes()) for h in set(w.embed_hashes)],
                )
                if sentences is not None:
                    key, by_hash = sentences
                    conn.executemany(
                        "INSERT OR REPLACE INTO sentence_vectors (model, text_hash, spans, vectors)"
                        " VALUES (?, ?, ?, ?)",
                        [
                            (key, h, _pack_spans(sv.spans), np.asarray(sv.vectors, dtype=np.float16).tobytes())
                            for h in set(w.embed_hashes)
                            if (sv := by_hash.get(h)) is not None
                        ],
                    )
            if any(o != "unchanged" for o in outcomes):
                self._bump(conn)
        return outcomes

    def sentence_hashes(self, model: str, hashes: Sequence[str]) -> set[str]:
        """Return which of these embedding hashes have sentence vectors under the sentence model key."""
        conn = self._conn()
        out: set[str] = set()
        unique = list(dict.fromkeys(hashes))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            sql = f"SELECT text_hash FROM sentence_vectors WHERE model = ? AND text_hash IN ({marks})"
            out.update(h for (h,) in conn.execute(sql, [model, *part]))
        return out

    def chunk_sentences(self, model: str, chunk_ids: Sequence[int]) -> dict[int, SentenceVectors]:
        """Return the stored sentence vectors of these chunks, spans as document offsets."""
        out: dict[int, SentenceVectors] = {}
        unique = list(dict.fromkeys(int(i) for i in chunk_ids))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            for chunk_id, start, spans, blob in self._conn().execute(
                "SELECT c.id, c.start, s.spans, s.vectors FROM chunks c"
                " JOIN sentence_vectors s ON s.model = ? AND s.text_hash = c.embed_hash"
                f" WHERE c.id IN ({marks})",
                [model, *part],
            ):
                offsets = np.frombuffer(spans, dtype=np.int32).reshape(-1, 2) + int(start)
                # A chunk with no usable sentence (a table, a list of short items) stored none.
                rows = np.frombuffer(blob, dtype=np.float16).reshape(len(offsets), -1) if len(offsets) else None
                vectors = rows.astype(np.float32) if rows is not None else np.zeros((0, 0), dtype=np.float32)
                out[chunk_id] = SentenceVectors([(int(a), int(b)) for a, b in offsets], vectors)
        return out

    def delete_document(self, document_id: str) -> bool:
        """Delete a document and its chunks; return whether it existed."""
        with self._transaction() as conn:
            found = self._delete_in(conn, document_id)
            if found:
                self._bump(conn)
        return found

    def _term_ids(self, conn: sqlite3.Connection, terms: set[str]) -> dict[str, int]:
        """Return ids for terms, adding the new ones (ids are never reused or changed)."""
        ordered = sorted(terms)
        conn.executemany("INSERT OR IGNORE INTO terms (term) VALUES (?)", [(t,) for t in ordered])
        out: dict[str, int] = {}
        for i in range(0, len(ordered), 500):
            part = ordered[i : i + 500]
            marks = ",".join("?" * len(part))
            out.update(conn.execute(f"SELECT term, id FROM terms WHERE term IN ({marks})", part).fetchall())
        return out

    def _delete_in(self, conn: sqlite3.Connection, document_id: str) -> bool:
        conn.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
        return conn.execute("DELETE FROM documents WHERE id = ?", (document_id,)).rowcount > 0

    def _bump(self, conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        # The deletion log reaches back DELETION_LOG_GENERATIONS writes; an index older than that is built anew.
        oldest = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        oldest -= DELETION_LOG_GENERATIONS
        conn.execute("DELETE FROM vector_inserts WHERE generation < ?", (oldest,))
        if conn.execute("DELETE FROM chunk_deletions WHERE generation < ?", (oldest,)).rowcount:
            conn.execute(
                "UPDATE meta SET value = MAX(CAST(value AS INTEGER), ?) WHERE key = 'deletions_since'", (oldest,)
            )

    # -- reading ------------------------------------------------------------------------------------

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """Return one stored document, or None."""
        row = self._conn().execute(f"SELECT {_DOC_SELECT} FROM documents d WHERE d.id = ?", (document_id,)).fetchone()
        return _doc_record(row) if row else None

    def list_documents(
        self, *, limit: int = 100, offset: int = 0, filters: Filters = Filters()
    ) -> list[DocumentRecord]:
        """Return stored documents ordered by source."""
        where, params = _filter_sql(filters)
        rows = self._conn().execute(
            f"SELECT {_DOC_SELECT} FROM documents d WHERE {where} ORDER BY d.source LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_doc_record(r) for r in rows]

    def count_documents(self, filters: Filters = Filters()) -> int:
        """Return how many stored documents pass the filters."""
        where, params = _filter_sql(filters)
        return int(self._conn().execute(f"SELECT COUNT(*) FROM documents d WHERE {where}", params).fetchone()[0])

    def document_chunks(self, document_id: str) -> list[StoredChunk]:
        """Return a document's chunks in order."""
        rows = self._conn().execute(
            f"SELECT {_CHUNK_SELECT} FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.document_id = ? ORDER BY c.ordinal",
            (document_id,),
        )
        return [_stored_chunk(r) for r in rows]

    def sources(self, collection: str = DEFAULT_COLLECTION) -> list[str]:
        """Return the source of every stored document in a collection."""
        rows = self._conn().execute("SELECT source FROM documents WHERE collection = ? ORDER BY source", (collection,))
        return [r[0] for r in rows]

    def filter_keys(self, collections: Sequence[str] | None = None) -> set[str]:
        """Return the filter keys that name something in this store: the built-in keys and the metadata keys of
        documents in `collections` (None: every collection)."""
        gen = self.generation()
        if self._keys_cache is None or self._keys_cache[0] != gen:
            rows = self._conn().execute("SELECT DISTINCT d.collection, j.key FROM documents d, json_each(d.metadata) j")
            by_collection: dict[str, set[str]] = {}
            for collection, key in rows:
                by_collection.setdefault(str(collection), set()).add(str(key))
            self._keys_cache = (gen, by_collection)
        wanted = self._keys_cache[1].keys() if collections is None else collections
        keys = set(BUILTIN_FILTER_KEYS)
        for name in wanted:
            keys |= self._keys_cache[1].get(name, set())
        return keys

    def get_chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        """Return the stored chunks with these ids."""
        out: dict[int, StoredChunk] = {}
        unique = list(dict.fromkeys(int(i) for i in ids))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            for row in self._conn().execute(
                f"SELECT {_CHUNK_SELECT} FROM chunks c JOIN documents d ON d.id = c.document_id"
                f" WHERE c.id IN ({marks})",
                part,
            ):
                chunk = _stored_chunk(row)
                out[chunk.id] = chunk
        return out

    # -- search -------------------------------------------------------------------------------------

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Yield this thread's connection inside one read transaction: every query sees the same state."""
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _dense_index(self, model: str) -> DenseIndex:
        gen = self.generation()
        with self._index_lock:
            cached = self._dense if self._dense is not None and self._dense[0] == model else None
            if cached is not None and cached[2] == gen:
                return cached[1]
            with self._snapshot() as conn:
                now = generation(conn)
                index = dense_index(conn, model, now, cached[1:] if cached else None)
            self._dense = (model, index, now)
            return index

    def _sentence_index(self, model: str) -> tuple[DenseIndex, npt.NDArray[np.int64]]:
        """Return the index of every stored sentence vector (row i: sentence i) and each row's (chunk id, start,
        end) in document offsets; a sentence repeated by overlapping chunks is kept once."""
        gen = self.generation()
        with self._index_lock:
            cached = self._sentences if self._sentences is not None and self._sentences[0] == model else None
            if cached is not None and cached[3] == gen:
                return cached[1], cached[2]
            with self._snapshot() as conn:
                now = generation(conn)
                index, located = sentence_index(conn, model, now, cached[1:] if cached else None)
            self._sentences = (model, index, located, now)
            return index, located

    def sentence_search(self, model: str, query: Vectors, k: int, filters: Filters) -> list[SentenceHit]:
        """Return up to k stored sentences most similar to the query, best first, among documents passing
        filters (an empty list when the store holds no sentence vectors under `model`)."""
        index, located = self._sentence_index(model)
        if index.chunk_ids.size and index.matrix.shape[1] != query.shape[0]:
            raise ArchivistError(
                f"query vector has {query.shape[0]} dimensions, stored {model} vectors have {index.matrix.shape[1]}"
            )
        found = index.search(query, k, self._allowed_documents(filters))
        out = []
        for row, score in found:
            chunk_id, start, end = (int(x) for x in located[row])
            out.append(SentenceHit(chunk_id, start, end, score))
        return out

    def _lexical(self) -> Lexical:
        gen = self.generation()
        with self._index_lock:
            cached = self._bm25
            if cached is not None and cached.generation == gen:
                return cached
            with self._snapshot() as conn:
                self._bm25 = fresh = lexical_index(conn, generation(conn), cached)
            return fresh

    def _lexical_index(self) -> tuple[LexicalIndex, dict[str, int]]:
        lexical = self._lexical()
        return lexical.chunks, lexical.vocab

    def _document_lexical_index(self, lexical: Lexical) -> LexicalIndex:
        with self._index_lock:
            return document_index(lexical)

    def _allowed_documents(self, filters: Filters) -> npt.NDArray[np.bool_] | None:
        """Return a lookup table over document rowids of those passing the filters (None: no filter)."""
        if not filters:
            return None
        # Dense and BM25 both ask for the same filter in one search: compute it once per generation.
        key = (self.generation(), filters)
        cached = self._allowed_cache.get(key)
        if cached is not None:
            return cached
        where, params = _filter_sql(filters)
        rowids = np.fromiter(
            (r[0] for r in self._conn().execute(f"SELECT d.rowid FROM documents d WHERE {where}", params)),
            dtype=np.int64,
        )
        table = np.zeros(int(rowids.max()) + 1 if rowids.size else 0, dtype=bool)
        table[rowids] = True
        if len(self._allowed_cache) >= 64:
            self._allowed_cache.clear()
        self._allowed_cache[key] = table
        return table

    def dense_search(self, model: str, query: Vectors, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Return up to k (chunk id, cosine similarity) pairs, best first, among chunks passing filters."""
        index = self._dense_index(model)
        if index.chunk_ids.size and index.matrix.shape[1] != query.shape[0]:
            raise ArchivistError(
                f"query vector has {query.shape[0]} dimensions, stored {model} vectors have {index.matrix.shape[1]}"
            )
        return index.search(query, k, self._allowed_documents(filters))

    def bm25_search(self, query: str, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Return up to k (chunk id, BM25 score; higher is better) pairs, best first, among chunks passing filters."""
        index, vocab = self._lexical_index()
        term_ids = [vocab[t] for t in self._analyzer.terms(query) if t in vocab]
        return index.search(term_ids, k, self._allowed_documents(filters))

    def candidate_scores(self, model: str, query_vector: Vectors, query: str, ids: Sequence[int]) -> CandidateScores:
        """Return dense, chunk BM25 and document BM25 scores of the given chunks, with each one's corpus spread."""
        dense = self._dense_index(model)
        both = self._lexical()
        lexical, vocab = both.chunks, both.vocab
        # Derived from this chunk index, so both always describe the same generation.
        documents = self._document_lexical_index(both)
        term_ids = [vocab[t] for t in self._analyzer.terms(query) if t in vocab]
        wanted = np.asarray(list(ids), dtype=np.int64)
        d_mean, d_std = dense.score_stats(query_vector)
        b_mean, b_std = lexical.score_stats(term_ids)
        doc_mean, doc_std = documents.score_stats(term_ids)
        pos = np.minimum(np.searchsorted(lexical.chunk_ids, wanted), max(lexical.chunk_ids.size - 1, 0))
        # Unknown chunks map to document rowid -1, which has no row and scores 0.
        owners = np.where(lexical.chunk_ids[pos] == wanted, lexical.doc_rows[pos], -1) if wanted.size else wanted
        return CandidateScores(
            dense=[float(x) for x in dense.score_ids(query_vector, wanted)],
            bm25=[float(x) for x in lexical.score_ids(term_ids, wanted)],
            dense_mean=d_mean,
            dense_std=d_std,
            bm25_mean=b_mean,
            bm25_std=b_std,
            doc_bm25=[float(x) for x in documents.score_ids(term_ids, owners)],
            doc_bm25_mean=doc_mean,
            doc_bm25_std=doc_std,
        )

    # -- housekeeping -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return counts and sizes: documents, chunks, vectors per model, bytes on disk."""
        conn = self._conn()
        vectors = {m: int(n) for m, n in conn.execute("SELECT model, COUNT(*) FROM embeddings GROUP BY model")}
        sentences = {m: int(n) for m, n in conn.execute("SELECT model, COUNT(*) FROM sentence_vectors GROUP BY model")}
        size = 0
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                size += Path(f"{self.path}{suffix}").stat().st_size
        return {
            "store": self.url,
            "documents": int(conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]),
            "chunks": int(conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]),
            "tokens": int(conn.execute("SELECT COALESCE(SUM(token_count), 0) FROM chunks").fetchone()[0]),
            "vectors": vectors,
            # embedded texts whose sentence vectors are stored, per model and splitter version
            "sentence_vectors": sentences,
            "bytes": size,
            "schema_version": self.schema_version(),
        }

    def cache_get(self, key: str, now: float) -> str | None:
        """Return a cached value that has not expired at `now` (epoch seconds), or None."""
        row = (
            self._conn().execute("SELECT value FROM llm_cache WHERE key = ? AND expires_at > ?", (key, now)).fetchone()
        )
        return str(row[0]) if row else None

    def cache_put(self, key: str, value: str, now: float, ttl_s: float) -> None:
        """Store a value under a key until `now + ttl_s`, dropping expired entries as it goes."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM llm_cache WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT OR REPLACE INTO llm_cache (key, value, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (key, value, now, now + ttl_s),
            )

    def spend_get(self, key: str, period: str) -> tuple[int, float]:
        """Return the tokens and dollars recorded against a budget key in a period (0, 0.0 if none)."""
        row = (
            self._conn()
            .execute("SELECT tokens, cost_usd FROM llm_spend WHERE key = ? AND period = ?", (key, period))
            .fetchone()
        )
        return (int(row[0]), float(row[1])) if row else (0, 0.0)

    def spend_add(self, key: str, period: str, tokens: int, cost_usd: float) -> None:
        """Add tokens and dollars to a budget key's total for a period."""
        with self._transaction() as conn:
            # One statement: concurrent writers (threads or processes) add up instead of overwriting.
            conn.execute(
                "INSERT INTO llm_spend (key, period, tokens, cost_usd) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key, period) DO UPDATE SET tokens = tokens + excluded.tokens,"
                " cost_usd = cost_usd + excluded.cost_usd",
                (key, period, tokens, cost_usd),
            )

    def save_eval_run(self, record: dict[str, Any]) -> None:
        """Store an eval run record (a JSON-ready dict with id, kind, dataset, split, tag, created_at)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO eval_runs (id, kind, dataset, split, tag, created_at, fingerprint_hash, record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record["id"],
                    record["kind"],
                    record["dataset"],
                    record["split"],
                    record.get("tag"),
                    record["created_at"],
                    record["fingerprint_hash"],
                    json.dumps(record, ensure_ascii=False),
                ),
            )

    def list_eval_runs(self, *, dataset: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Return stored eval run records, newest first."""
        where, params = ("WHERE dataset = ?", [dataset]) if dataset else ("", [])
        rows = self._conn().execute(
            f"SELECT record FROM eval_runs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?", [*params, limit]
        )
        return [json.loads(r[0]) for r in rows]

    def get_eval_run(self, run_id: str) -> dict[str, Any] | None:
        """Return one eval run record by id or unique id prefix, or None."""
        rows = (
            self._conn()
            .execute(
                # A prefix compared as text, not a LIKE pattern: '_' and '%' in an id match only themselves.
                "SELECT record FROM eval_runs WHERE id = ? OR substr(id, 1, ?) = ? LIMIT 2",
                (run_id, len(run_id), run_id),
            )
            .fetchall()
        )
        if len(rows) != 1:
            exact = [r for r in rows if json.loads(r[0])["id"] == run_id]
            return json.loads(exact[0][0]) if exact else None
        return dict(json.loads(rows[0][0]))

    # -- collections, API keys, jobs, request log (the HTTP service) -------------------------------

    def create_collection(self, name: str, description: str = "") -> CollectionRecord:
        """Create a collection and return it, or raise ConflictError when the name is taken."""
        created = _now()
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO collections (name, description, created_at) VALUES (?, ?, ?)",
                    (name, description, created),
                )
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"collection {name!r} exists already") from exc
        return CollectionRecord(name, description, created, 0)

    def list_collections(self) -> list[CollectionRecord]:
        """Return every collection with its document count, by name."""
        rows = self._conn().execute(
            "SELECT c.name, c.description, c.created_at, COUNT(d.id) FROM collections c"
            " LEFT JOIN documents d ON d.collection = c.name GROUP BY c.name ORDER BY c.name"
        )
        return [CollectionRecord(*r) for r in rows]

    def has_collection(self, name: str) -> bool:
        """Return whether a collection exists (cheap: checked on every scoped request)."""
        return self._conn().execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone() is not None

    def save_api_key(self, key: ApiKeyRecord) -> None:
        """Store a new API key record."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO api_keys (id, name, secret_hash, scopes, collections, budget_tokens, budget_usd,"
                " budget_period, rate_per_minute, created_at, revoked_at, last_used_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.name,
                    key.secret_hash,
                    json.dumps(list(key.scopes)),
                    json.dumps(list(key.collections)) if key.collections is not None else None,
                    key.budget_tokens,
                    key.budget_usd,
                    key.budget_period,
                    key.rate_per_minute,
                    key.created_at,
                    key.revoked_at,
                    key.last_used_at,
                ),
            )

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """Return an API key record by id (revoked ones included), or None."""
        row = self._conn().execute(f"SELECT {_KEY_SELECT} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return _key_record(row) if row else None

    def list_api_keys(self) -> list[ApiKeyRecord]:
        """Return every API key record, oldest first."""
        rows = self._conn().execute(f"SELECT {_KEY_SELECT} FROM api_keys ORDER BY created_at, id")
        return [_key_record(r) for r in rows]

    def revoke_api_key(self, key_id: str, now: str) -> bool:
        """Mark a key revoked; return whether an active key of that id existed."""
        with self._transaction() as conn:
            cur = conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id))
            return cur.rowcount > 0

    def touch_api_key(self, key_id: str, now: str) -> None:
        """Record that a key was just used."""
        with self._transaction() as conn:
            conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key_id))

    def create_job(self, job: JobRecord) -> None:
        """Store a new job."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, kind, collection, status, payload, done, total, result, error, key_id,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.kind,
                    job.collection,
                    job.status,
                    json.dumps(job.payload, ensure_ascii=False),
                    job.done,
                    job.total,
                    json.dumps(job.result) if job.result is not None else None,
                    job.error,
                    job.key_id,
                    job.created_at,
                    job.updated_at,
                ),
            )

    def update_job(self, job_id: str, *, worker: str | None = None, **fields: Any) -> bool:
        """Set a job's status, done, total, result, error, payload, attempts or lease (and its updated_at); with
        `worker`, only while that worker holds the job. Return whether the job was updated."""
        allowed = {"status", "done", "total", "result", "error", "payload", "attempts", "locked_until", "locked_by"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"update_job: unknown fields {sorted(unknown)}")
        values = {
            k: json.dumps(v, ensure_ascii=False) if k in ("result", "payload") and v is not None else v
            for k, v in fields.items()
        }
        values["updated_at"] = _now()
        sets = ", ".join(f"{k} = ?" for k in values)
        where, params = "id = ?", [job_id]
        if worker is not None:
            where, params = where + " AND locked_by = ? AND status = 'running'", [job_id, worker]
        with self._transaction() as conn:
            return conn.execute(f"UPDATE jobs SET {sets} WHERE {where}", [*values.values(), *params]).rowcount > 0

    def get_job(self, job_id: str) -> JobRecord | None:
        """Return one job, or None."""
        row = self._conn().execute(f"SELECT {_JOB_SELECT} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_record(row) if row else None

    def list_jobs(self, *, collections: Sequence[str] | None = None, limit: int = 50) -> list[JobRecord]:
        """Return jobs of these collections (None: all), newest first."""
        where, params = "", list(collections or ())
        if collections is not None:
            where = f"WHERE collection IN ({','.join('?' * len(params))})" if params else "WHERE 0"
        rows = self._conn().execute(
            f"SELECT {_JOB_SELECT} FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?", [*params, limit]
        )
        return [_job_record(r) for r in rows]

    def claim_job(self, worker: str, *, lease_s: float, max_attempts: int) -> JobRecord | None:
        """Take the oldest job that is queued (past any retry delay) or whose worker's lease ran out, and hold it
        for `lease_s` seconds (None when there is none). A job whose lease ran out on its last attempt ends
        failed instead."""
        now = time.time()
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'failed', locked_by = NULL, locked_until = NULL, updated_at = ?,"
                " error = 'gave up after ' || attempts || ' attempts: the worker running it stopped before"
                " finishing' || COALESCE('; last error: ' || error, '')"
                " WHERE status = 'running' AND locked_until < ? AND attempts >= ?",
                (_now(), now, max_attempts),
            )
            row = conn.execute(
                f"SELECT {_JOB_SELECT} FROM jobs WHERE (status = 'queued' AND COALESCE(locked_until, 0) <= ?)"
                " OR (status = 'running' AND COALESCE(locked_until, 0) < ?) ORDER BY created_at, rowid LIMIT 1",
                (now, now),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_until = ?, locked_by = ?,"
                " updated_at = ? WHERE id = ?",
                (now + lease_s, worker, _now(), row[0]),
            )
        job = _job_record(row)
        job.status, job.attempts, job.locked_until, job.locked_by = "running", job.attempts + 1, now + lease_s, worker
        return job

    def renew_job(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend the lease of a job the worker holds; return False when it holds it no longer."""
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET locked_until = ? WHERE id = ? AND locked_by = ? AND status = 'running'",
                (time.time() + lease_s, job_id, worker),
            )
            return cur.rowcount > 0

    def job_counts(self) -> dict[str, int]:
        """Return how many jobs are in each status."""
        rows = self._conn().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        return {str(status): int(n) for status, n in rows}

    def log_requests(self, rows: Sequence[RequestLogRow]) -> None:
        """Append served requests to the request log."""
        if not rows:
            return
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO request_log (request_id, at, key_id, method, route, status, latency_ms, tokens,"
                " cost_usd, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.request_id,
                        r.at,
                        r.key_id,
                        r.method,
                        r.route,
                        r.status,
                        r.latency_ms,
                        r.tokens,
                        r.cost_usd,
                        r.outcome,
                    )
                    for r in rows
                ],
            )

    def request_log(self, *, since: str, key_id: str | None = None) -> list[RequestLogRow]:
        """Return logged requests at or after `since` (UTC ISO time), of one key or all."""
        where, params = ("AND key_id = ?", [key_id]) if key_id else ("", [])
        rows = self._conn().execute(
            "SELECT request_id, at, key_id, method, route, status, latency_ms, tokens, cost_usd, outcome"
            " FROM request_log"
            f" WHERE at >= ? {where} ORDER BY at",
            [since, *params],
        )
        return [RequestLogRow(*r) for r in rows]

    def close(self) -> None:
        """Release connections and files."""
        with self._conns_lock:
            for conn in self._conns:
                with suppress(sqlite3.Error):
                    conn.close()
            self._conns.clear()
        self._local = threading.local()
        self._dense = None
        self._sentences = None
        self._bm25 = None


def _use_wal(conn: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """Put the file in WAL mode (once per file: the mode is stored in it).

    Switching needs a moment alone with the file, and SQLite answers "database is locked" at once, without waiting
    out the busy timeout, when processes open a fresh file together: retry until the timeout instead."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _filter_sql(filters: Filters) -> tuple[str, list[Any]]:
    """Return a SQL condition over `documents d` for the filters, and its parameters."""
    if not filters:
        return "1", []
    parts: list[str] = []
    params: list[Any] = []
    if filters.scope is not None:
        # The request's collections: a clause of its own, ANDed with the user's clauses (never ORed into them).
        parts.append(f"d.collection IN ({','.join('?' * len(filters.scope))})" if filters.scope else "0")
        params.extend(filters.scope)
    for key, clauses in filters.by_key().items():
        column = _DOC_COLUMNS.get(key, "CAST(json_extract(d.metadata, ?) AS TEXT)")
        ors = []
        for c in clauses:
            ors.append(f"{column} {'GLOB' if c.is_glob else '='} ?")
            if key not in _DOC_COLUMNS:
                params.append('$."' + key.replace('"', "") + '"')
            params.append(c.value)
        parts.append("(" + " OR ".join(ors) + ")")
    return " AND ".join(parts), params


_DOC_SELECT = (
    "d.id, d.source, d.title, d.media_type, d.content_hash, d.metadata, d.chunk_count, d.char_count,"
    " d.created_at, d.updated_at, d.version, d.collection"
)
_CHUNK_SELECT = (
    'c.id, c.document_id, c.ordinal, c.text, c.heading_path, c.start, c."end", c.page, c.page_end,'
    " c.token_count, d.source, d.title, d.metadata, d.collection"
)


_KEY_SELECT = (
    "id, name, secret_hash, scopes, collections, created_at, budget_tokens, budget_usd, budget_period,"
    " rate_per_minute, revoked_at, last_used_at"
)
_JOB_SELECT = (
    "id, kind, collection, status, payload, created_at, updated_at, done, total, result, error, key_id, attempts,"
    " locked_until, locked_by"
)


def _key_record(row: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row[0],
        name=row[1],
        secret_hash=row[2],
        scopes=tuple(json.loads(row[3])),
        collections=tuple(json.loads(row[4])) if row[4] is not None else None,
        created_at=row[5],
        budget_tokens=row[6],
        budget_usd=row[7],
        budget_period=row[8],
        rate_per_minute=row[9],
        revoked_at=row[10],
        last_used_at=row[11],
    )


def _job_record(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        id=row[0],
        kind=row[1],
        collection=row[2],
        status=row[3],
        payload=json.loads(row[4]),
        created_at=row[5],
        updated_at=row[6],
        done=row[7],
        total=row[8],
        result=json.loads(row[9]) if row[9] is not None else None,
        error=row[10],
        key_id=row[11],
        attempts=row[12],
        locked_until=row[13],
        locked_by=row[14],
    )


def _doc_record(row: Sequence[Any]) -> DocumentRecord:
    return DocumentRecord(
        id=row[0],
        source=row[1],
        title=row[2],
        media_type=row[3],
        content_hash=row[4],
        metadata=json.loads(row[5]),
        chunk_count=row[6],
        char_count=row[7],
        created_at=row[8],
        updated_at=row[9],
        version=row[10],
        collection=row[11],
    )


def _stored_chunk(row: Sequence[Any]) -> StoredChunk:
    return StoredChunk(
        id=row[0],
        document_id=row[1],
        ordinal=row[2],
        text=row[3],
        heading_path=tuple(json.loads(row[4])),
        start=row[5],
        end=row[6],
        page=row[7],
        page_end=row[8],
        token_count=row[9],
        source=row[10],
        title=row[11],
        metadata=json.loads(row[12]),
        collection=row[13],
    )


def _split_sql(script: str) -> list[str]:
    """Return the statements of a migration script (semicolons end statements, except inside a trigger's body)."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    out: list[str] = []
    pending = ""
    for part in "\n".join(lines).split(";"):
        pending = f"{pending};{part}" if pending else part
        statement = pending.strip()
        # A trigger's body ends at END (a body that holds CASE … END; would be cut there: none does).
        is_trigger = re.match(r"CREATE\s+(TEMP\s+|TEMPORARY\s+)?TRIGGER\b", statement, re.I)
        if is_trigger and not re.search(r"\bEND$", statement, re.I):
            continue
        if statement:
            out.append(statement)
        pending = ""
    return out


def _pack_spans(spans: Sequence[tuple[int, int]]) -> bytes:
    """Return (start, end) pairs as int32 bytes (an empty list packs to no bytes)."""
    return np.asarray(spans, dtype=np.int32).reshape(-1, 2).tobytes()
