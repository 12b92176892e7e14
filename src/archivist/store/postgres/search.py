"""Dense, BM25 and sentence search in PostgreSQL: pgvector's HNSW index with filters inside the SQL, and our BM25 over
the term statistics the document store keeps, computed in SQL.

Dense search walks each model's HNSW index (`vector_cosine_ops`) with `hnsw.iterative_scan = relaxed_order`: the
collection and metadata filters are joined into the same statement, and the scan goes on past `ef_search` until k
rows pass them (up to pgvector's `hnsw.max_scan_tuples`), so a selective filter still returns k rows. Its ranking is
approximate, so the index declares `exact_dense=False`; the scores it reports, and `candidate_scores`, are exact
inner products. BM25 is the in-memory index's formula (k1 1.2, b 0.75, the same IDF) over the same analyzer's
terms, so its scores equal SQLite's; `candidate_scores` adds the corpus moments z-score and learned fusion read:
BM25's from one aggregate over the query terms' postings, the dense cosine's from the per-model vector sums.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pgvector import Vector
from psycopg import sql

from archivist.embed.base import Vectors
from archivist.store.filters import Filters
from archivist.store.memindex import BM25_B, BM25_K1
from archivist.store.postgres.database import Connection
from archivist.store.postgres.docsql import filter_sql, index_kind
from archivist.store.postgres.documents import PostgresDocuments
from archivist.store.records import CandidateScores, CorpusMoments, IndexCapabilities, SentenceHit
from archivist.types import ArchivistError

#: the HNSW candidate list every dense search walks at least (pgvector's default is 40): on 1M clustered 384-d
#: vectors, with ef_construction 128, the exact top 10 is found for 0.92 at 200 and 0.96 at 400, in 2.7 ms p50
#: (`python benchmarks/postgres_scale.py --vectors-only 1000000`); a search for more rows widens it (EF_PER_ROW;
#: pgvector's ceiling: MAX_EF_SEARCH), and a larger `hnsw.ef_search` set for the connection wins
MIN_EF_SEARCH = 400
MAX_EF_SEARCH = 1000
#: a search for k rows walks a candidate list of at least this many times k
EF_PER_ROW = 4
#: the spread of a query's cosine is read exactly from every chunk vector while they hold at most this many
#: numbers (20,833 vectors at 384 dimensions: SciFact's 11,898 chunks are exact), from a random sample beyond
SECOND_MOMENT_VALUES = 8_000_000
#: writes after which a sampled covariance is read again even if the row count stayed within a tenth
COVARIANCE_WRITES = 1000
#: rows (chunks, or documents) from which a query's BM25 corpus moments are estimated instead of summed exactly:
#: past this, a common term's full posting list costs more than a search should
BM25_SAMPLE_FROM = 131_072
#: one row in this many is in the sample (the partial indexes of migration 9 hold its postings)
SAMPLE_STRIDE = 16
#: a term in at most this many rows is counted exactly in an estimate: its postings are few, and rare terms decide
#: the top scores the moments normalise
EXACT_DF = 2_000

# A BM25 search as one statement: the query terms' IDF (the in-memory index's: ln(1 + (n - df + 0.5) / (df + 0.5)))
# and the length normalisation from the corpus totals in `meta`, then the top k chunks passing the filters.
_CHUNK_BM25_TOP = """
WITH totals AS (
  SELECT (sum(value) FILTER (WHERE key = 'bm25_chunks'))::float8 AS n,
         (sum(value) FILTER (WHERE key = 'bm25_chunk_length'))::float8 AS length
  FROM meta WHERE key IN ('bm25_chunks', 'bm25_chunk_length')
), q AS (
  SELECT t.id AS term_id, ln(1 + (s.n - t.chunk_df + 0.5) / (t.chunk_df + 0.5)) AS idf,
         {k1_b} / greatest(s.length / s.n, 1e-9) AS c
  FROM terms t CROSS JOIN totals s WHERE t.term = ANY(%s) AND t.chunk_df > 0 AND s.n > 0
)
SELECT p.chunk_id, sum(q.idf * p.tf * {k1_plus_1} / (p.tf + {a} + q.c * p.term_length)) AS score
FROM q JOIN chunk_terms p ON p.term_id = q.term_id {join}
WHERE {where} GROUP BY p.chunk_id
ORDER BY round(sum(q.idf * p.tf * {k1_plus_1} / (p.tf + {a} + q.c * p.term_length))::numeric, 9) DESC, p.chunk_id
LIMIT %s
"""

# The top k by BM25 among the chunks holding one of the `essential` terms (and passing the filters), scored over
# every query term. Each candidate's essential part comes from one pass over the essential (short) posting lists; the
# other terms' postings are read by primary key, one subquery per chunk (which the planner cannot turn into a scan
# of a common term's whole list), and only for the chunks that can still reach the top k: the k best by essential
# part are scored in full first, and the k-th of those scores is a floor no chunk whose essential part plus the
# other terms' bound falls short of can reach (MaxScore's pruning; with a little slack, since a chunk may tie the
# k-th to 9 decimals and differ in the last bits only because its terms were added in another order).
# Ranked by the score rounded to 9 decimals, so that sums of the same terms added in another order (last bits) are
# the tie they are, broken by chunk id, whichever statement computed them.
_CANDIDATE_BM25 = """
WITH candidates AS MATERIALIZED (
  SELECT e.chunk_id AS id, sum(q.idf * e.tf * {k1_plus_1} / (e.tf + {a} + {c} * e.term_length)) AS part
  FROM unnest(%(essential)s::int[], %(essential_idf)s::float8[]) q(term_id, idf)
  JOIN chunk_terms e ON e.term_id = q.term_id
  GROUP BY e.chunk_id
), passing AS MATERIALIZED (
  SELECT candidates.id, candidates.part FROM candidates {join} WHERE {where}
), seed AS (
  SELECT s.part + COALESCE((
    SELECT sum(q.idf * p.tf * {k1_plus_1} / (p.tf + {a} + {c} * p.term_length))
    FROM unnest(%(other)s::int[], %(other_idf)s::float8[]) q(term_id, idf)
    JOIN chunk_terms p ON p.term_id = q.term_id AND p.chunk_id = s.id
  ), 0) AS score
  FROM (SELECT * FROM passing ORDER BY round(part::numeric, 9) DESC, id LIMIT %(k)s) s
), floor AS (
  SELECT CASE WHEN count(*) >= %(k)s THEN min(score) ELSE 0 END AS score FROM seed
), scored AS (
  SELECT passing.id, passing.part + COALESCE((
    SELECT sum(q.idf * p.tf * {k1_plus_1} / (p.tf + {a} + {c} * p.term_length))
    FROM unnest(%(other)s::int[], %(other_idf)s::float8[]) q(term_id, idf)
    JOIN chunk_terms p ON p.term_id = q.term_id AND p.chunk_id = passing.id
  ), 0) AS score
  FROM passing, floor WHERE passing.part + %(other_bound)s >= floor.score - 1e-9 * greatest(1, floor.score)
)
SELECT id, score FROM scored ORDER BY round(score::numeric, 9) DESC, id LIMIT %(k)s
"""


@dataclass(frozen=True, slots=True)
class _Spread:
    """A model's matrix for the spread of a query's cosine: E[x xᵀ] over every vector (`exact`) or a sample's
    covariance, with the row count and store generation it was read at."""

    exact: bool
    rows: int
    generation: int
    matrix: npt.NDArray[np.float64]


class PostgresSearch(PostgresDocuments):
    """The `SearchIndex` of a PostgreSQL database: HNSW dense search, exact BM25 and exact candidate scores."""

    capabilities = IndexCapabilities(exact_dense=False, exact_bm25=True, candidate_scores=True, early_moments=True)
    #: rows (chunks, or documents) from which a query's BM25 corpus moments are estimated, not summed exactly
    bm25_sample_from = BM25_SAMPLE_FROM
    #: a query term in at most this many rows is counted exactly in an estimate
    bm25_exact_df = EXACT_DF
    #: numbers in the chunk vectors up to which a query's cosine spread is read exactly (SECOND_MOMENT_VALUES)
    dense_exact_values = SECOND_MOMENT_VALUES

    def __init__(self, url: str) -> None:
        #: each model's vector size, once its first vectors exist (it never changes after)
        self._dimensions: dict[str, int] = {}
        #: each model's cosine spread matrix as last read (see `_cosine_variance`)
        self._seconds: dict[str, _Spread] = {}
        super().__init__(url)

    def _model_dimensions(self, model: str, query: Vectors) -> int | None:
        """Return the size of `model`'s stored vectors (None: none stored), or raise when the query's differs."""
        dim = self._dimensions.get(model)
        if dim is None:
            row = self._fetchone("SELECT dimensions FROM vector_models WHERE model = %s", (model,))
            if row is None:
                return None
            dim = self._dimensions[model] = int(row[0])
        if query.shape[0] != dim:
            raise ArchivistError(f"query vector has {query.shape[0]} dimensions, stored {model} vectors have {dim}")
        return dim

    def dense_search(self, model: str, query: Vectors, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Return up to k (chunk id, cosine similarity) pairs, best first, among chunks passing filters."""
        dim = self._model_dimensions(model, query)
        if dim is None or k <= 0:
            return []
        statement, params = _dense_sql(model, dim, query, k, filters)
        with self._transaction() as conn:
            if filters and self._target.exact_dense_below > 0:
                exact = _exact_when_few(conn, model, query, k, filters, self._target.exact_dense_below)
                if exact is not None:
                    return exact
            _scan_settings(conn, k)
            return _ranked(conn.execute(statement, params).fetchall())

    def dense_shortfall(self, model: str, k: int, filters: Filters, returned: int) -> str | None:
        """Return a warning when the HNSW scan stopped before k rows passed the filters although more chunks than it
        returned pass them (counted up to k, so the count costs at most what an exact search would), else None."""
        # A model dense_search found no vectors of (so never recorded the size of) has nothing to miss.
        if returned >= k or model not in self._dimensions:
            return None
        where, params = filter_sql(filters)
        statement = sql.SQL(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM embeddings e JOIN chunks c ON c.embed_hash = e.text_hash"
            " {join} WHERE e.model = %s AND {where} LIMIT %s) s), current_setting('hnsw.max_scan_tuples', true)"
        ).format(
            join=sql.SQL("JOIN documents d ON d.id = c.document_id" if filters else ""),
            where=sql.SQL(where),  # fixed pieces; values are parameters
        )
        with self._pool.connection() as conn:
            row = conn.execute(statement, [model, *params, k]).fetchone()
        assert row is not None
        passing, max_scan = int(row[0]), row[1] or "20000"
        if passing <= returned:
            return None  # the filters pass no more chunks than came back: nothing was missed
        return (
            f"dense search returned {returned} of {k} rows although at least {passing} chunks pass the filters:"
            f" pgvector's iterative index scan stopped after hnsw.max_scan_tuples ({max_scan}) index tuples;"
            " raise hnsw.max_scan_tuples (or hnsw.ef_search) for this store, e.g. add"
            f" options=-c%20hnsw.max_scan_tuples%3D{int(max_scan) * 5} to its URL"
        )

    def bm25_search(self, query: str, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Return up to k (chunk id, BM25 score; higher is better) pairs, best first, among chunks passing filters."""
        if k <= 0:
            return []
        where, filter_params = filter_sql(filters)
        with self._snapshot() as conn:
            found = _query_terms(conn, self._analyzer.terms(query), "chunk_df")
            stats = _totals(conn, "bm25_chunks", "bm25_chunk_length")
            if not found or stats is None:
                return []
            ids, idfs = _idf(found, stats[0])
            below = self._target.exact_dense_below
            if filters and below > 0:
                # Few chunks pass: score each of them (by primary key) rather than every candidate of the terms.
                contained, contained_params = _named(*filter_sql(filters, contained=True))
                first, *hits = conn.execute(
                    _bm25_sql(_FILTERED_BM25, stats, contained),
                    {"limit": below + 1, "below": below, "ids": ids, "idfs": idfs, "k": k, **contained_params},
                ).fetchall()
                if int(first[1]) <= below:
                    return [(int(cid), float(s)) for cid, s in hits]
            where, named_params = _named(where, filter_params)
            statement = _bm25_sql(_CANDIDATE_BM25, stats, where, joined=bool(filters), chunk="candidates.id")
            # MaxScore (Turtle and Flood): the candidates are the chunks holding one of the rarest terms, scored
            # exactly over every query term; a chunk holding none of them scores less than the other terms' bound
            # (each term adds under idf (k1 + 1)), so once the k-th candidate reaches that bound the top k is exact.
            # Rare terms have short posting lists, so common terms are read only for the candidates.
            rarest_first = sorted(range(len(found)), key=lambda i: (found[i][1], ids[i]))
            for split in range(1, len(found) + 1):
                inside, outside = rarest_first[:split], rarest_first[split:]
                # Each term adds less than idf (k1 + 1); a little more, so rounding never prunes a chunk that ties.
                bound = sum(idfs[i] for i in outside) * (BM25_K1 + 1) * (1 + 1e-9)
                rows = conn.execute(
                    statement,
                    {
                        "essential": [ids[i] for i in inside],
                        "essential_idf": [idfs[i] for i in inside],
                        "other": [ids[i] for i in outside],
                        "other_idf": [idfs[i] for i in outside],
                        "other_bound": bound,
                        "k": k,
                        **named_params,
                    },
                ).fetchall()
                if split == len(found) or (len(rows) == k and float(rows[-1][1]) > bound):
                    return [(int(cid), float(s)) for cid, s in rows]
        raise AssertionError("unreachable: the last split takes every term")

    def hybrid_candidates(
        self, model: str, query_vector: Vectors, query: str, k: int, filters: Filters
    ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """Return what `dense_search` and `bm25_search` return for one query, from one statement (their two
        statements as CTEs of it): one round trip to one server process instead of two in parallel."""
        dim = self._model_dimensions(model, query_vector)
        if dim is None or k <= 0:
            return [], self.bm25_search(query, k, filters)
        dense, dense_params = _dense_sql(model, dim, query_vector, k, filters)
        bm25, bm25_params = _bm25_top_sql(self._analyzer.terms(query), k, filters)
        statement = sql.SQL(
            "WITH dense AS ({}), bm25 AS ({}) SELECT 0, * FROM dense UNION ALL SELECT 1, * FROM bm25"
        ).format(dense, bm25)
        with self._transaction() as conn:
            _scan_settings(conn, k)
            rows = conn.execute(statement, [*dense_params, *bm25_params]).fetchall()
        return _ranked([r[1:] for r in rows if r[0] == 0]), [(int(c), float(v)) for arm, c, v in rows if arm == 1]

    def sentence_search(self, model: str, query: Vectors, k: int, filters: Filters) -> list[SentenceHit]:
        """Return up to k stored sentences most similar to the query, best first, among documents passing
        filters (an empty list when the store holds no sentence vectors under `model`)."""
        if k <= 0:
            return []
        where, params = filter_sql(filters)
        # An exact scan (sentences have no ANN index); a sentence that overlapping chunks repeat (the same start in
        # the same document) is kept once, with the first chunk's id, as on SQLite.
        rows = self._fetchall(
            "SELECT chunk_id, start, stop, score FROM ("
            " SELECT DISTINCT ON (c.document_id, c.start + s.start) c.id AS chunk_id, c.start + s.start AS start,"
            ' c.start + s."end" AS stop, -(s.vector::vector <#> %s) AS score'
            " FROM sentences s JOIN chunks c ON c.embed_hash = s.text_hash JOIN documents d ON d.id = c.document_id"
            f" WHERE s.model = %s AND {where}"
            " ORDER BY c.document_id, c.start + s.start, c.id"
            ") t ORDER BY score DESC, chunk_id, start LIMIT %s",
            [Vector(np.asarray(query, dtype=np.float32)), model, *params, k],
        )
        return [SentenceHit(int(c), int(a), int(b), float(s)) for c, a, b, s in rows]

    def _cosine_variance(
        self, conn: Connection, model: str, rows: int, query: npt.NDArray[np.float64], mean: float
    ) -> float:
        """Return the variance of q·x over the model's chunk vectors, from a matrix kept in this process: E[x xᵀ]
        over every vector while they hold at most `dense_exact_values` numbers (exact, as SQLite's; read again after
        any write), else the covariance of a seeded random sample of the model's own chunks of that size (read
        again when the rows change by a tenth or a thousand writes have gone by). A query then costs qᵀ M q."""
        dim = query.shape[0]
        cap = max(1, self.dense_exact_values // dim)
        exact = rows <= cap
        row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        generation = int(row[0]) if row else 0
        kept = self._seconds.get(model)
        if (
            kept is None
            or kept.exact != exact
            or kept.matrix.shape[0] != dim
            or (generation != kept.generation if exact else abs(kept.rows - rows) * 10 > rows)
            or generation - kept.generation > COVARIANCE_WRITES
        ):
            kept = self._read_spread(conn, model, rows, generation, cap, exact)
            self._seconds[model] = kept
        if kept.exact:
            return float(query @ kept.matrix @ query) - mean * mean
        return float(query @ kept.matrix @ query)

    def _read_spread(self, conn: Connection, model: str, rows: int, generation: int, cap: int, exact: bool) -> _Spread:
        """Return the model's E[x xᵀ] over every chunk vector (exact), or the covariance of a sample of about `cap`."""
        join = "FROM chunks c JOIN embeddings e ON e.model = %s AND e.text_hash = c.embed_hash"
        sample: list[Any] = []
        if not exact:
            # A Bernoulli sample of the chunks (seeded, so a process reads the same one), joined to this model's
            # vectors: sampling ids across the table would miss a model that holds few of the store's chunks.
            # Each chunk is kept with this probability, so about 1.2 × cap of the model's rows come back.
            share = min(100.0, 100.0 * 1.2 * cap / rows)
            sample = conn.execute(
                "SELECT e.vector FROM chunks c TABLESAMPLE BERNOULLI (%s) REPEATABLE (7)"
                " JOIN embeddings e ON e.model = %s AND e.text_hash = c.embed_hash LIMIT %s",
                (share, model, cap),
            ).fetchall()
        if len(sample) < 2:  # exact, or a sample too small to estimate from: every vector
            found = conn.execute(f"SELECT e.vector {join}", (model,)).fetchall()
            matrix = np.stack([v.to_numpy() for (v,) in found]).astype(np.float64) if found else np.zeros((1, 1))
            return _Spread(True, rows, generation, (matrix.T @ matrix) / max(len(found), 1))
        matrix = np.stack([v.to_numpy() for (v,) in sample]).astype(np.float64)
        return _Spread(False, rows, generation, np.cov(matrix, rowvar=False))

    @property
    def _sampling(self) -> tuple[int, int]:
        return self.bm25_sample_from, self.bm25_exact_df

    def corpus_moments(self, model: str, query_vector: Vectors, query: str) -> CorpusMoments:
        """Return the mean and spread of the query's dense, chunk BM25 and document BM25 scores over the corpus."""
        with self._snapshot() as conn:
            return self._corpus_moments(
                conn, model, np.asarray(query_vector, dtype=np.float32), self._levels(conn, query)
            )

    def _corpus_moments(
        self, conn: Connection, model: str, q: npt.NDArray[np.float32], levels: tuple[_LevelQuery, _LevelQuery]
    ) -> CorpusMoments:
        d_mean, d_std = _dense_stats(conn, model, q, lambda n, v, m: self._cosine_variance(conn, model, n, v, m))
        b_mean, b_std = _level_moments(conn, _CHUNKS, levels[0], self._sampling)
        doc_mean, doc_std = _level_moments(conn, _DOCUMENTS, levels[1], self._sampling)
        return CorpusMoments(d_mean, d_std, b_mean, b_std, doc_mean, doc_std)

    def _levels(self, conn: Connection, query: str) -> tuple[_LevelQuery, _LevelQuery]:
        """Return the query's terms and totals in the chunk and the document BM25 indexes (two round trips)."""
        rows = conn.execute(
            "SELECT id, chunk_df, doc_df FROM terms WHERE term = ANY(%s) AND (chunk_df > 0 OR doc_df > 0) ORDER BY id",
            (list(dict.fromkeys(self._analyzer.terms(query))),),
        ).fetchall()
        keys = [*_CHUNKS.totals, *_DOCUMENTS.totals]
        meta = {str(k): int(v) for k, v in conn.execute("SELECT key, value FROM meta WHERE key = ANY(%s)", (keys,))}

        def level(column: int, totals: tuple[str, str]) -> _LevelQuery:
            n = meta.get(totals[0], 0)
            stats = (n, meta.get(totals[1], 0) / n) if n > 0 else None
            return _LevelQuery([(int(r[0]), int(r[column])) for r in rows if int(r[column]) > 0], stats)

        return level(1, _CHUNKS.totals), level(2, _DOCUMENTS.totals)

    def candidate_scores(
        self, model: str, query_vector: Vectors, query: str, ids: Sequence[int], moments: CorpusMoments | None = None
    ) -> CandidateScores:
        """Return dense, chunk BM25 and document BM25 scores of the given chunks, with each one's corpus spread
        (`moments` when given: what `corpus_moments` returned for this query, read while the search ran)."""
        wanted = [int(i) for i in ids]
        q = np.asarray(query_vector, dtype=np.float32)
        with self._snapshot() as conn:
            # Each chunk's document and exact cosine in one statement (no vector of the model: no score, 0).
            found = conn.execute(
                "SELECT c.id, c.document_id, -(e.vector <#> %s) FROM chunks c"
                " LEFT JOIN embeddings e ON e.model = %s AND e.text_hash = c.embed_hash WHERE c.id = ANY(%s)",
                (Vector(q), model, wanted),
            ).fetchall()
            owner = {int(cid): doc for cid, doc, _ in found}
            dense = {int(cid): float(score) for cid, _, score in found if score is not None}
            levels = self._levels(conn, query)
            if moments is None:
                moments = self._corpus_moments(conn, model, q, levels)
            chunk_scores = _level_scores(conn, _CHUNKS, levels[0], wanted)
            doc_scores = _level_scores(conn, _DOCUMENTS, levels[1], list(set(owner.values())))
        return CandidateScores(
            dense=[dense.get(i, 0.0) for i in wanted],
            bm25=[chunk_scores.get(i, (0.0, 0))[0] for i in wanted],
            dense_mean=moments.dense_mean,
            dense_std=moments.dense_std,
            bm25_mean=moments.bm25_mean,
            bm25_std=moments.bm25_std,
            doc_bm25=[doc_scores.get(owner[i], (0.0, 0))[0] if i in owner else 0.0 for i in wanted],
            doc_bm25_mean=moments.doc_bm25_mean,
            doc_bm25_std=moments.doc_bm25_std,
            terms_matched=[chunk_scores.get(i, (0.0, 0))[1] for i in wanted],
        )


