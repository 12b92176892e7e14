"""The `Reranker` seam: reorders a retriever's candidate hits for one query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from archivist.llm.accounting import Budget
from archivist.llm.base import Deadline
from archivist.types import Hit


@dataclass(slots=True)
class RerankReport:
    """What one rerank call did: how many hits were scored, at what cost in model calls, and any failure."""

    candidates: int = 0
    graded: int = 0
    calls: int = 0
    repairs: int = 0
    #: chunk_id → the model's grade, for the hits it graded
    grades: dict[int, int] = field(default_factory=dict)
    #: why the incoming order was kept ("ExceptionType: message"), None when the model's grades were used
    error: str | None = None

    @property
    def fallback(self) -> bool:
        """Return whether the incoming order was returned because grading failed."""
        return self.error is not None


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


@runtime_checkable
class ReportingReranker(Reranker, Protocol):
    """A reranker that calls a model: it honours the caller's deadline and budget and reports what it did."""

    def rerank_with_report(
        self,
        query: str,
        hits: Sequence[Hit],
        k: int,
        *,
        deadline: Deadline | None = None,
        budget: Budget | None = None,
    ) -> tuple[list[Hit], RerankReport]:
        """Return the reranked hits (as `rerank`) and the report of what it did (its `error` says why the
        incoming order was kept)."""
        ...


def reorder(hits: Sequence[Hit], scores: Sequence[float], k: int) -> list[Hit]:
    """Return the k best hits by the given scores (ties keep the incoming order), with `score` replaced."""
    if len(scores) != len(hits):
        raise ValueError(f"{len(scores)} scores for {len(hits)} hits")
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], i))[:k]
    return [replace(hits[i], score=float(scores[i])) for i in order]
