"""Documents, chunks, vectors and sentence vectors in SQLite, with the change feed of the chunks."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from archivist.embed.base import Vectors
from archivist.store.filters import BUILTIN_FILTER_KEYS, Filters
from archivist.store.lexical import encode_counts
from archivist.store.records import (
    Changes,
    ChunkPlace,
    DocumentOrder,
    DocumentWrite,
    SentenceVectors,
    StoredChunk,
    WriteOutcome,
)
from archivist.store.rows import kept_clearances, utc_now
from archivist.store.sqlite.database import SQLiteDatabase
from archivist.store.sqlite.index import DELETION_LOG_GENERATIONS, changes
from archivist.store.sqlite.sql import CHUNK_SELECT, DOC_SELECT, doc_record, filter_sql, stored_chunk
from archivist.types import DEFAULT_COLLECTION, ArchivistError, DocumentRecord


class SQLiteDocuments(SQLiteDatabase):
    """The `DocumentStore` of an SQLite file."""

    def __init__(self, path: Path, *, url: str | None = None) -> None:
        # The metadata keys per collection, with the generation they were read at.
        self._keys_cache: tuple[int, dict[str, set[str]]] | None = None
        super().__init__(path, url=url)

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
        """Return what happened to each write, in order (see `DocumentStore.write_documents`).

        A document is one transaction under SQLite's write lock, so "unchanged" is decided where no other process
        can write between the check and the write."""
        if not writes:
            return []
        for w in writes:
            missing = [h for h in w.embed_hashes if h not in vectors]
            if missing:
                raise ArchivistError(f"{w.document.source}: {len(missing)} chunk vectors missing from the write")
        now = utc_now()
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
                guards = w.guard_rows()
                if prev is not None:
                    cleared = conn.execute(
                        "SELECT embed_hash, guard_cleared_by, guard_cleared_at FROM chunks"
                        " WHERE document_id = ? AND guard_cleared_at IS NOT NULL",
                        (prev[0],),
                    ).fetchall()
                    guards = kept_clearances(guards, w.embed_hashes, {h: (by, at) for h, by, at in cleared})
                    self._delete_in(conn, prev[0])
                content_hash, version, created, updated = w.kept_fields(
                    prev[1] + 1 if prev else 1, prev[2] if prev else now, now
                )
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
                        content_hash,
                        w.chunker,
                        json.dumps(doc.metadata, ensure_ascii=False, sort_keys=True),
                        len(w.chunks),
                        len(doc.text),
                        version,
                        created,
                        updated,
                    ),
                )
                for chunk, h, tc, g in zip(w.chunks, w.embed_hashes, doc_counts, guards, strict=True):
                    heading = json.dumps(list(chunk.heading_path), ensure_ascii=False)
                    terms = encode_counts([term_ids[t] for t in tc], list(tc.values()))
                    conn.execute(
                        'INSERT INTO chunks (document_id, ordinal, text, heading_path, start, "end", page,'
                        " page_end, token_count, embed_hash, terms, guard_score, guard_flagged, guard_cleared_by,"
                        " guard_cleared_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                            g.score,
                            int(g.flagged),
                            g.cleared_by,
                            g.cleared_at,
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

    def guard_scores(self, hashes: Sequence[str]) -> dict[str, float]:
        """Return the injection score stored with a chunk of each of these embedding hashes that has one."""
        conn = self._conn()
        out: dict[str, float] = {}
        unique = list(dict.fromkeys(hashes))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            sql = (
                "SELECT embed_hash, MAX(guard_score) FROM chunks"
                f" WHERE embed_hash IN ({marks}) AND guard_score IS NOT NULL GROUP BY embed_hash"
            )
            out.update((h, float(score)) for h, score in conn.execute(sql, part))
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
        # The change feed reaches back DELETION_LOG_GENERATIONS writes; an index older than that is built anew. Its
        # reach moves with the pruning of every log (a run of writes that only add must not outrun it either).
        oldest = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        oldest -= DELETION_LOG_GENERATIONS
        for log in ("vector_inserts", "chunk_inserts", "chunk_deletions"):
            conn.execute(f"DELETE FROM {log} WHERE generation < ?", (oldest,))
        conn.execute("UPDATE meta SET value = MAX(CAST(value AS INTEGER), ?) WHERE key = 'deletions_since'", (oldest,))

    def changes_since(self, generation: int) -> Changes | None:
        """Return what changed in the chunks after `generation`, or None when the feed does not reach back that far
        (or the store went back to an older generation): a reader of derived data then reads everything anew."""
        with self._snapshot() as conn:
            return changes(conn, generation)

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """Return one stored document, or None."""
        row = self._conn().execute(f"SELECT {DOC_SELECT} FROM documents d WHERE d.id = ?", (document_id,)).fetchone()
        return doc_record(row) if row else None

    def list_documents(
        self, *, limit: int = 100, offset: int = 0, filters: Filters = Filters(), order: DocumentOrder = "source"
    ) -> list[DocumentRecord]:
        """Return stored documents ordered by source, or newest first (by when each was last written)."""
        where, params = filter_sql(filters)
        by = "d.source" if order == "source" else "d.updated_at DESC, d.rowid DESC"
        rows = self._conn().execute(
            f"SELECT {DOC_SELECT} FROM documents d WHERE {where} ORDER BY {by} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [doc_record(r) for r in rows]

    def count_documents(self, filters: Filters = Filters()) -> int:
        """Return how many stored documents pass the filters."""
        where, params = filter_sql(filters)
        return int(self._conn().execute(f"SELECT COUNT(*) FROM documents d WHERE {where}", params).fetchone()[0])

    def document_chunks(self, document_id: str) -> list[StoredChunk]:
        """Return a document's chunks in order."""
        rows = self._conn().execute(
            f"SELECT {CHUNK_SELECT} FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.document_id = ? ORDER BY c.ordinal",
            (document_id,),
        )
        return [stored_chunk(r) for r in rows]

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
        return {chunk.id: chunk for chunk in map(stored_chunk, self._chunk_rows(CHUNK_SELECT, ids))}

    def chunk_places(self, ids: Sequence[int]) -> dict[int, ChunkPlace]:
        """Return the document, document title and position of the chunks with these ids (no text: cheaper)."""
        rows = self._chunk_rows("c.id, c.document_id, d.title, c.ordinal", ids)
        return {int(cid): ChunkPlace(str(doc), str(title), int(ordinal)) for cid, doc, title, ordinal in rows}

    def _chunk_rows(self, columns: str, ids: Sequence[int]) -> Iterator[Any]:
        """Yield `columns` of chunk `c` joined with its document `d` for each of these ids that exists, once each
        (500 ids a statement: SQLite's limit on bound parameters is lower in old builds)."""
        unique = list(dict.fromkeys(int(i) for i in ids))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            yield from self._conn().execute(
                f"SELECT {columns} FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id IN ({marks})",
                part,
            )

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


def _pack_spans(spans: Sequence[tuple[int, int]]) -> bytes:
    """Return (start, end) pairs as int32 bytes (an empty list packs to no bytes)."""
    return np.asarray(spans, dtype=np.int32).reshape(-1, 2).tobytes()
