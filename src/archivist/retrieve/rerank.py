"""The `Reranker` seam: reorders a retriever's candidate hits for one query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from archivist.types import Hit


class Reranker(Protocol):
    """Reorders candidate hits; the retriever hands it `depth` candidates and keeps the top k it returns."""

    name: str
    #: how many of the retriever's best hits it reorders (hits past depth keep their order after them)
    depth: int

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        """Return at most k hits, best first, each with `score` set to the reranker's score."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """Return every setting that can change the order this reranker produces (for eval run records)."""
        ...


def reorder(hits: Sequence[Hit], scores: Sequence[float], k: int) -> list[Hit]:
    """Return the k best hits by the given scores (ties keep the incoming order), with `score` replaced."""
    if len(scores) != len(hits):
        raise ValueError(f"{len(scores)} scores for {len(hits)} hits")
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], i))[:k]
    return [replace(hits[i], score=float(scores[i])) for i in order]