def _dense_sql(model: str, dim: int, query: Vectors, k: int, filters: Filters) -> tuple[sql.Composed, list[Any]]:
    """Return the dense search statement (the model's HNSW index, the filters inside it) and its parameters."""
    where, params = filter_sql(filters)
    q = Vector(np.asarray(query, dtype=np.float32))
    statement = sql.SQL(
        "SELECT c.id, -(e.vector <#> %s) FROM embeddings e JOIN chunks c ON c.embed_hash = e.text_hash {join}"
        " WHERE e.model = {model} AND {where} ORDER BY e.vector::{kind}({dim}) <=> %s::{kind}({dim}) LIMIT %s"
    ).format(
        kind=sql.SQL(index_kind(dim)),  # the index's own cast, so the planner uses it
        join=sql.SQL("JOIN documents d ON d.id = c.document_id" if filters else ""),
        # Literals, so that the planner matches the model's partial index whatever its parameter handling.
        model=sql.Literal(model),
        where=sql.SQL(where),  # built from fixed pieces; values are parameters
        dim=sql.Literal(dim),
    )
    return statement, [q, *params, q, k]


# The chunks passing the filters, at most `limit` (one more than the exact scan takes), then, if there are no more
# than that, the exact top k of them by inner product; the first row carries the count (chunk id -1).
_EXACT_FILTERED = """
WITH passing AS MATERIALIZED (
  SELECT c.id, c.embed_hash FROM chunks c JOIN documents d ON d.id = c.document_id WHERE {where} LIMIT %s
), counted AS (SELECT count(*) AS n FROM passing)
SELECT -1::bigint, n::float8 FROM counted
UNION ALL (
  SELECT p.id, -(e.vector <#> %s) AS score
  FROM passing p JOIN embeddings e ON e.model = %s AND e.text_hash = p.embed_hash
  WHERE (SELECT n FROM counted) <= %s ORDER BY score DESC, p.id LIMIT %s
)
"""


