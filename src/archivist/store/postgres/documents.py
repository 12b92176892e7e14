"""Documents, chunks, vectors (pgvector) and sentence vectors in PostgreSQL, with BM25 term statistics and the change
feed of the chunks, all written in the document's transaction."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pgvector import HalfVector, Vector
from pgvector.psycopg import register_vector
from psycopg import sql

from archivist.embed.base import Vectors
from archivist.store.filters import BUILTIN_FILTER_KEYS, Filters
from archivist.store.postgres.database import Connection, PostgresDatabase
from archivist.store.postgres.docsql import (
    CHUNK_SELECT,
    DOC_SELECT,
    doc_record,
    filter_sql,
    index_kind,
    json_fields,
    stored_chunk,
)
from archivist.store.records import (
    Changes,
    ChunkGuard,
    ChunkPlace,
    DocumentOrder,
    DocumentWrite,
    SentenceVectors,
    StoredChunk,
    WriteOutcome,
)
from archivist.store.rows import kept_clearances, utc_now
from archivist.text.analyzer import BM25_TERMS, analyzer
from archivist.types import DEFAULT_COLLECTION, ArchivistError, DocumentRecord

#: how many writes back the change feed reaches (as on SQLite)
DELETION_LOG_GENERATIONS = 1000
#: HNSW build parameters of each model's index (see docs/postgres.md to rebuild with others): pgvector's m, and twice
#: its ef_construction, which on 1M clustered 384-d vectors raised recall@10 at ef_search 400 from 0.83 to 0.96 for
#: about a tenth more build time (`python benchmarks/postgres_scale.py --vectors-only 1000000 --builds 16:64,16:128`)
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 128


@dataclass(slots=True)
class _Moments:
    """What one write adds to (or takes from) a model's vector sums: rows and Σx in float64 (the second moment a
    query's spread needs is estimated by the search side, `PostgresSearch._cosine_variance`)."""

    rows: int = 0
    total: npt.NDArray[np.float64] | None = None

    def add(self, matrix: npt.NDArray[np.float64], sign: int) -> None:
        """Add (sign 1) or take away (sign -1) the rows of a matrix."""
        if self.total is None:
            self.total = np.zeros(matrix.shape[1])
        self.rows += sign * matrix.shape[0]
        self.total += sign * matrix.sum(axis=0)


@dataclass(slots=True)
class _WriteState:
    """What a write transaction changes beyond its rows: the BM25 totals and the vector sums per model."""

    chunks: int = 0
    chunk_length: int = 0
    documents: int = 0
    document_length: int = 0
    moments: dict[str, _Moments] = field(default_factory=dict)
    #: rows the inserted chunks and documents add to each term's chunk and document frequency, by term id
    chunk_df: Counter[int] = field(default_factory=Counter)
    doc_df: Counter[int] = field(default_factory=Counter)

    def vectors(self, rows: Sequence[tuple[str, Vector]], sign: int) -> None:
        """Count (model, vector) rows into each model's sums."""
        by_model: dict[str, list[npt.NDArray[np.float32]]] = {}
        for model, vector in rows:
            by_model.setdefault(model, []).append(vector.to_numpy())
        for model, vectors in by_model.items():
            self.moments.setdefault(model, _Moments()).add(np.stack(vectors).astype(np.float64), sign)


