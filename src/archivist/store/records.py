"""The records stores exchange: stored chunks, document writes, sentence vectors, scores, collections, keys, jobs,
the request log, and the change feed the in-memory indexes follow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from archivist.embed.base import Vectors
from archivist.types import DEFAULT_COLLECTION, Chunk, Document, Hit


@dataclass(slots=True)
class StoredChunk:
    """A chunk as stored, joined with its document's fields."""

    id: int
    document_id: str
    ordinal: int
    text: str
    heading_path: tuple[str, ...]
    start: int
    end: int
    page: int | None
    page_end: int | None
    token_count: int
    source: str
    title: str
    metadata: dict[str, Any] = field(default_factory=dict)
    collection: str = DEFAULT_COLLECTION


def chunk_hit(
    chunk: StoredChunk,
    score: float,
    *,
    dense_score: float | None = None,
    dense_rank: int | None = None,
    bm25_score: float | None = None,
    bm25_rank: int | None = None,
) -> Hit:
    """Return a search hit for a stored chunk with its score and, when known, each retriever's score and rank."""
    return Hit(
        chunk_id=chunk.id,
        document_id=chunk.document_id,
        source=chunk.source,
        title=chunk.title,
        heading_path=chunk.heading_path,
        text=chunk.text,
        start=chunk.start,
        end=chunk.end,
        page=chunk.page,
        score=score,
        metadata=chunk.metadata,
        dense_score=dense_score,
        dense_rank=dense_rank,
        bm25_score=bm25_score,
        bm25_rank=bm25_rank,
        collection=chunk.collection,
    )


@dataclass(slots=True)
class DocumentWrite:
    """One document to store with its chunks and the embedding key of each chunk."""

    document: Document
    chunks: list[Chunk]
    embed_hashes: list[str]
    chunker: str


#: What a document write did: stored a new source, replaced a stored one, or left an identical one as it was.
WriteOutcome = Literal["added", "updated", "unchanged"]


@dataclass(frozen=True, slots=True)
class SentenceVectors:
    """The sentences of one embedded chunk: (start, end) offsets and one unit vector each (rows of `vectors`).

    Offsets are into the chunk's text when written; `Store.chunk_sentences` returns them as document offsets.
    """

    spans: list[tuple[int, int]]
    vectors: Vectors


@dataclass(frozen=True, slots=True)
class SentenceHit:
    """A stored sentence found by similarity: its chunk, its document offsets and its cosine to the query."""

    chunk_id: int
    start: int
    end: int
    score: float


@dataclass(frozen=True, slots=True)
class CandidateScores:
    """Exact scores of a set of chunks, and each score's distribution over the corpus.

    `doc_bm25` is the BM25 score of each chunk's whole document (term counts summed over its chunks);
    its mean and spread are over documents, not chunks.
    """

    dense: list[float]
    bm25: list[float]
    dense_mean: float
    dense_std: float
    bm25_mean: float
    bm25_std: float
    doc_bm25: list[float]
    doc_bm25_mean: float
    doc_bm25_std: float

    def subset(self, positions: Sequence[int]) -> CandidateScores:
        """Return the scores of the candidates at these positions (same corpus statistics)."""
        return CandidateScores(
            dense=[self.dense[i] for i in positions],
            bm25=[self.bm25[i] for i in positions],
            dense_mean=self.dense_mean,
            dense_std=self.dense_std,
            bm25_mean=self.bm25_mean,
            bm25_std=self.bm25_std,
            doc_bm25=[self.doc_bm25[i] for i in positions],
            doc_bm25_mean=self.doc_bm25_mean,
            doc_bm25_std=self.doc_bm25_std,
        )


@dataclass(slots=True)
class CollectionRecord:
    """A named set of documents: the tenancy boundary of the HTTP service."""

    name: str
    description: str
    created_at: str
    documents: int = 0


@dataclass(slots=True)
class ApiKeyRecord:
    """A stored API key: never the key itself, only its hash."""

    id: str
    name: str
    secret_hash: str
    scopes: tuple[str, ...]
    #: None: every collection
    collections: tuple[str, ...] | None
    created_at: str
    budget_tokens: int | None = None
    budget_usd: float | None = None
    budget_period: str = "month"
    rate_per_minute: int | None = None
    revoked_at: str | None = None
    last_used_at: str | None = None

    def public(self) -> dict[str, Any]:
        """Return the key's JSON-ready description (without its hash)."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "collections": list(self.collections) if self.collections is not None else None,
            "budget_tokens": self.budget_tokens,
            "budget_usd": self.budget_usd,
            "budget_period": self.budget_period,
            "rate_per_minute": self.rate_per_minute,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


JobStatus = Literal["queued", "running", "succeeded", "failed"]
#: how documents are listed: by source, or the most recently written first
DocumentOrder = Literal["source", "newest"]


@dataclass(slots=True)
class JobRecord:
    """A background job (ingestion of an upload) and how far it got."""

    id: str
    kind: str
    collection: str
    status: JobStatus
    payload: dict[str, Any]
    created_at: str
    updated_at: str
    done: int = 0
    total: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    key_id: str | None = None
    #: how many times a worker has taken the job
    attempts: int = 0
    #: the lease (epoch seconds) of the worker running it, or when a queued retry may start
    locked_until: float | None = None
    #: the worker holding the lease
    locked_by: str | None = None

    def public(self) -> dict[str, Any]:
        """Return the job's JSON-ready status (without its internal payload)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "collection": self.collection,
            "status": self.status,
            "progress": {"done": self.done, "total": self.total},
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class RequestLogRow:
    """One served HTTP request, for usage reports."""

    request_id: str
    at: str
    key_id: str | None
    method: str
    route: str
    status: int
    latency_ms: float
    tokens: int = 0
    cost_usd: float = 0.0
    #: "completed", or "client_disconnected" when the client hung up before the response ended
    outcome: str = "completed"


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in the stored chunks after a generation, up to `generation` (the change feed)."""

    generation: int
    #: ids of the chunks deleted (a replaced document's chunks included), in id order; a backend that reuses ids
    #: may name an id here and in `added`: the old chunk went, a new one came
    deleted: npt.NDArray[np.int64]
    #: ids of the chunks written since that still exist, in id order
    added: npt.NDArray[np.int64]
    #: embedding hashes that gained a vector or sentence vectors (the same text may belong to older chunks)
    vectors_added: frozenset[str]


@dataclass(frozen=True, slots=True)
class IndexCapabilities:
    """What a search index computes exactly, so that fusion can rely on it or fall back."""

    #: dense scores are exact cosines (not an approximate nearest-neighbour's)
    exact_dense: bool
    #: BM25 scores are the project's own BM25 over its analyzer's terms
    exact_bm25: bool
    #: `candidate_scores` gives any chunk's scores and corpus-wide score moments (what z-score and learned fusion need)
    candidate_scores: bool