def _exact_when_few(
    conn: Connection, model: str, query: Vectors, k: int, filters: Filters, below: int
) -> list[tuple[int, float]] | None:
    """Return the exact top k among the chunks passing the filters when at most `below` pass, else None (one
    statement: the count stops at `below` + 1 rows)."""
    where, params = filter_sql(filters, contained=True)
    q = Vector(np.asarray(query, dtype=np.float32))
    rows = conn.execute(sql.SQL(_EXACT_FILTERED).format(where=sql.SQL(where)), [*params, below + 1, q, model, below, k])
    first, *hits = rows.fetchall()
    if int(first[1]) > below:
        return None
    return [(int(cid), float(score)) for cid, score in hits]


def _ranked(rows: Sequence[Sequence[Any]]) -> list[tuple[int, float]]:
    """Return dense rows best first: relaxed_order may return them slightly out of order (ties by chunk id, as on
    SQLite)."""
    return sorted(((int(cid), float(s)) for cid, s in rows), key=lambda r: (-r[1], r[0]))


def _bm25_top_sql(terms: list[str], k: int, filters: Filters) -> tuple[sql.Composed, list[Any]]:
    """Return the BM25 search statement over the query's analyzed terms and its parameters."""
    where, params = filter_sql(filters)
    statement = sql.SQL(_CHUNK_BM25_TOP).format(
        k1_plus_1=sql.Literal(BM25_K1 + 1),
        a=sql.Literal(BM25_K1 * (1 - BM25_B)),
        k1_b=sql.Literal(BM25_K1 * BM25_B),
        join=sql.SQL(_FILTER_JOIN.format(chunk="p.chunk_id") if filters else ""),
        where=sql.SQL(where),  # fixed pieces; values are parameters
    )
    return statement, [list(dict.fromkeys(terms)), *params, k]


