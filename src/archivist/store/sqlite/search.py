"""Dense, BM25 and sentence search over an SQLite file's chunks, on in-memory indexes kept up to date."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from archivist.embed.base import Vectors
from archivist.store.filters import Filters
from archivist.store.memindex import DenseIndex, LexicalIndex
from archivist.store.records import (
    CandidateScores,
    CorpusMoments,
    IndexCapabilities,
    SentenceHit,
)
from archivist.store.sqlite.database import SQLiteDatabase
from archivist.store.sqlite.index import (
    Lexical,
    Located,
    dense_index,
    document_index,
    generation,
    lexical_index,
    sentence_index,
)
from archivist.store.sqlite.sql import filter_sql
from archivist.types import ArchivistError


class SQLiteSearch(SQLiteDatabase):
    """The `SearchIndex` of an SQLite file: exact cosine and exact BM25 over in-memory indexes."""

    capabilities = IndexCapabilities(exact_dense=True, exact_bm25=True, candidate_scores=True)

    def __init__(self, path: Path, *, url: str | None = None) -> None:
        self._index_lock = threading.Lock()
        # Each in-memory index with the generation it describes (see `index`).
        self._dense: tuple[str, DenseIndex, int] | None = None
        self._sentences: tuple[str, DenseIndex, Located, int] | None = None
        self._bm25: Lexical | None = None
        self._allowed_cache: dict[tuple[int, Filters], npt.NDArray[np.bool_]] = {}
        super().__init__(path, url=url)

    def close(self) -> None:
        """Release connections and files, and the in-memory indexes."""
        super().close()
        self._dense = None
        self._sentences = None
        self._bm25 = None

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
        where, params = filter_sql(filters)
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

    def dense_shortfall(self, model: str, k: int, filters: Filters, returned: int) -> str | None:
        """Return None: the dense search scores every vector passing the filters, so it never stops short."""
        return None

    def bm25_search(self, query: str, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Return up to k (chunk id, BM25 score; higher is better) pairs, best first, among chunks passing filters."""
        index, vocab = self._lexical_index()
        term_ids = [vocab[t] for t in self._analyzer.terms(query) if t in vocab]
        return index.search(term_ids, k, self._allowed_documents(filters))

    def corpus_moments(self, model: str, query_vector: Vectors, query: str) -> CorpusMoments:
        """Return the mean and spread of the query's dense, chunk BM25 and document BM25 scores over the corpus."""
        both = self._lexical()
        term_ids = [both.vocab[t] for t in self._analyzer.terms(query) if t in both.vocab]
        return self._moments(self._dense_index(model), both, term_ids, query_vector)

    def _moments(self, dense: DenseIndex, both: Lexical, term_ids: list[int], query_vector: Vectors) -> CorpusMoments:
        d_mean, d_std = dense.score_stats(query_vector)
        b_mean, b_std = both.chunks.score_stats(term_ids)
        doc_mean, doc_std = self._document_lexical_index(both).score_stats(term_ids)
        return CorpusMoments(d_mean, d_std, b_mean, b_std, doc_mean, doc_std)

    def candidate_scores(
        self, model: str, query_vector: Vectors, query: str, ids: Sequence[int], moments: CorpusMoments | None = None
    ) -> CandidateScores:
        """Return dense, chunk BM25 and document BM25 scores of the given chunks, with each one's corpus spread
        (`moments` when given: what `corpus_moments` returned for this query, read while the search ran)."""
        dense = self._dense_index(model)
        both = self._lexical()
        lexical, vocab = both.chunks, both.vocab
        # Derived from this chunk index, so both always describe the same generation.
        documents = self._document_lexical_index(both)
        term_ids = [vocab[t] for t in self._analyzer.terms(query) if t in vocab]
        wanted = np.asarray(list(ids), dtype=np.int64)
        if moments is None:
            moments = self._moments(dense, both, term_ids, query_vector)
        pos = np.minimum(np.searchsorted(lexical.chunk_ids, wanted), max(lexical.chunk_ids.size - 1, 0))
        # Unknown chunks map to document rowid -1, which has no row and scores 0.
        owners = np.where(lexical.chunk_ids[pos] == wanted, lexical.doc_rows[pos], -1) if wanted.size else wanted
        return CandidateScores(
            dense=[float(x) for x in dense.score_ids(query_vector, wanted)],
            bm25=[float(x) for x in lexical.score_ids(term_ids, wanted)],
            dense_mean=moments.dense_mean,
            dense_std=moments.dense_std,
            bm25_mean=moments.bm25_mean,
            bm25_std=moments.bm25_std,
            doc_bm25=[float(x) for x in documents.score_ids(term_ids, owners)],
            doc_bm25_mean=moments.doc_bm25_mean,
            doc_bm25_std=moments.doc_bm25_std,
            terms_matched=[int(x) for x in lexical.matched_ids(term_ids, wanted)],
        )
