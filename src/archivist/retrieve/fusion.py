"""Fusion of ranked lists: z-score score fusion (the default) and reciprocal rank fusion."""

from __future__ import annotations

from collections.abc import Sequence

from archivist.store.records import CandidateScores


def rrf(rankings: Sequence[tuple[Sequence[int], float]], k: int = 60) -> list[tuple[int, float]]:
    """Return (id, fused score) pairs, best first, from (ranked ids, weight) lists: sum of w / (k + rank)."""
    scores: dict[int, float] = {}
    for ids, weight in rankings:
        if weight == 0:
            continue
        for rank, item in enumerate(ids, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    # Ties break on id so results are deterministic across runs.
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def zscore_fusion(
    ids: Sequence[int], scores: CandidateScores, dense_weight: float, bm25_weight: float, doc_bm25_weight: float = 0.0
) -> list[tuple[int, float]]:
    """Return (id, fused score) pairs, best first: a weighted sum of each signal's z-scored score.

    Each score is standardised by its mean and spread over the whole corpus for this query, so a
    chunk that is far above the crowd on any signal stands out. Unlike RRF, this keeps how far apart
    candidates are, not only their order. The signals are the chunk's cosine, the chunk's BM25 and
    its whole document's BM25; the default weights were fitted on SciFact's train queries only
    (see docs/search.md).
    """
    total = dense_weight + bm25_weight + doc_bm25_weight
    if total <= 0:
        dense_weight = bm25_weight = doc_bm25_weight = total = 1.0
    wd, wb, wdoc = dense_weight / total, bm25_weight / total, doc_bm25_weight / total
    fused = [
        (
            cid,
            wd * (d - scores.dense_mean) / scores.dense_std
            + wb * (b - scores.bm25_mean) / scores.bm25_std
            + wdoc * (db - scores.doc_bm25_mean) / scores.doc_bm25_std,
        )
        for cid, d, b, db in zip(ids, scores.dense, scores.bm25, scores.doc_bm25, strict=True)
    ]
    return sorted(fused, key=lambda kv: (-kv[1], kv[0]))