def _scan_settings(conn: Connection, k: int) -> None:
    """Set this transaction's HNSW scan: iterative (filters inside the scan still yield k rows), and a candidate
    list of MIN_EF_SEARCH or EF_PER_ROW × k, whichever is larger, at most MAX_EF_SEARCH (the connection's
    `hnsw.ef_search`, e.g. from the URL's `options`, when larger)."""
    conn.execute(
        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),"
        " set_config('hnsw.ef_search', least(greatest(COALESCE(current_setting('hnsw.ef_search', true), '0')::int,"
        " %s, %s), %s)::text, true)",
        (MIN_EF_SEARCH, EF_PER_ROW * k, MAX_EF_SEARCH),
    )


def _query_terms(conn: Connection, terms: list[str], df_column: str) -> list[tuple[int, int]]:
    """Return (term id, document frequency) of the query's distinct terms that some chunk or document holds."""
    rows = conn.execute(
        sql.SQL("SELECT id, {df} FROM terms WHERE term = ANY(%s) AND {df} > 0 ORDER BY id").format(
            df=sql.Identifier(df_column)
        ),
        (list(dict.fromkeys(terms)),),
    )
    return [(int(i), int(df)) for i, df in rows]


def _totals(conn: Connection, count_key: str, length_key: str) -> tuple[int, float] | None:
    """Return how many rows the BM25 index has and their mean length (None when it has none)."""
    rows = conn.execute("SELECT key, value FROM meta WHERE key = ANY(%s)", ([count_key, length_key],))
    stats: dict[str, int] = {str(k): int(v) for k, v in rows}
    n = int(stats.get(count_key, 0))
    return (n, int(stats.get(length_key, 0)) / n) if n > 0 else None


