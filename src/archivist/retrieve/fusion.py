"""Reciprocal rank fusion of ranked lists."""

from __future__ import annotations

from collections.abc import Sequence


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
