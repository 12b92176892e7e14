"""The `Store` protocol every storage backend satisfies, and the records it exchanges."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from archivist.embed.base import Vectors
from archivist.types import DEFAULT_COLLECTION, Chunk, Document, DocumentRecord, Hit, UsageError

#: Filter keys every store understands; any other key names a document metadata field.
BUILTIN_FILTER_KEYS = ("source", "title", "document_id", "media_type", "collection")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class FilterClause:
    """`key` equals `value`, or matches it as a glob when it holds *, ? or [."""

    key: str
    value: str

    @property
    def is_glob(self) -> bool:
        """Return whether the value is a glob pattern."""
        return any(c in _GLOB_CHARS for c in self.value)


@dataclass(frozen=True, slots=True)
class Filters:
    """Clauses ANDed across keys and ORed within one key; `scope`, when set, is the collections a request may read.

    The scope is its own clause, ANDed with everything and never merged with user clauses: a user clause on the
    same key can narrow what a request reads, never widen it.
    """

    clauses: tuple[FilterClause, ...] = ()
    scope: tuple[str, ...] | None = None

    def within(self, collections: Sequence[str]) -> Filters:
        """Return these filters limited to `collections` as well (an empty sequence reads nothing)."""
        allowed = tuple(dict.fromkeys(collections))
        if self.scope is not None:
            allowed = tuple(c for c in self.scope if c in allowed)
        return Filters(self.clauses, allowed)

    @classmethod
    def parse(cls, specs: Sequence[str]) -> Filters:
        """Return filters parsed from `key=value` strings, or raise UsageError on a malformed one."""
        clauses = []
        for spec in specs:
            key, sep, value = spec.partition("=")
            key = key.strip()
            if not sep or not key:
                raise UsageError(f"bad filter {spec!r}: expected key=value, e.g. source='docs/*.md'")
            if not _KEY_RE.match(key):
                raise UsageError(f"bad filter key {key!r}: use letters, digits, '_', '.', '-'")
            clauses.append(FilterClause(key, value.strip()))
        return cls(tuple(clauses))

    @classmethod
    def from_mapping(cls, mapping: dict[str, str], *, reserved: Sequence[str] = ()) -> Filters:
        """Return filters from {key: value} taken verbatim, or raise UsageError on a bad key or one that reads as
        a reserved key once stripped, case-folded and cut at '=' (so " Collection" or "collection=*" cannot pass)."""
        clauses = []
        for key, value in mapping.items():
            normal = key.partition("=")[0].strip().casefold()
            if normal in {r.casefold() for r in reserved}:
                raise UsageError(f"filter key {key!r} is reserved: {normal!r} is set by its own field, not in filters")
            if not _KEY_RE.match(key):
                raise UsageError(f"bad filter key {key!r}: use letters, digits, '_', '.', '-'")
            clauses.append(FilterClause(key, value.strip()))
        return cls(tuple(clauses))

    def by_key(self) -> dict[str, list[FilterClause]]:
        """Return the clauses grouped by key, in first-seen order."""
        grouped: dict[str, list[FilterClause]] = {}
        for c in self.clauses:
            grouped.setdefault(c.key, []).append(c)
        return grouped

    def __bool__(self) -> bool:
        return bool(self.clauses) or self.scope is not None


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


@runtime_checkable
class Store(Protocol):
    """Durable storage for documents, chunks, vectors and their indexes."""

    url: str

    def document_states(
        self, sources: Sequence[str], collection: str = DEFAULT_COLLECTION
    ) -> dict[str, tuple[str, str]]:
        """Return {source: (content_hash, chunker fingerprint)} for the stored ones among `sources`."""
        ...

    def cached_vectors(self, model: str, hashes: Sequence[str]) -> dict[str, Vectors]:
        """Return the stored vectors of `model` for those embedding hashes that have one."""
        ...

    def write_documents(
        self,
        model: str,
        writes: Sequence[DocumentWrite],
        vectors: dict[str, Vectors],
        sentences: tuple[str, dict[str, SentenceVectors]] | None = None,
        *,
        skip_unchanged: bool = False,
    ) -> list[WriteOutcome]:
        """Store documents, replacing any with the same source; each document is all-or-nothing. Return what
        happened to each write, in order.

        `sentences` is (sentence model key, {embedding hash: its chunk's sentence vectors}), written in the same
        transaction. With `skip_unchanged`, a document stored with the same content hash and chunker is left as it
        is ("unchanged"), decided inside the write transaction: of two concurrent writers of one file, one writes."""
        ...

    def sentence_hashes(self, model: str, hashes: Sequence[str]) -> set[str]:
        """Return which of these embedding hashes have sentence vectors under the sentence model key."""
        ...

    def chunk_sentences(self, model: str, chunk_ids: Sequence[int]) -> dict[int, SentenceVectors]:
        """Return the stored sentence vectors of these chunks, spans as document offsets."""
        ...

    def sentence_search(self, model: str, query: Vectors, k: int, filters: Filters) -> list[SentenceHit]:
        """Return up to k stored sentences most similar to the query, best first, among documents passing
        filters (an empty list when the store holds no sentence vectors under `model`)."""
        ...

    def delete_document(self, document_id: str) -> bool:
        """Delete a document and its chunks; return whether it existed."""
        ...

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """Return one stored document, or None."""
        ...

    def list_documents(
        self, *, limit: int = 100, offset: int = 0, filters: Filters = Filters()
    ) -> list[DocumentRecord]:
        """Return stored documents ordered by source."""
        ...

    def count_documents(self, filters: Filters = Filters()) -> int:
        """Return how many stored documents pass the filters."""
        ...

    def document_chunks(self, document_id: str) -> list[StoredChunk]:
        """Return a document's chunks in order."""
        ...

    def sources(self, collection: str = DEFAULT_COLLECTION) -> list[str]:
        """Return the source of every stored document in a collection."""
        ...

    def filter_keys(self, collections: Sequence[str] | None = None) -> set[str]:
        """Return the filter keys that name something in this store: the built-in keys and the metadata keys of
        documents in `collections` (None: every collection)."""
        ...

    def dense_search(self, model: str, query: Vectors, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Return up to k (chunk id, cosine similarity) pairs, best first, among chunks passing filters."""
        ...

    def bm25_search(self, query: str, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Return up to k (chunk id, BM25 score; higher is better) pairs, best first, among chunks passing filters."""
        ...

    def candidate_scores(self, model: str, query_vector: Vectors, query: str, ids: Sequence[int]) -> CandidateScores:
        """Return dense, chunk BM25 and document BM25 scores of the given chunks, with each one's corpus spread."""
        ...

    def get_chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        """Return the stored chunks with these ids."""
        ...

    def stats(self) -> dict[str, Any]:
        """Return counts and sizes: documents, chunks, vectors per model, bytes on disk."""
        ...

    def cache_get(self, key: str, now: float) -> str | None:
        """Return a cached value that has not expired at `now` (epoch seconds), or None."""
        ...

    def cache_put(self, key: str, value: str, now: float, ttl_s: float) -> None:
        """Store a value under a key until `now + ttl_s`, dropping expired entries as it goes."""
        ...

    def spend_get(self, key: str, period: str) -> tuple[int, float]:
        """Return the tokens and dollars recorded against a budget key in a period (0, 0.0 if none)."""
        ...

    def spend_add(self, key: str, period: str, tokens: int, cost_usd: float) -> None:
        """Add tokens and dollars to a budget key's total for a period."""
        ...

    def save_eval_run(self, record: dict[str, Any]) -> None:
        """Store an eval run record (a JSON-ready dict with id, kind, dataset, split, tag, created_at)."""
        ...

    def list_eval_runs(self, *, dataset: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Return stored eval run records, newest first."""
        ...

    def get_eval_run(self, run_id: str) -> dict[str, Any] | None:
        """Return one eval run record by id or unique id prefix, or None."""
        ...

    def schema_version(self) -> int:
        """Return the highest applied schema migration."""
        ...

    def create_collection(self, name: str, description: str = "") -> CollectionRecord:
        """Create a collection and return it, or raise ConflictError when the name is taken."""
        ...

    def list_collections(self) -> list[CollectionRecord]:
        """Return every collection with its document count, by name."""
        ...

    def has_collection(self, name: str) -> bool:
        """Return whether a collection exists (cheap: checked on every scoped request)."""
        ...

    def save_api_key(self, key: ApiKeyRecord) -> None:
        """Store a new API key record."""
        ...

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """Return an API key record by id (revoked ones included), or None."""
        ...

    def list_api_keys(self) -> list[ApiKeyRecord]:
        """Return every API key record, oldest first."""
        ...

    def revoke_api_key(self, key_id: str, now: str) -> bool:
        """Mark a key revoked; return whether an active key of that id existed."""
        ...

    def touch_api_key(self, key_id: str, now: str) -> None:
        """Record that a key was just used."""
        ...

    def create_job(self, job: JobRecord) -> None:
        """Store a new job."""
        ...

    def update_job(self, job_id: str, *, worker: str | None = None, **fields: Any) -> bool:
        """Set a job's status, done, total, result, error, payload, attempts or lease (and its updated_at); with
        `worker`, only while that worker holds the job. Return whether the job was updated."""
        ...

    def get_job(self, job_id: str) -> JobRecord | None:
        """Return one job, or None."""
        ...

    def list_jobs(self, *, collections: Sequence[str] | None = None, limit: int = 50) -> list[JobRecord]:
        """Return jobs of these collections (None: all), newest first."""
        ...

    def claim_job(self, worker: str, *, lease_s: float, max_attempts: int) -> JobRecord | None:
        """Take the oldest job that is queued (past any retry delay) or whose worker's lease ran out, and hold it
        for `lease_s` seconds (None when there is none). A job whose lease ran out on its last attempt ends
        failed instead."""
        ...

    def renew_job(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend the lease of a job the worker holds; return False when it holds it no longer."""
        ...

    def job_counts(self) -> dict[str, int]:
        """Return how many jobs are in each status."""
        ...

    def log_requests(self, rows: Sequence[RequestLogRow]) -> None:
        """Append served requests to the request log."""
        ...

    def request_log(self, *, since: str, key_id: str | None = None) -> list[RequestLogRow]:
        """Return logged requests at or after `since` (UTC ISO time), of one key or all."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


def check_filter_keys(store: Store, filters: Filters) -> None:
    """Raise UsageError when a filter names a key no document in the filters' scope has (the error lists only
    keys of that scope: another tenant's metadata keys are not shown, nor told apart from absent ones)."""
    if not filters.clauses:
        return
    known = store.filter_keys(filters.scope)
    unknown = sorted({c.key for c in filters.clauses} - known)
    if unknown:
        raise UsageError(f"unknown filter key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