def _idf(terms: list[tuple[int, int]], n: int) -> tuple[list[int], list[float]]:
    """Return the term ids and their IDF (the in-memory index's: ln(1 + (n - df + 0.5) / (df + 0.5)))."""
    return [t for t, _ in terms], [float(np.log1p((n - df + 0.5) / (df + 0.5))) for _, df in terms]


def _named(where: str, params: list[Any]) -> tuple[str, dict[str, Any]]:
    """Return a condition with positional parameters (`%s`, as `filter_sql` writes it) rewritten as named ones
    (`%(f0)s`, …) and their values by name, for statements whose other parameters are named."""
    pieces = where.split("%s")
    assert len(pieces) == len(params) + 1 and "%" not in "".join(pieces), "a condition of plain %s placeholders"
    named = "".join(f"{piece}%(f{i})s" for i, piece in enumerate(pieces[:-1])) + pieces[-1]
    return named, {f"f{i}": value for i, value in enumerate(params)}


_FILTER_JOIN = "JOIN chunks x ON x.id = {chunk} JOIN documents d ON d.id = x.document_id"


def _bm25_sql(
    template: str, stats: tuple[int, float], where: str, *, joined: bool = False, chunk: str = "p.chunk_id"
) -> sql.Composed:
    """Return a BM25 statement over a corpus of these totals: length normalisation k1 (1 - b + b len / avgdl);
    `joined` joins the chunk (`chunk`, the statement's column naming it) and its document (`d`), for filters."""
    avgdl = max(stats[1], 1e-9)
    parts: dict[str, sql.Composable] = {
        "k1_plus_1": sql.Literal(BM25_K1 + 1),
        "a": sql.Literal(BM25_K1 * (1 - BM25_B)),
        "c": sql.Literal(BM25_K1 * BM25_B / avgdl),
        "where": sql.SQL(where),  # fixed pieces; values are parameters
    }
    if "{join}" in template:
        parts["join"] = sql.SQL(_FILTER_JOIN.format(chunk=chunk) if joined else "")
    return sql.SQL(template).format(**parts)


