"""Search as a pipeline: optional query expansion, hybrid retrieval, optional reranking."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from archivist.llm.accounting import Budget
from archivist.llm.base import Deadline
from archivist.observe import span
from archivist.retrieve.expansion import Expander, fuse_expanded
from archivist.retrieve.hybrid import HybridRetriever, Mode
from archivist.retrieve.rerank import ReportingReranker, Reranker
from archivist.store.filters import Filters
from archivist.types import Hit

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SearchOutcome:
    """The hits of one search, with what expansion and reranking did (and why either fell back)."""

    hits: list[Hit]
    queries: list[str]
    reranker: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary of the pipeline steps (the hits are reported separately)."""
        return {"queries": self.queries, "reranker": self.reranker, "warnings": self.warnings}


class SearchPipeline:
    """Expands the query (if configured), retrieves for each variant, fuses, then reranks (if configured)."""

    def __init__(
        self, retriever: HybridRetriever, *, expander: Expander | None = None, reranker: Reranker | None = None
    ) -> None:
        self.retriever = retriever
        self.expander = expander
        self.reranker = reranker

    def fingerprint(self) -> dict[str, Any]:
        """Return the expander's and reranker's settings (None where a step is off)."""
        return {
            "reranker": self.reranker.fingerprint() if self.reranker else None,
            "query_expansion": self.expander.fingerprint() if self.expander else None,
        }

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        filters: Filters = Filters(),
        mode: Mode = "hybrid",
        deadline: Deadline | None = None,
        budget: Budget | None = None,
    ) -> SearchOutcome:
        """Return the top-k hits for a query after expansion, fusion and reranking."""
        with span("search", mode=mode, k=k) as current:
            outcome = self._search(query, k, filters, mode, deadline, budget)
            current.set(hits=len(outcome.hits), queries=len(outcome.queries), reranker=outcome.reranker)
            return outcome

    def _search(
        self, query: str, k: int, filters: Filters, mode: Mode, deadline: Deadline | None, budget: Budget | None
    ) -> SearchOutcome:
        # The reranker reorders the best `depth` candidates, so retrieval must hand it at least that many.
        n = max(k, self.reranker.depth) if self.reranker else k
        outcome = SearchOutcome(hits=[], queries=[query.strip()])
        if self.expander is not None:
            # An empty or oversized query fails here, in the retriever's own checks, before any model call.
            first = self.retriever.retrieve(query, k=n, filters=filters, mode=mode)
            expansion = self.expander.expand_with_report(query.strip(), deadline=deadline, budget=budget)
            if expansion.error:
                outcome.warnings.append(f"query expansion fell back to the original query: {expansion.error}")
            variants = outcome.queries = expansion.queries
            retrievals = [first] + [self.retriever.retrieve(v, k=n, filters=filters, mode=mode) for v in variants[1:]]
            lists = [r.hits for r in retrievals]
            hits = fuse_expanded(lists, n) if len(lists) > 1 else first.hits
            # Each variant's search may stop short alike: say each different sentence once.
            outcome.warnings.extend(dict.fromkeys(w for r in retrievals for w in r.warnings))
        else:
            retrieval = self.retriever.retrieve(query, k=n, filters=filters, mode=mode)
            hits = retrieval.hits
            outcome.warnings.extend(retrieval.warnings)
        if self.reranker is not None and hits:
            outcome.reranker = self.reranker.name
            if isinstance(self.reranker, ReportingReranker):  # it calls a model: our deadline and budget apply
                hits, report = self.reranker.rerank_with_report(query, hits, k, deadline=deadline, budget=budget)
                if report.error:
                    outcome.warnings.append(f"reranking kept the retrieval order: {report.error}")
            else:
                hits = self.reranker.rerank(query, hits, k)
        outcome.hits = hits[:k]
        if not hits and self.retriever.store.count_documents(filters) == 0:
            # Nothing found because there is nothing to find: say so, or it reads as "no document matches".
            outcome.warnings.append(
                "no stored document is in the collections searched or passes the filters"
                if filters
                else "the store holds no documents yet"
            )
        for warning in outcome.warnings:
            log.info(warning)
        return outcome