class PostgresDocuments(PostgresDatabase):
    """The `DocumentStore` of a PostgreSQL database."""

    def __init__(self, url: str) -> None:
        # The metadata keys per collection, with the generation they were read at.
        self._keys_cache: tuple[int, dict[str, set[str]]] | None = None
        self._analyzer = analyzer(BM25_TERMS)
        super().__init__(url)

    def _configure(self, conn: Connection) -> None:
        """Set up a new pooled connection: pgvector's types (vectors travel as numpy arrays), then the base's."""
        register_vector(conn)
        super()._configure(conn)

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """Yield a pooled connection inside a read-only transaction that sees one snapshot for all its reads."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn

    def document_states(
        self, sources: Sequence[str], collection: str = DEFAULT_COLLECTION
    ) -> dict[str, tuple[str, str]]:
        """Return {source: (content_hash, chunker fingerprint)} for the stored ones among `sources`."""
        rows = self._fetchall(
            "SELECT source, content_hash, chunker FROM documents WHERE collection = %s AND source = ANY(%s)",
            (collection, list(sources)),
        )
        return {s: (h, c) for s, h, c in rows}

    def cached_vectors(self, model: str, hashes: Sequence[str]) -> dict[str, Vectors]:
        """Return the stored vectors of `model` for those embedding hashes that have one."""
        with self._pool.connection() as conn, conn.cursor(binary=True) as cur:
            cur.execute(
                "SELECT text_hash, vector FROM embeddings WHERE model = %s AND text_hash = ANY(%s)",
                (model, list(dict.fromkeys(hashes))),
            )
            return {h: v.to_numpy() for h, v in cur}

    def write_documents(
        self,
        model: str,
        writes: Sequence[DocumentWrite],
        vectors: dict[str, Vectors],
        sentences: tuple[str, dict[str, SentenceVectors]] | None = None,
        *,
        skip_unchanged: bool = False,
    ) -> list[WriteOutcome]:
        """Return what happened to each write, in order (see `DocumentStore.write_documents`).

        The batch is one transaction that first locks the generation row: writers take turns, so "unchanged" is
        decided where no other process can write between the check and the write."""
        if not writes:
            return []
        for w in writes:
            missing = [h for h in w.embed_hashes if h not in vectors]
            if missing:
                raise ArchivistError(f"{w.document.source}: {len(missing)} chunk vectors missing from the write")
        now = utc_now()
        counts = [[self._analyzer.counts(c.embedding_text(w.document.title)) for c in w.chunks] for w in writes]
        outcomes: list[WriteOutcome] = []
        state = _WriteState()
        with self._transaction() as conn:
            generation = _lock_generation(conn)
            term_ids = _term_ids(conn, {t for per_doc in counts for c in per_doc for t in c})
            self._vector_model(conn, model, writes, vectors)
            for w, doc_counts in zip(writes, counts, strict=True):
                doc = w.document
                prev = conn.execute(
                    "SELECT id, version, created_at, content_hash, chunker FROM documents"
                    " WHERE collection = %s AND source = %s",
                    (doc.collection, doc.source),
                ).fetchone()
                if skip_unchanged and prev is not None and (prev[3], prev[4]) == (doc.content_hash, w.chunker):
                    outcomes.append("unchanged")
                    continue
                outcomes.append("updated" if prev is not None else "added")
                guards = w.guard_rows()
                if prev is not None:
                    cleared = conn.execute(
                        "SELECT embed_hash, guard_cleared_by, guard_cleared_at FROM chunks"
                        " WHERE document_id = %s AND guard_cleared_at IS NOT NULL",
                        (prev[0],),
                    ).fetchall()
                    guards = kept_clearances(guards, w.embed_hashes, {h: (by, at) for h, by, at in cleared})
                    _delete_in(conn, prev[0], generation, state)
                self._insert_document(conn, w, guards, doc_counts, term_ids, now, prev, generation, state)
                self._insert_vectors(conn, model, w, vectors, sentences, generation, state)
            if any(o != "unchanged" for o in outcomes):
                _finish_write(conn, generation, state)
        return outcomes

    def _vector_model(
        self, conn: Connection, model: str, writes: Sequence[DocumentWrite], vectors: dict[str, Vectors]
    ) -> None:
        """Check the write's vectors have the model's size, registering the model (and building its HNSW index) on
        its first vectors."""
        sizes = {int(np.asarray(vectors[h]).shape[0]) for w in writes for h in w.embed_hashes}
        if not sizes:
            return
        if len(sizes) > 1:
            raise ArchivistError(f"{model} vectors of different sizes in one write: {sorted(sizes)}")
        (dim,) = sizes
        row = conn.execute("SELECT dimensions FROM vector_models WHERE model = %s", (model,)).fetchone()
        if row is not None:
            if int(row[0]) != dim:
                raise ArchivistError(f"{model} vectors have {dim} dimensions, stored {model} vectors have {row[0]}")
            return
        kind = index_kind(dim)  # checked before anything is written
        name = "embeddings_hnsw_" + hashlib.sha256(model.encode()).hexdigest()[:16]
        conn.execute(
            "INSERT INTO vector_models (model, dimensions, index_name) VALUES (%s, %s, %s)", (model, dim, name)
        )
        # One partial index per model over its vectors cast to their size (HNSW needs one size); built empty here,
        # then kept up to date by each insert.
        conn.execute(
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {name} ON embeddings USING hnsw ((vector::{kind}({dim})) {ops})"
                " WITH (m = {m}, ef_construction = {ef}) WHERE model = {model}"
            ).format(
                name=sql.Identifier(name),
                kind=sql.SQL(kind),
                ops=sql.SQL(f"{kind}_cosine_ops"),
                dim=sql.Literal(dim),
                m=sql.Literal(HNSW_M),
                ef=sql.Literal(HNSW_EF_CONSTRUCTION),
                model=sql.Literal(model),
            )
        )

    def _insert_document(
        self,
        conn: Connection,
        w: DocumentWrite,
        guards: Sequence[ChunkGuard],
        doc_counts: list[Counter[str]],
        term_ids: dict[str, int],
        now: str,
        prev: tuple[Any, ...] | None,
        generation: int,
        state: _WriteState,
    ) -> None:
        """Insert one document, its chunks (with their guard verdicts) and their BM25 term counts, and count them
        into the statistics."""
        doc = w.document
        lengths = [sum(c.values()) for c in doc_counts]
        content_hash, version, created, updated = w.kept_fields(
            prev[1] + 1 if prev else 1, prev[2] if prev else now, now
        )
        conn.execute(
            "INSERT INTO documents (id, collection, source, title, media_type, content_hash, chunker, metadata,"
            " fields, chunk_count, char_count, version, term_length, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                doc.id,
                doc.collection,
                doc.source,
                doc.title,
                doc.media_type,
                content_hash,
                w.chunker,
                json.dumps(doc.metadata, ensure_ascii=False, sort_keys=True),
                json_fields(doc.metadata),
                len(w.chunks),
                len(doc.text),
                version,
                sum(lengths),
                created,
                updated,
            ),
        )
        if not w.chunks:
            return
        rows = conn.execute(
            'INSERT INTO chunks (document_id, ordinal, text, heading_path, start, "end", page, page_end, token_count,'
            " embed_hash, term_length, guard_score, guard_flagged, guard_cleared_by, guard_cleared_at)"
            " SELECT %s, * FROM unnest(%s::int[], %s::text[], %s::text[], %s::int[], %s::int[], %s::int[], %s::int[],"
            " %s::int[], %s::text[], %s::int[], %s::float8[], %s::boolean[], %s::text[], %s::text[])"
            " RETURNING id, ordinal",
            (
                doc.id,
                [c.ordinal for c in w.chunks],
                [c.text for c in w.chunks],
                [json.dumps(list(c.heading_path), ensure_ascii=False) for c in w.chunks],
                [c.start for c in w.chunks],
                [c.end for c in w.chunks],
                [c.page for c in w.chunks],
                [c.page_end for c in w.chunks],
                [c.token_count for c in w.chunks],
                list(w.embed_hashes),
                lengths,
                [g.score for g in guards],
                [g.flagged for g in guards],
                [g.cleared_by for g in guards],
                [g.cleared_at for g in guards],
            ),
        ).fetchall()
        id_of = {int(ordinal): int(cid) for cid, ordinal in rows}
        chunk_ids = [id_of[c.ordinal] for c in w.chunks]
        summed: Counter[str] = Counter()
        for tc in doc_counts:
            summed.update(tc)
        with conn.cursor() as cur:
            with cur.copy("COPY chunk_terms (term_id, chunk_id, tf, term_length) FROM STDIN") as copy:
                for cid, tc, length in zip(chunk_ids, doc_counts, lengths, strict=True):
                    for term, n in tc.items():
                        copy.write_row((term_ids[term], cid, n, length))
            with cur.copy("COPY document_terms (term_id, document_id, tf, term_length) FROM STDIN") as copy:
                for term, n in summed.items():
                    copy.write_row((term_ids[term], doc.id, n, sum(lengths)))
        # Counted into the terms' frequencies once for the whole write (`_finish_write`): a common term's row is
        # then rewritten once a batch, not once a document.
        chunk_df = Counter(term_ids[t] for tc in doc_counts for t in tc)
        state.chunk_df.update(chunk_df)
        state.doc_df.update(chunk_df.keys())
        conn.execute(
            "INSERT INTO chunk_inserts (chunk_id, generation) SELECT unnest(%s::bigint[]), %s",
            (chunk_ids, generation),
        )
        state.chunks += len(chunk_ids)
        state.chunk_length += sum(lengths)
        state.documents += 1
        state.document_length += sum(lengths)

    def _insert_vectors(
        self,
        conn: Connection,
        model: str,
        w: DocumentWrite,
        vectors: dict[str, Vectors],
        sentences: tuple[str, dict[str, SentenceVectors]] | None,
        generation: int,
        state: _WriteState,
    ) -> None:
        """Insert the vectors (and sentence vectors) of a document's chunks that are not stored yet, log the hashes
        that gained some, and count the vectors its chunks now join into each model's sums."""
        hashes = list(dict.fromkeys(w.embed_hashes))
        have = {
            h
            for (h,) in conn.execute(
                "SELECT text_hash FROM embeddings WHERE model = %s AND text_hash = ANY(%s)", (model, hashes)
            )
        }
        new = [h for h in hashes if h not in have]
        if new:
            with (
                conn.cursor(binary=True) as cur,
                cur.copy("COPY embeddings (model, text_hash, vector) FROM STDIN") as copy,
            ):
                copy.set_types(["text", "text", "vector"])
                for h in new:
                    copy.write_row((model, h, Vector(np.asarray(vectors[h], dtype=np.float32))))
        gained = set(new)
        if sentences is not None:
            key, by_hash = sentences
            written = [h for h in hashes if h in by_hash]
            if written:
                conn.execute("DELETE FROM sentences WHERE model = %s AND text_hash = ANY(%s)", (key, written))
                conn.execute(
                    "INSERT INTO sentence_sets (model, text_hash, sentences) SELECT %s, * FROM"
                    " unnest(%s::text[], %s::int[]) ON CONFLICT (model, text_hash) DO UPDATE"
                    " SET sentences = excluded.sentences",
                    (key, written, [len(by_hash[h].spans) for h in written]),
                )
                with (
                    conn.cursor(binary=True) as cur,
                    cur.copy('COPY sentences (model, text_hash, ordinal, start, "end", vector) FROM STDIN') as copy,
                ):
                    copy.set_types(["text", "text", "int4", "int4", "int4", "halfvec"])
                    for h in written:
                        sv = by_hash[h]
                        rows = np.asarray(sv.vectors, dtype=np.float32)
                        for i, (start, end) in enumerate(sv.spans):
                            copy.write_row((key, h, i, int(start), int(end), HalfVector(rows[i])))
                gained.update(written)
        if gained:
            conn.execute(
                "INSERT INTO vector_inserts (text_hash, generation) SELECT unnest(%s::text[]), %s",
                (sorted(gained), generation),
            )
        # The vectors this document's chunks join (of every model), and the older chunks that join this model's
        # index through a vector first stored now (the same text, in another document).
        with conn.cursor(binary=True) as cur:
            # Two index lookups, not one OR: an OR across the join's two tables is planned as a scan of both.
            cur.execute(
                "SELECT e.model, e.vector FROM chunks c JOIN embeddings e ON e.text_hash = c.embed_hash"
                " WHERE c.document_id = %s"
                " UNION ALL"
                " SELECT e.model, e.vector FROM chunks c JOIN embeddings e ON e.text_hash = c.embed_hash"
                " WHERE e.model = %s AND c.embed_hash = ANY(%s) AND e.text_hash = ANY(%s) AND c.document_id <> %s",
                (w.document.id, model, new, new, w.document.id),
            )
            state.vectors(cur.fetchall(), 1)

    def sentence_hashes(self, model: str, hashes: Sequence[str]) -> set[str]:
        """Return which of these embedding hashes have sentence vectors under the sentence model key."""
        rows = self._fetchall(
            "SELECT text_hash FROM sentence_sets WHERE model = %s AND text_hash = ANY(%s)",
            (model, list(dict.fromkeys(hashes))),
        )
        return {h for (h,) in rows}

    def guard_scores(self, hashes: Sequence[str]) -> dict[str, float]:
        """Return the injection score stored with a chunk of each of these embedding hashes that has one."""
        rows = self._fetchall(
            "SELECT embed_hash, max(guard_score) FROM chunks WHERE embed_hash = ANY(%s) AND guard_score IS NOT NULL"
            " GROUP BY embed_hash",
            (list(dict.fromkeys(hashes)),),
        )
        return {h: float(score) for h, score in rows}

    def chunk_sentences(self, model: str, chunk_ids: Sequence[int]) -> dict[int, SentenceVectors]:
        """Return the stored sentence vectors of these chunks, spans as document offsets."""
        out: dict[int, tuple[list[tuple[int, int]], list[npt.NDArray[np.float32]]]] = {}
        with self._pool.connection() as conn, conn.cursor(binary=True) as cur:
            cur.execute(
                'SELECT c.id, c.start + s.start, c.start + s."end", s.vector FROM chunks c'
                " JOIN sentence_sets ss ON ss.model = %s AND ss.text_hash = c.embed_hash"
                " LEFT JOIN sentences s ON s.model = ss.model AND s.text_hash = ss.text_hash"
                " WHERE c.id = ANY(%s) ORDER BY c.id, s.ordinal",
                (model, [int(i) for i in dict.fromkeys(chunk_ids)]),
            )
            for chunk_id, start, end, vector in cur:
                spans, rows = out.setdefault(int(chunk_id), ([], []))
                if vector is not None:  # a chunk with no usable sentence (a table, a list of short items)
                    spans.append((int(start), int(end)))
                    rows.append(vector.to_numpy().astype(np.float32))
        return {
            cid: SentenceVectors(spans, np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32))
            for cid, (spans, rows) in out.items()
        }

    def delete_document(self, document_id: str) -> bool:
        """Delete a document and its chunks; return whether it existed."""
        state = _WriteState()
        with self._transaction() as conn:
            generation = _lock_generation(conn)
            found = _delete_in(conn, document_id, generation, state)
            if found:
                _finish_write(conn, generation, state)
        return found

    def generation(self) -> int:
        """Return a counter bumped by every write, for caches of derived data."""
        row = self._fetchone("SELECT value FROM meta WHERE key = 'generation'")
        return int(row[0]) if row else 0

    def changes_since(self, generation: int) -> Changes | None:
        """Return what changed in the chunks after `generation`, or None when the feed does not reach back that far
        (or the store went back to an older generation): a reader of derived data then reads everything anew."""
        with self._snapshot() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('generation', 'deletions_since')"))
            now = int(meta["generation"])
            if generation < int(meta["deletions_since"]) or generation > now:
                return None

            def ids(query: str) -> npt.NDArray[np.int64]:
                return np.fromiter((r[0] for r in conn.execute(query, (generation,))), dtype=np.int64)

            deleted = ids("SELECT DISTINCT chunk_id FROM chunk_deletions WHERE generation >= %s ORDER BY chunk_id")
            added = ids(
                "SELECT DISTINCT i.chunk_id FROM chunk_inserts i JOIN chunks c ON c.id = i.chunk_id"
                " WHERE i.generation >= %s ORDER BY i.chunk_id"
            )
            hashes = conn.execute("SELECT DISTINCT text_hash FROM vector_inserts WHERE generation >= %s", (generation,))
            return Changes(now, deleted, added, frozenset(str(r[0]) for r in hashes))

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """Return one stored document, or None."""
        row = self._fetchone(f"SELECT {DOC_SELECT} FROM documents d WHERE d.id = %s", (document_id,))
        return doc_record(row) if row else None

    def list_documents(
        self, *, limit: int = 100, offset: int = 0, filters: Filters = Filters(), order: DocumentOrder = "source"
    ) -> list[DocumentRecord]:
        """Return stored documents ordered by source, or newest first (by when each was last written)."""
        where, params = filter_sql(filters)
        by = "d.source, d.seq" if order == "source" else "d.updated_at DESC, d.seq DESC"
        rows = self._fetchall(
            f"SELECT {DOC_SELECT} FROM documents d WHERE {where} ORDER BY {by} LIMIT %s OFFSET %s",
            [*params, limit, offset],
        )
        return [doc_record(r) for r in rows]

    def count_documents(self, filters: Filters = Filters()) -> int:
        """Return how many stored documents pass the filters."""
        where, params = filter_sql(filters)
        row = self._fetchone(f"SELECT count(*) FROM documents d WHERE {where}", params)
        return int(row[0]) if row else 0

    def document_chunks(self, document_id: str) -> list[StoredChunk]:
        """Return a document's chunks in order."""
        rows = self._fetchall(
            f"SELECT {CHUNK_SELECT} FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.document_id = %s ORDER BY c.ordinal",
            (document_id,),
        )
        return [stored_chunk(r) for r in rows]

    def sources(self, collection: str = DEFAULT_COLLECTION) -> list[str]:
        """Return the source of every stored document in a collection."""
        rows = self._fetchall("SELECT source FROM documents WHERE collection = %s ORDER BY source", (collection,))
        return [r[0] for r in rows]

    def filter_keys(self, collections: Sequence[str] | None = None) -> set[str]:
        """Return the filter keys that name something in this store: the built-in keys and the metadata keys of
        documents in `collections` (None: every collection)."""
        gen = self.generation()
        if self._keys_cache is None or self._keys_cache[0] != gen:
            rows = self._fetchall("SELECT DISTINCT d.collection, k FROM documents d, jsonb_object_keys(d.fields) k")
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
        rows = self._fetchall(
            f"SELECT {CHUNK_SELECT} FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(%s)",
            ([int(i) for i in dict.fromkeys(ids)],),
        )
        return {chunk.id: chunk for chunk in map(stored_chunk, rows)}

    def chunk_places(self, ids: Sequence[int]) -> dict[int, ChunkPlace]:
        """Return the document, document title and position of the chunks with these ids (no text: cheaper)."""
        rows = self._fetchall(
            "SELECT c.id, c.document_id, d.title, c.ordinal FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.id = ANY(%s)",
            ([int(i) for i in dict.fromkeys(ids)],),
        )
        return {int(cid): ChunkPlace(str(doc), str(title), int(ordinal)) for cid, doc, title, ordinal in rows}

    def stats(self) -> dict[str, Any]:
        """Return counts and sizes: documents, chunks, vectors per model, bytes on disk."""
        with self._snapshot() as conn:
            vectors = dict(conn.execute("SELECT model, count(*) FROM embeddings GROUP BY model"))
            sentences = dict(conn.execute("SELECT model, count(*) FROM sentence_sets GROUP BY model"))
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM documents), count(*), COALESCE(sum(token_count), 0),"
                " pg_database_size(current_database()) FROM chunks"
            ).fetchone()
        assert counts is not None
        return {
            "store": self.url,
            "documents": int(counts[0]),
            "chunks": int(counts[1]),
            "tokens": int(counts[2]),
            "vectors": {str(m): int(n) for m, n in vectors.items()},
            # embedded texts whose sentence vectors are stored, per model and splitter version
            "sentence_vectors": {str(m): int(n) for m, n in sentences.items()},
            "bytes": int(counts[3]),
            "schema_version": self.schema_version(),
        }