@dataclass(frozen=True)
class _Level:
    """Where one BM25 index (of chunks or of documents) keeps its postings, lengths and totals."""

    postings: str  # the postings table: term_id, the row's key, tf
    key: str  # the postings' column naming the row
    totals: tuple[str, str]  # the meta keys of the row count and the summed lengths
    sample: str  # the partial index's predicate: one row in SAMPLE_STRIDE, by key

    def template(self, template: str) -> str:
        """Return the statement template with this index's tables and columns in it."""
        for name in ("postings", "key", "sample"):
            template = template.replace("{" + name + "}", getattr(self, name))
        return template


_CHUNKS = _Level("chunk_terms", "chunk_id", ("bm25_chunks", "bm25_chunk_length"), "hashint8(p.chunk_id) & 15 = 0")
_DOCUMENTS = _Level(
    "document_terms",
    "document_id",
    ("bm25_documents", "bm25_document_length"),
    "hashtext(p.document_id) & 15 = 0",
)

# The BM25 scores of the given rows, and how many of the query terms each holds.
_CANDIDATE_SCORES = """
SELECT p.{key}, sum(q.idf * p.tf * {k1_plus_1} / (p.tf + {a} + {c} * p.term_length)), count(*)
FROM unnest(%s::int[], %s::float8[]) q(term_id, idf)
JOIN {postings} p ON p.term_id = q.term_id AND p.{key} = ANY(%s)
GROUP BY p.{key}
"""

