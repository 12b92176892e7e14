"""The records stores exchange: stored chunks, document writes, sentence vectors, scores, collections, keys, jobs,
the request log, the change feed the in-memory indexes follow, and agent runs with their journal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from archivist.embed.base import Vectors
from archivist.types import DEFAULT_COLLECTION, ArchivistError, Chunk, Document, DocumentRecord, Hit, UsageError

#: the guard policy keys and the values each takes: "injection" for questions and tasks, "pii" for redaction (at
#: ingest for a collection, in answers for a key)
POLICY_VALUES: dict[str, tuple[str, ...]] = {"injection": ("off", "flag", "block"), "pii": ("off", "redact")}


def check_policy(policy: dict[str, str]) -> dict[str, str]:
    """Return the policy as given once every key and value is known; raise UsageError naming the first bad one."""
    for key, value in policy.items():
        allowed = POLICY_VALUES.get(key)
        if allowed is None:
            raise UsageError(f"unknown policy key {key!r}: expected one of {', '.join(POLICY_VALUES)}")
        if value not in allowed:
            raise UsageError(f"policy {key}={value!r} is not valid: expected one of {'|'.join(allowed)}")
    return dict(policy)


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
    #: the injection detector's score at ingest (None: ingested before scanning, or with scanning off)
    guard_score: float | None = None
    #: the score reached the detector's threshold at ingest and no person has cleared it since
    guard_flagged: bool = False
    #: who cleared the flag, and when (UTC ISO time); None while it was never cleared
    guard_cleared_by: str | None = None
    guard_cleared_at: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkPlace:
    """Where a chunk sits: its document, the document's title and the chunk's position in it (what learned fusion
    reads of each candidate it re-orders, without the chunk's text)."""

    document_id: str
    title: str
    ordinal: int


def flagged_public(chunk: StoredChunk) -> dict[str, Any]:
    """Return a flagged chunk's JSON-ready description for review: id, score, collection, source and its text."""
    return {
        "chunk_id": chunk.id,
        "score": chunk.guard_score,
        "collection": chunk.collection,
        "source": chunk.source,
        "document_id": chunk.document_id,
        "text": chunk.text,
    }


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
        guard_score=chunk.guard_score,
        guard_flagged=chunk.guard_flagged,
    )


def document_text(chunks: Sequence[StoredChunk], char_count: int) -> str:
    """Return a document's text rebuilt from its stored chunks, every character at its original offset."""
    # The store keeps chunks, which are exact spans of the text; gaps between them (whitespace the chunker
    # skipped, mostly paragraph breaks) become newlines so that every offset still points where it did.
    parts, pos = [], 0
    for c in sorted(chunks, key=lambda c: c.start):
        if c.start > pos:
            parts.append("\n" * (c.start - pos))
            pos = c.start
        if c.end > pos:
            parts.append(c.text[pos - c.start :])
            pos = c.end
    if char_count > pos:
        parts.append("\n" * (char_count - pos))
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class ChunkGuard:
    """The injection detector's verdict on one chunk as stored: its score (None: not scanned), whether it is flagged,
    and who cleared a flag and when."""

    score: float | None
    flagged: bool = False
    cleared_by: str | None = None
    cleared_at: str | None = None


@dataclass(slots=True)
class DocumentWrite:
    """One document to store with its chunks and the embedding key of each chunk."""

    document: Document
    chunks: list[Chunk]
    embed_hashes: list[str]
    chunker: str
    #: each chunk's guard verdict, in chunk order (None: not scanned, every chunk stored unflagged)
    guards: list[ChunkGuard] | None = None
    #: the document as another store holds it (`archivist store copy`): its content hash, version and times are
    #: kept, since the text rebuilt from its chunks may differ from the loaded one between chunks
    copied_from: DocumentRecord | None = None

    def kept_fields(self, version: int, created_at: str, updated_at: str) -> tuple[str, int, str, str]:
        """Return the content hash, version, created and updated times to store: a new write's (these), or a
        copied document's own."""
        if self.copied_from is not None:
            c = self.copied_from
            return c.content_hash, c.version, c.created_at, c.updated_at
        return self.document.content_hash, version, created_at, updated_at

    def guard_rows(self) -> list[ChunkGuard]:
        """Return one guard verdict per chunk (unscanned ones when the write carries none), or raise ArchivistError
        when the write carries a verdict count other than its chunk count."""
        if self.guards is None:
            return [ChunkGuard(None)] * len(self.chunks)
        if len(self.guards) != len(self.chunks):
            raise ArchivistError(
                f"{self.document.source}: {len(self.guards)} guard verdicts for {len(self.chunks)} chunks"
            )
        return self.guards


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
class CorpusMoments:
    """The mean and spread over the corpus of a query's three scores: dense cosine and chunk BM25 over chunks,
    document BM25 over documents (what z-score and learned fusion normalise by; they depend on the query only)."""

    dense_mean: float
    dense_std: float
    bm25_mean: float
    bm25_std: float
    doc_bm25_mean: float
    doc_bm25_std: float


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
    #: how many of the query's distinct terms each chunk holds (its title, headings and text, as BM25 indexes them);
    #: None from an index that does not count them (learned fusion then reads the chunks' text)
    terms_matched: list[int] | None = None

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
            terms_matched=None if self.terms_matched is None else [self.terms_matched[i] for i in positions],
        )