def _lock_generation(conn: Connection) -> int:
    """Return the store's generation, locking its row until the transaction ends: writers take turns from here."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'generation' FOR UPDATE").fetchone()
    assert row is not None
    return int(row[0])


def _term_ids(conn: Connection, terms: set[str]) -> dict[str, int]:
    """Return ids for terms, adding the new ones (ids are never reused or changed)."""
    ordered = sorted(terms)
    conn.execute("INSERT INTO terms (term) SELECT unnest(%s::text[]) ON CONFLICT (term) DO NOTHING", (ordered,))
    return {t: int(i) for t, i in conn.execute("SELECT term, id FROM terms WHERE term = ANY(%s)", (ordered,))}


def _delete_in(conn: Connection, document_id: str, generation: int, state: _WriteState) -> bool:
    """Delete a document with its chunks, their term counts and the statistics they were counted in; log the
    chunks deleted. Return whether the document existed."""
    chunks = conn.execute("SELECT id, term_length FROM chunks WHERE document_id = %s", (document_id,)).fetchall()
    if chunks:
        ids = [int(c[0]) for c in chunks]
        conn.execute(
            "UPDATE terms t SET chunk_df = t.chunk_df - x.n FROM (SELECT term_id, count(*) AS n FROM chunk_terms"
            " WHERE chunk_id = ANY(%s) GROUP BY term_id) x WHERE t.id = x.term_id",
            (ids,),
        )
        conn.execute(
            "UPDATE terms t SET doc_df = t.doc_df - 1 FROM document_terms x"
            " WHERE x.document_id = %s AND t.id = x.term_id",
            (document_id,),
        )
        with conn.cursor(binary=True) as cur:
            cur.execute(
                "SELECT e.model, e.vector FROM chunks c JOIN embeddings e ON e.text_hash = c.embed_hash"
                " WHERE c.document_id = %s",
                (document_id,),
            )
            state.vectors(cur.fetchall(), -1)
        conn.execute(
            "INSERT INTO chunk_deletions (chunk_id, generation) SELECT unnest(%s::bigint[]), %s", (ids, generation)
        )
        length = sum(int(c[1]) for c in chunks)
        state.chunks -= len(ids)
        state.chunk_length -= length
        state.documents -= 1
        state.document_length -= length
    # Chunks, their term counts and the document's go with it (ON DELETE CASCADE).
    return conn.execute("DELETE FROM documents WHERE id = %s", (document_id,)).rowcount > 0


def _finish_write(conn: Connection, generation: int, state: _WriteState) -> None:
    """Apply a write's changes to the BM25 totals and the vector sums, bump the generation, and prune the change
    feed's logs to DELETION_LOG_GENERATIONS writes."""
    conn.execute(
        "UPDATE meta SET value = value + x.delta FROM unnest(%s::text[], %s::bigint[]) x(key, delta)"
        " WHERE meta.key = x.key",
        (
            ["bm25_chunks", "bm25_chunk_length", "bm25_documents", "bm25_document_length"],
            [state.chunks, state.chunk_length, state.documents, state.document_length],
        ),
    )
    if state.chunk_df:
        ids = sorted(state.chunk_df)  # the same statement whatever order the batch held its documents in
        conn.execute(
            # `t.id = ANY(…)` as well as the join: the planner then reads those rows by key instead of the table.
            "UPDATE terms t SET chunk_df = t.chunk_df + x.n, doc_df = t.doc_df + x.d"
            " FROM unnest(%s::int[], %s::int[], %s::int[]) x(id, n, d) WHERE t.id = x.id AND t.id = ANY(%s)",
            (ids, [state.chunk_df[i] for i in ids], [state.doc_df[i] for i in ids], ids),
        )
    for model, change in state.moments.items():
        if change.total is None or (not change.rows and not change.total.any()):
            continue
        row = conn.execute("SELECT rows, sum FROM dense_moments WHERE model = %s", (model,)).fetchone()
        rows, total = change.rows, change.total
        if row is not None:
            rows += int(row[0])
            total = total + np.frombuffer(row[1], dtype=np.float64)
        if rows <= 0:  # nothing left: start again from exact zeros rather than rounding residue
            total = np.zeros_like(total)
        conn.execute(
            "INSERT INTO dense_moments (model, rows, sum) VALUES (%s, %s, %s) ON CONFLICT (model)"
            " DO UPDATE SET rows = excluded.rows, sum = excluded.sum",
            (model, max(rows, 0), total.tobytes()),
        )
    now = generation + 1
    conn.execute("UPDATE meta SET value = %s WHERE key = 'generation'", (now,))
    oldest = now - DELETION_LOG_GENERATIONS
    for log in ("vector_inserts", "chunk_inserts", "chunk_deletions"):
        conn.execute(sql.SQL("DELETE FROM {} WHERE generation < %s").format(sql.Identifier(log)), (oldest,))
    conn.execute("UPDATE meta SET value = greatest(value, %s) WHERE key = 'deletions_since'", (oldest,))