# The query's score of every row holding a query term: its sum and sum of squares (rows without one score 0).
_MOMENTS = """
SELECT COALESCE(sum(score), 0), COALESCE(sum(score * score), 0) FROM (
  SELECT sum(q.idf * p.tf * {k1_plus_1} / (p.tf + {a} + {c} * p.term_length)) AS score
  FROM unnest(%s::int[], %s::float8[]) q(term_id, idf)
  JOIN {postings} p ON p.term_id = q.term_id
  GROUP BY p.{key}
) s
"""

# The same over the rows holding one of the `rare` terms only: those rows first, then their postings of every query
# term by primary key.
_RARE_MOMENTS = """
WITH r AS MATERIALIZED (SELECT DISTINCT e.{key} AS id FROM {postings} e WHERE e.term_id = ANY(%s::int[]))
SELECT COALESCE(sum(score), 0), COALESCE(sum(score * score), 0) FROM (
  SELECT (
    SELECT sum(q.idf * p.tf * {k1_plus_1} / (p.tf + {a} + {c} * p.term_length))
    FROM unnest(%s::int[], %s::float8[]) q(term_id, idf)
    JOIN {postings} p ON p.term_id = q.term_id AND p.{key} = r.id
  ) AS score
  FROM r
) s
"""

# The top k by BM25 of the chunks passing the filters when at most `below` pass (the first row carries their count,
# chunk id -1; none is scored when more pass), each scored by its postings of the query terms, read by key.
_FILTERED_BM25 = """
WITH passing AS MATERIALIZED (
  SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE {where} LIMIT %(limit)s
), counted AS (SELECT count(*) AS n FROM passing)
SELECT -1::bigint, n::float8 FROM counted
UNION ALL (
  SELECT id, score FROM (
    SELECT passing.id, (
      SELECT sum(q.idf * p.tf * {k1_plus_1} / (p.tf + {a} + {c} * p.term_length))
      FROM unnest(%(ids)s::int[], %(idfs)s::float8[]) q(term_id, idf)
      JOIN chunk_terms p ON p.term_id = q.term_id AND p.chunk_id = passing.id
    ) AS score
    FROM passing WHERE (SELECT n FROM counted) <= %(below)s
  ) s
  WHERE score IS NOT NULL ORDER BY round(score::numeric, 9) DESC, id LIMIT %(k)s
)
"""

