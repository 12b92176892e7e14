"""Hybrid search: dense kNN and BM25 run in parallel, then fused (z-score fusion by default, learned, or RRF)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from archivist.embed.base import Embedder
from archivist.observe import span
from archivist.retrieve.fusion import rrf, zscore_fusion
from archivist.retrieve.learned import LearnedFusionModel, fused_zscore, learned_fusion, load_model
from archivist.store.filters import Filters, check_filter_keys
from archivist.store.protocols import Store
from archivist.store.records import CandidateScores, CorpusMoments, StoredChunk, chunk_hit
from archivist.text.analyzer import Analyzer
from archivist.types import Hit, UsageError

Mode = Literal["hybrid", "dense", "bm25"]
MAX_QUERY_CHARS = 4000


@dataclass(frozen=True, slots=True)
class RetrievalSettings:
    """How many candidates each retriever contributes and how they are fused."""

    candidates: int = 100
    fusion: Literal["zscore", "rrf", "learned"] = "learned"
    rrf_k: int = 60
    dense_weight: float = 0.75
    bm25_weight: float = 0.15
    doc_bm25_weight: float = 0.10
    # learned fusion only: the model file (None: the bundled one, trained on SciFact's train queries).
    fusion_model: str | None = None


@dataclass(slots=True)
class Retrieval:
    """The hits of one retrieval, and what it could not do as asked (sentences for the response's warnings)."""

    hits: list[Hit]
    warnings: list[str] = field(default_factory=list)


class HybridRetriever:
    """Searches a store densely and lexically at once and fuses the rankings."""

    def __init__(
        self,
        store: Store,
        embedder: Callable[[], Embedder],
        settings: RetrievalSettings,
        executor: ThreadPoolExecutor,
    ) -> None:
        self.store = store
        self._embedder = embedder  # called only when a dense search runs: BM25-only needs no model
        self.settings = settings
        self._executor = executor
        self._model: LearnedFusionModel | None = None
        self._analyzer: Analyzer | None = None

    def learned_model(self) -> LearnedFusionModel:
        """Return the learned-fusion model (loaded and validated on first use; ModelError if unusable)."""
        if self._model is None:
            self._model = load_model(self.settings.fusion_model)
        return self._model

    def fusion_fingerprint(self) -> dict[str, Any]:
        """Return what identifies the fusion model for eval fingerprints (empty unless fusion is learned)."""
        return {"fusion_model": self.learned_model().fingerprint()} if self.settings.fusion == "learned" else {}

    def search(self, query: str, k: int = 10, filters: Filters = Filters(), mode: Mode = "hybrid") -> list[Hit]:
        """Return the top-k hits for a query, each with its per-retriever scores and ranks."""
        return self.retrieve(query, k, filters, mode).hits

    def retrieve(self, query: str, k: int = 10, filters: Filters = Filters(), mode: Mode = "hybrid") -> Retrieval:
        """Return the top-k hits for a query with the warnings of a search that found fewer rows than it could."""
        with span("retrieve.hybrid", mode=mode, k=k, fusion=self.settings.fusion) as current:
            retrieval = self._search(query, k, filters, mode)
            current.set(hits=len(retrieval.hits))
            return retrieval

    def _search(self, query: str, k: int, filters: Filters, mode: Mode) -> Retrieval:
        query = query.strip()
        if not query:
            raise UsageError("empty query")
        if len(query) > MAX_QUERY_CHARS:
            raise UsageError(f"query too long: {len(query)} characters (limit {MAX_QUERY_CHARS})")
        if k < 1:
            raise UsageError("k must be at least 1")
        check_filter_keys(self.store, filters)
        n = max(k, self.settings.candidates)
        s = self.settings
        # Every candidate is scored exactly on all three signals, where the index declares it can; an index that
        # cannot (approximate search, no corpus statistics) is fused by ranks instead.
        scored = s.fusion in ("zscore", "learned") and self.store.capabilities.candidate_scores
        lexical_weight = s.bm25_weight + (s.doc_bm25_weight if scored else 0)
        use_dense = mode == "dense" or (mode == "hybrid" and s.dense_weight > 0)
        # BM25's candidates join the pool even when only the document-level signal is weighted.
        use_bm25 = mode == "bm25" or (mode == "hybrid" and lexical_weight > 0)
        # Learned fusion re-orders z-score fusion's candidates; a weight of 0 still turns a retriever off.
        learned = mode == "hybrid" and s.fusion == "learned" and use_dense and use_bm25
        if learned:
            self.learned_model()  # fail before searching if the model file is unusable

        bm25_future: Future[list[tuple[int, float]]] | None = None
        if use_bm25:
            bm25_future = self._executor.submit(self.store.bm25_search, query, n, filters)
        dense: list[tuple[int, float]] = []
        exact: dict[int, tuple[float, float]] = {}
        scoring = mode == "hybrid" and use_dense and use_bm25 and scored
        moments_future: Future[CorpusMoments] | None = None
        if use_dense:
            embedder = self._embedder()
            with span("embed", kind="query"):
                vector = embedder.embed_query(query)
            if scoring and self.store.capabilities.early_moments:
                # The corpus moments depend on the query alone: read them while the two searches run.
                moments_future = self._executor.submit(self.store.corpus_moments, embedder.model_id, vector, query)
            dense = self.store.dense_search(embedder.model_id, vector, n, filters)
        warnings: list[str] = []
        if use_dense and len(dense) < n:
            # Asked only when short, so a full search pays nothing; the index says whether rows were missed.
            shortfall = self.store.dense_shortfall(embedder.model_id, n, filters, len(dense))
            if shortfall is not None:
                warnings.append(shortfall)
        bm25 = bm25_future.result() if bm25_future is not None else []

        prefetched: dict[int, StoredChunk] = {}
        if scoring:
            ids = list(dict.fromkeys([i for i, _ in dense] + [i for i, _ in bm25]))
            moments = moments_future.result() if moments_future is not None else None
            scores = self.store.candidate_scores(embedder.model_id, vector, query, ids, moments)
            exact = {cid: (d, b) for cid, d, b in zip(ids, scores.dense, scores.bm25, strict=True)}
            if learned:
                fused, prefetched = self._learned(query, ids, scores)
            else:
                fused = zscore_fusion(ids, scores, s.dense_weight, s.bm25_weight, s.doc_bm25_weight)
        elif mode == "hybrid":
            fused = rrf(
                [
                    ([i for i, _ in dense], self.settings.dense_weight),
                    ([i for i, _ in bm25], self.settings.bm25_weight),
                ],
                k=self.settings.rrf_k,
            )
        else:
            fused = dense if mode == "dense" else bm25
        top = fused[:k]
        chunks = {**prefetched, **self.store.get_chunks([i for i, _ in top if i not in prefetched])}
        dense_info = {cid: (score, rank) for rank, (cid, score) in enumerate(dense, start=1)}
        bm25_info = {cid: (score, rank) for rank, (cid, score) in enumerate(bm25, start=1)}
        hits = []
        for cid, score in top:
            c = chunks.get(cid)
            if c is None:  # deleted between search and fetch
                continue
            d = dense_info.get(cid)
            b = bm25_info.get(cid)
            hits.append(
                chunk_hit(
                    c,
                    score,
                    # Fusion scored every candidate on both retrievers: report those exact scores.
                    dense_score=exact[cid][0] if cid in exact else d[0] if d else None,
                    dense_rank=d[1] if d else None,
                    bm25_score=exact[cid][1] if cid in exact else b[0] if b else None,
                    bm25_rank=b[1] if b else None,
                )
            )
        return Retrieval(hits, warnings)

    def _learned(
        self, query: str, ids: list[int], scores: CandidateScores
    ) -> tuple[list[tuple[int, float]], dict[int, StoredChunk]]:
        """Return the learned fusion of scored candidates and the chunks it fetched for its features (none when the
        index counted each candidate's query terms: then only where each chunk sits is read, not its text)."""
        model = self.learned_model()
        if self._analyzer is None:
            self._analyzer = Analyzer()
        zf = fused_zscore(scores)
        head = [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-zf[i], ids[i]))[: model.rerank_depth]]
        if scores.terms_matched is not None:
            # About a seventh of the cost of the rows (no text, no metadata: 0.15 against 1.0 ms for 100 on SQLite);
            # the hits' own rows are read afterwards.
            return learned_fusion(query, ids, scores, self.store.chunk_places(head), model, self._analyzer), {}
        chunks = self.store.get_chunks(head)
        return learned_fusion(query, ids, scores, chunks, model, self._analyzer), chunks

    def scored_candidates(self, query: str, n: int, filters: Filters = Filters()) -> tuple[list[int], CandidateScores]:
        """Return the hybrid candidate pool (dense top n, then BM25 top n, deduplicated) and their exact scores.

        This is the pool z-score and learned fusion rank; `benchmarks/train_fusion_model.py` trains on it.
        """
        bm25_future = self._executor.submit(self.store.bm25_search, query, n, filters)
        embedder = self._embedder()
        vector = embedder.embed_query(query)
        dense = self.store.dense_search(embedder.model_id, vector, n, filters)
        bm25 = bm25_future.result()
        ids = list(dict.fromkeys([i for i, _ in dense] + [i for i, _ in bm25]))
        return ids, self.store.candidate_scores(embedder.model_id, vector, query, ids)
