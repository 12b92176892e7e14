"""What the PostgreSQL store does not do yet: documents, search and the job queue each raise a UsageError saying so.

They are the next parts of the PostgreSQL backend (issue 20); until then a command that needs them fails at once
with exit 2 and this message, while keys, agent runs, eval runs, the request log and the LLM cache work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

from archivist.embed.base import Vectors
from archivist.store.filters import Filters
from archivist.store.records import (
    CandidateScores,
    Changes,
    DocumentOrder,
    DocumentWrite,
    IndexCapabilities,
    JobRecord,
    SentenceHit,
    SentenceVectors,
    StoredChunk,
    WriteOutcome,
)
from archivist.types import DEFAULT_COLLECTION, DocumentRecord, UsageError


def _not_built(what: str) -> NoReturn:
    raise UsageError(
        f"{what} is not built yet on PostgreSQL (keys, agent runs, eval runs, the request log and the LLM cache"
        " are): use a sqlite:/// store for it for now"
    )


class PostgresUnbuilt:
    """The `DocumentStore`, `SearchIndex` and `JobQueue` methods of the PostgreSQL store, each refusing clearly."""

    #: nothing is computed yet; declared so that a caller reading it (fusion's choice) is not the one that fails
    capabilities = IndexCapabilities(exact_dense=False, exact_bm25=False, candidate_scores=False)

    def document_states(
        self, sources: Sequence[str], collection: str = DEFAULT_COLLECTION
    ) -> dict[str, tuple[str, str]]:
        """Return nothing: documents are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def cached_vectors(self, model: str, hashes: Sequence[str]) -> dict[str, Vectors]:
        """Return nothing: vectors are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def write_documents(
        self,
        model: str,
        writes: Sequence[DocumentWrite],
        vectors: dict[str, Vectors],
        sentences: tuple[str, dict[str, SentenceVectors]] | None = None,
        *,
        skip_unchanged: bool = False,
    ) -> list[WriteOutcome]:
        """Return nothing: documents are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def sentence_hashes(self, model: str, hashes: Sequence[str]) -> set[str]:
        """Return nothing: sentence vectors are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def chunk_sentences(self, model: str, chunk_ids: Sequence[int]) -> dict[int, SentenceVectors]:
        """Return nothing: sentence vectors are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def delete_document(self, document_id: str) -> bool:
        """Return nothing: documents are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """Return nothing: documents are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def list_documents(
        self, *, limit: int = 100, offset: int = 0, filters: Filters = Filters(), order: DocumentOrder = "source"
    ) -> list[DocumentRecord]:
        """Return nothing: documents are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def count_documents(self, filters: Filters = Filters()) -> int:
        """Return nothing: documents are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def document_chunks(self, document_id: str) -> list[StoredChunk]:
        """Return nothing: documents are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def sources(self, collection: str = DEFAULT_COLLECTION) -> list[str]:
        """Return nothing: documents are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def filter_keys(self, collections: Sequence[str] | None = None) -> set[str]:
        """Return nothing: documents are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def get_chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        """Return nothing: documents are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def stats(self) -> dict[str, Any]:
        """Return nothing: document statistics are not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store (archivist stats)")

    def generation(self) -> int:
        """Return nothing: the change feed is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def changes_since(self, generation: int) -> Changes | None:
        """Return nothing: the change feed is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the document store")

    def dense_search(self, model: str, query: Vectors, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Return nothing: search is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("search")

    def bm25_search(self, query: str, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Return nothing: search is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("search")

    def sentence_search(self, model: str, query: Vectors, k: int, filters: Filters) -> list[SentenceHit]:
        """Return nothing: search is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("search")

    def candidate_scores(self, model: str, query_vector: Vectors, query: str, ids: Sequence[int]) -> CandidateScores:
        """Return nothing: search is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("search")

    def create_job(self, job: JobRecord, data: bytes | None = None) -> None:
        """Return nothing: the job queue is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the job queue")

    def job_input(self, job_id: str) -> bytes | None:
        """Return nothing: the job queue is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the job queue")

    def update_job(self, job_id: str, *, worker: str | None = None, **fields: Any) -> bool:
        """Return nothing: the job queue is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the job queue")

    def get_job(self, job_id: str) -> JobRecord | None:
        """Return nothing: the job queue is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the job queue")

    def list_jobs(self, *, collections: Sequence[str] | None = None, limit: int = 50) -> list[JobRecord]:
        """Return nothing: the job queue is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the job queue")

    def claim_job(self, worker: str, *, lease_s: float, max_attempts: int) -> JobRecord | None:
        """Return nothing: the job queue is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the job queue")

    def renew_job(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Return nothing: the job queue is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the job queue")

    def job_counts(self) -> dict[str, int]:
        """Return nothing: the job queue is not built yet on PostgreSQL (raises UsageError)."""
        _not_built("the job queue")