# The same over the sample (the partial index's rows) of the rows holding no rare term (those holding one are
# summed exactly): every query term's sampled postings, grouped by row, the rows with a rare term left out.
_SAMPLED_MOMENTS = """
SELECT COALESCE(sum(score) FILTER (WHERE NOT rare), 0), COALESCE(sum(score * score) FILTER (WHERE NOT rare), 0)
FROM (
  SELECT sum(q.idf * p.tf * {k1_plus_1} / (p.tf + {a} + {c} * p.term_length)) AS score, bool_or(q.rare) AS rare
  FROM unnest(%s::int[], %s::float8[], %s::bool[]) q(term_id, idf, rare)
  JOIN {postings} p ON p.term_id = q.term_id AND {sample}
  GROUP BY p.{key}
) s
"""


@dataclass(frozen=True, slots=True)
class _LevelQuery:
    """A query's terms in one BM25 index: (term id, rows holding it) of those some row holds, and the index's row
    count and mean length (None when it has no rows)."""

    found: list[tuple[int, int]]
    stats: tuple[int, float] | None


def _level_scores(
    conn: Connection, level: _Level, query: _LevelQuery, wanted: list[Any]
) -> dict[Any, tuple[float, int]]:
    """Return the BM25 score of each wanted row (chunk or document) that holds a query term, and how many of the
    query's terms it holds."""
    if query.stats is None or not query.found:
        return {}
    ids, idfs = _idf(query.found, query.stats[0])
    statement = _bm25_sql(level.template(_CANDIDATE_SCORES), query.stats, "TRUE")
    return {r[0]: (float(r[1]), int(r[2])) for r in conn.execute(statement, [ids, idfs, wanted]).fetchall()}


def _level_moments(
    conn: Connection, level: _Level, query: _LevelQuery, sampling: tuple[int, int]
) -> tuple[float, float]:
    """Return the mean and standard deviation of the query's BM25 score over every row (chunk or document) of the
    index (rows without a query term score 0): summed exactly below `sampling[0]` rows, estimated above it with
    terms of at most `sampling[1]` rows counted exactly (`_moments`)."""
    found, stats = query.found, query.stats
    if stats is None:
        return 0.0, 1.0
    if not found:
        return 0.0, 1e-12
    _, idfs = _idf(found, stats[0])
    s1, s2 = _moments(conn, level, found, idfs, stats, exact=stats[0] < sampling[0], exact_df=sampling[1])
    n = stats[0]
    mean = s1 / n
    std = max(s2 / n - mean * mean, 0.0) ** 0.5
    return mean, max(std, 1e-12)


def _moments(
    conn: Connection,
    level: _Level,
    found: list[tuple[int, int]],
    idfs: list[float],
    stats: tuple[int, float],
    *,
    exact: bool,
    exact_df: int,
) -> tuple[float, float]:
    """Return the sum and the sum of squares of the query's BM25 score over every row of the index.

    Exact: one pass over every query term's postings. Estimated (large indexes): exact over the rows holding a term
    of at most `exact_df` rows (short lists, read in full), plus SAMPLE_STRIDE times the sums over a fixed 1-in-16
    sample of the rows holding only commoner terms, read through a partial index; so a long posting list costs a
    sixteenth of its length, and the terms that decide a query's top scores are counted exactly."""
    ids = [t for t, _ in found]
    if exact:
        row = conn.execute(_bm25_sql(level.template(_MOMENTS), stats, "TRUE"), [ids, idfs]).fetchone()
        assert row is not None
        return float(row[0]), float(row[1])
    rare = [t for t, df in found if df <= exact_df]
    s1 = s2 = 0.0
    if rare:
        row = conn.execute(_bm25_sql(level.template(_RARE_MOMENTS), stats, "TRUE"), [rare, ids, idfs]).fetchone()
        assert row is not None
        s1, s2 = float(row[0]), float(row[1])
    if len(rare) < len(ids):
        row = conn.execute(
            _bm25_sql(level.template(_SAMPLED_MOMENTS), stats, "TRUE"), [ids, idfs, [df <= exact_df for _, df in found]]
        ).fetchone()
        assert row is not None
        s1, s2 = s1 + SAMPLE_STRIDE * float(row[0]), s2 + SAMPLE_STRIDE * float(row[1])
    return s1, s2


def _dense_stats(
    conn: Connection,
    model: str,
    query: Vectors,
    variance: Callable[[int, npt.NDArray[np.float64], float], float],
) -> tuple[float, float]:
    """Return the mean and standard deviation of the query's cosine over every chunk with a vector of `model`: the
    mean from the kept sum (E[q·x] = q·E[x]), the spread from `variance(rows, q, mean)`."""
    row = conn.execute("SELECT rows, sum FROM dense_moments WHERE model = %s", (model,)).fetchone()
    if row is None or int(row[0]) <= 0:
        return 0.0, 1.0
    n = int(row[0])
    q = np.asarray(query, dtype=np.float64)
    mean = np.frombuffer(row[1], dtype=np.float64) / n
    if mean.shape[0] != q.shape[0]:
        raise ArchivistError(f"query vector has {q.shape[0]} dimensions, stored {model} vectors have {mean.shape[0]}")
    mu = float(q @ mean)
    return mu, max(variance(n, q, mu), 1e-12) ** 0.5