@dataclass(slots=True)
class CollectionRecord:
    """A named set of documents: the tenancy boundary of the HTTP service."""

    name: str
    description: str
    created_at: str
    documents: int = 0
    #: guard policy: "injection" (off|flag|block) and "pii" (off|redact); a missing key takes the default
    policy: dict[str, str] = field(default_factory=dict)


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
    #: guard policy for this key's questions and tasks: "injection" (off|flag|block), "pii" (off|redact)
    policy: dict[str, str] = field(default_factory=dict)

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
            "policy": dict(self.policy),
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
    #: `corpus_moments` costs round trips of its own, so a search reads it while its two searches run (an in-memory
    #: index computes it from the scores its BM25 search just cached: there it waits)
    early_moments: bool = False


#: running: a process is (or was, until it died) driving it; paused: it waits for a person (an approval, an effect
#: whose outcome is unknown); succeeded and failed are final
AgentRunStatus = Literal["running", "paused", "succeeded", "failed"]
AgentStepKind = Literal["model", "tool", "workflow"]
#: pending: the intent is committed and the outcome is not (the call may or may not have happened)
EffectStatus = Literal["pending", "succeeded", "failed"]
#: "consumed": an approved retry whose one attempt was taken (the next attempt needs a new decision)
ApprovalStatus = Literal["pending", "approved", "rejected", "consumed"]
#: call: the tool needs a person's yes before it runs; retry: the call's outcome is unknown (intent, no outcome) and
#: a person decides whether it runs again
ApprovalKind = Literal["call", "retry"]


@dataclass(slots=True)
class AgentRunRecord:
    """An agent run: its task, where it stands and why, its limits and what it has used so far."""

    id: str
    task: str
    status: AgentRunStatus
    created_at: str
    updated_at: str
    #: the one collection its document tools read (None: every collection)
    collection: str | None = None
    #: why the run stopped or paused (None while it runs or once it succeeded)
    reason: str | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    #: tokens, cost_usd, elapsed_s: what the run has used across every process that drove it
    totals: dict[str, Any] = field(default_factory=dict)
    #: the final answer with its checked citations, once it succeeded
    result: dict[str, Any] | None = None
    #: the names of the tools the run may call
    tools: tuple[str, ...] = ()
    #: the id of the API key that started it (None: started locally, from the CLI or the library)
    owner: str | None = None
    #: the process driving it now ("host:pid:nonce") and until when its lease runs unless renewed (None: nobody)
    lease_holder: str | None = None
    lease_until: str | None = None

    def public(self) -> dict[str, Any]:
        """Return the run's JSON-ready description."""
        return {
            "id": self.id,
            "task": self.task,
            "status": self.status,
            "reason": self.reason,
            "collection": self.collection,
            "limits": self.limits,
            "totals": self.totals,
            "result": self.result,
            "tools": list(self.tools),
            "owner": self.owner,
            "driven_by": self.lease_holder,
            "lease_until": self.lease_until,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(slots=True)
class AgentStepRecord:
    """One journaled step of a run: a model call (its text and tool calls) or a tool call (its observation)."""

    run_id: str
    seq: int
    kind: AgentStepKind
    #: the model ("provider/model") or the tool
    name: str
    created_at: str
    #: model: text, tool_calls, finish_reason; tool: status, observation, untrusted
    data: dict[str, Any] = field(default_factory=dict)
    call_id: str | None = None
    arguments: dict[str, Any] | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0

    def public(self) -> dict[str, Any]:
        """Return the step's JSON-ready description."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "name": self.name,
            "call_id": self.call_id,
            "arguments": self.arguments,
            "data": self.data,
            "tokens": self.tokens,
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
            "created_at": self.created_at,
        }


@dataclass(slots=True)
class EffectRecord:
    """A side-effecting call's intent, committed before the call, and its outcome, committed after it."""

    run_id: str
    step: int
    call_id: str
    tool: str
    arguments_hash: str
    #: passed to the tool, so a tool (or the service behind it) can refuse to apply one call twice
    idempotency_key: str
    arguments: dict[str, Any]
    created_at: str
    status: EffectStatus = "pending"
    #: the call's JSON result (or error text) once its outcome is recorded
    result: Any = None
    completed_at: str | None = None


@dataclass(slots=True)
class ApprovalRecord:
    """A tool call that waits for a person's decision before it runs."""

    run_id: str
    step: int
    call_id: str
    tool: str
    arguments: dict[str, Any]
    created_at: str
    kind: ApprovalKind = "call"
    status: ApprovalStatus = "pending"
    decided_at: str | None = None
