"""The store's small protocols, one per concern, and `Store`, what a backend behind a URL provides (all of them).

A component asks for the protocols it uses; a backend (one object may implement several) declares what its search
index computes exactly in `capabilities`. The LLM layer owns its own protocols for what it keeps in a store (the
response cache, the spend ledger): `Store` also offers those methods, so one store object serves it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from archivist.embed.base import Vectors
from archivist.store.filters import Filters
from archivist.store.records import (
    AgentRunRecord,
    AgentStepRecord,
    ApiKeyRecord,
    ApprovalRecord,
    CandidateScores,
    Changes,
    ChunkPlace,
    CollectionRecord,
    CorpusMoments,
    DocumentOrder,
    DocumentWrite,
    EffectRecord,
    EffectStatus,
    IndexCapabilities,
    JobRecord,
    RequestLogRow,
    SentenceHit,
    SentenceVectors,
    StoredChunk,
    WriteOutcome,
)
from archivist.types import DEFAULT_COLLECTION, DocumentRecord


class DocumentStore(Protocol):
    """Documents, their chunks, vectors and sentence vectors: written whole, read back, listed, counted."""

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

    def guard_scores(self, hashes: Sequence[str]) -> dict[str, float]:
        """Return the injection score stored with a chunk of each of these embedding hashes that has one (the same
        embedded text scores the same: ingest reuses it instead of embedding the text again)."""
        ...

    def chunk_sentences(self, model: str, chunk_ids: Sequence[int]) -> dict[int, SentenceVectors]:
        """Return the stored sentence vectors of these chunks, spans as document offsets."""
        ...

    def delete_document(self, document_id: str) -> bool:
        """Delete a document and its chunks; return whether it existed."""
        ...

    def get_document(self, document_id: str) -> DocumentRecord | None:
        """Return one stored document, or None."""
        ...

    def list_documents(
        self, *, limit: int = 100, offset: int = 0, filters: Filters = Filters(), order: DocumentOrder = "source"
    ) -> list[DocumentRecord]:
        """Return stored documents ordered by source, or newest first (by when each was last written)."""
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

    def get_chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        """Return the stored chunks with these ids."""
        ...

    def chunk_places(self, ids: Sequence[int]) -> dict[int, ChunkPlace]:
        """Return the document, document title and position of the chunks with these ids (no text: cheaper)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Return counts and sizes: documents, chunks, vectors per model, bytes on disk."""
        ...

    def generation(self) -> int:
        """Return a counter bumped by every write, for caches of derived data."""
        ...

    def changes_since(self, generation: int) -> Changes | None:
        """Return what changed in the chunks after `generation`, or None when the feed does not reach back that far
        (or the store went back to an older generation): a reader of derived data then reads everything anew."""
        ...


class SearchIndex(Protocol):
    """Dense, BM25 and sentence search over the stored chunks, and exact scores of given chunks."""

    #: what the index computes exactly (fusion falls back to ranks where scores are approximate)
    capabilities: IndexCapabilities

    def dense_search(self, model: str, query: Vectors, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Return up to k (chunk id, cosine similarity) pairs, best first, among chunks passing filters."""
        ...

    def dense_shortfall(self, model: str, k: int, filters: Filters, returned: int) -> str | None:
        """Return a warning naming what to change when a dense search for k rows returned only `returned` although
        more chunks with a `model` vector pass the filters (an approximate scan that stopped early), else None."""
        ...

    def bm25_search(self, query: str, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Return up to k (chunk id, BM25 score; higher is better) pairs, best first, among chunks passing filters."""
        ...

    def sentence_search(self, model: str, query: Vectors, k: int, filters: Filters) -> list[SentenceHit]:
        """Return up to k stored sentences most similar to the query, best first, among documents passing
        filters (an empty list when the store holds no sentence vectors under `model`)."""
        ...

    def corpus_moments(self, model: str, query_vector: Vectors, query: str) -> CorpusMoments:
        """Return the mean and spread of the query's dense, chunk BM25 and document BM25 scores over the corpus."""
        ...

    def candidate_scores(
        self, model: str, query_vector: Vectors, query: str, ids: Sequence[int], moments: CorpusMoments | None = None
    ) -> CandidateScores:
        """Return dense, chunk BM25 and document BM25 scores of the given chunks, with each one's corpus spread
        (`moments` when given: what `corpus_moments` returned for this query, read while the search ran)."""
        ...


class CollectionStore(Protocol):
    """Collections: the tenancy boundary."""

    def create_collection(
        self, name: str, description: str = "", policy: dict[str, str] | None = None
    ) -> CollectionRecord:
        """Create a collection with its guard policy and return it; raise ConflictError when the name is taken,
        UsageError on a bad policy key or value."""
        ...

    def set_collection_policy(self, name: str, policy: dict[str, str]) -> dict[str, str]:
        """Merge `policy` into a collection's guard policy and return the result; raise UsageError on a bad key or
        value, NotFoundError when there is no such collection."""
        ...

    def collection_policy(self, name: str) -> dict[str, str]:
        """Return a collection's guard policy (empty when it sets none, or when there is no such collection)."""
        ...

    def list_collections(self) -> list[CollectionRecord]:
        """Return every collection with its document count, by name."""
        ...

    def has_collection(self, name: str) -> bool:
        """Return whether a collection exists (cheap: checked on every scoped request)."""
        ...


class GuardStore(Protocol):
    """The chunks the injection detector flagged at ingest, for a person to review and clear."""

    def flagged_chunks(self, collections: Sequence[str] | None = None, limit: int = 100) -> list[StoredChunk]:
        """Return the flagged chunks no person has cleared, in `collections` (None: every collection; matched
        exactly, as a search scope is), highest score first."""
        ...

    def clear_chunk_flag(self, chunk_id: int, by: str, collections: Sequence[str] | None = None) -> bool:
        """Clear a chunk's flag, recording who and when; return False when no flagged chunk of that id is in
        `collections` (None: every collection)."""
        ...


class KeyStore(Protocol):
    """API key records (hashes only)."""

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


class JobQueue(Protocol):
    """Background jobs under leases: queued, taken by one worker at a time, renewed, retried, finished."""

    def create_job(self, job: JobRecord, data: bytes | None = None) -> None:
        """Store a new job, with its input bytes if it has some (dropped when the job ends)."""
        ...

    def job_input(self, job_id: str) -> bytes | None:
        """Return the input bytes of a job that has not ended, or None."""
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


@runtime_checkable
class JobNotifier(Protocol):
    """A queue that tells idle workers at once when a job is queued (optional: without it, workers poll)."""

    def on_job_queued(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (from another thread) when a job may have become ready, until the returned function is
        called; return that function."""
        ...


class EvalRunStore(Protocol):
    """Stored eval runs."""

    def save_eval_run(self, record: dict[str, Any]) -> None:
        """Store an eval run record (a JSON-ready dict with id, kind, dataset, split, tag, created_at)."""
        ...

    def list_eval_runs(self, *, dataset: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Return stored eval run records, newest first."""
        ...

    def get_eval_run(self, run_id: str) -> dict[str, Any] | None:
        """Return one eval run record by id or unique id prefix, or None."""
        ...


class RequestLogStore(Protocol):
    """The log of served HTTP requests."""

    def log_requests(self, rows: Sequence[RequestLogRow]) -> None:
        """Append served requests to the request log."""
        ...

    def request_log(self, *, since: str, key_id: str | None = None) -> list[RequestLogRow]:
        """Return logged requests at or after `since` (UTC ISO time), of one key or all."""
        ...


class AgentRunStore(Protocol):
    """Agent runs and their journal: steps as they happen, side effects' intents and outcomes, approvals."""

    def create_agent_run(self, run: AgentRunRecord) -> None:
        """Store a new run, or raise ConflictError when its id is taken."""
        ...

    def update_agent_run(self, run_id: str, **fields: Any) -> bool:
        """Set a run's status, reason, totals or result (and its updated_at); return whether the run exists."""
        ...

    def get_agent_run(self, run_id: str) -> AgentRunRecord | None:
        """Return one run by id or unique id prefix, or None."""
        ...

    def list_agent_runs(
        self, *, limit: int = 50, owner: str | None = None, collections: Sequence[str] | None = None
    ) -> list[AgentRunRecord]:
        """Return runs, the most recently updated first: only those `owner` started, when given, and only runs over
        one of `collections`, when given (a run over every collection is then left out)."""
        ...

    def lease_agent_run(self, run_id: str, holder: str, *, until: str, now: str, take_from: str | None = None) -> str:
        """Take or renew a run's lease for `holder` until `until` — when it is free, expired at `now`, already
        `holder`'s, or held by `take_from` (a holder known dead) — and return who holds it after the call; raise
        NotFoundError when there is no such run."""
        ...

    def release_agent_run(self, run_id: str, holder: str) -> None:
        """Give up a run's lease, if `holder` still holds it."""
        ...

    def add_agent_step(self, step: AgentStepRecord) -> None:
        """Append a step to a run's journal; raise ConflictError when the run has a step of that number, and
        NotFoundError when there is no such run."""
        ...

    def agent_steps(self, run_id: str) -> list[AgentStepRecord]:
        """Return a run's steps in order."""
        ...

    def record_intent(self, effect: EffectRecord) -> None:
        """Commit the intent of a side-effecting call before it runs; raise ConflictError when an intent with the
        same (run, step, call id, arguments hash) exists (the call was already started, here or elsewhere)."""
        ...

    def record_outcome(self, run_id: str, idempotency_key: str, status: EffectStatus, result: Any) -> bool:
        """Commit a call's outcome; return False when its intent is missing or already has an outcome."""
        ...

    def agent_effects(self, run_id: str) -> list[EffectRecord]:
        """Return a run's side-effect intents with their outcomes, by step."""
        ...

    def request_approval(self, approval: ApprovalRecord) -> None:
        """Store a pending approval of a step's tool call (nothing changes when that step already has one of that
        kind, unless it was consumed: then it is pending again)."""
        ...

    def consume_approval(self, run_id: str, step: int, kind: str) -> bool:
        """Take an approved approval for the one attempt it covers; return False when it is not (or no longer)
        approved: another process took it."""
        ...

    def decide_approval(self, run_id: str, step: int, *, approved: bool, now: str) -> bool:
        """Approve or reject a pending approval; return False when the step has no pending approval."""
        ...

    def agent_approvals(self, run_id: str) -> list[ApprovalRecord]:
        """Return a run's approvals by step."""
        ...

    def prune_agent_runs(self, before: str) -> int:
        """Delete the finished runs (succeeded or failed) last updated before `before` (UTC ISO time) with their
        journal; return how many (a paused or running run is kept)."""
        ...


@runtime_checkable
class Store(
    DocumentStore,
    SearchIndex,
    CollectionStore,
    GuardStore,
    KeyStore,
    JobQueue,
    EvalRunStore,
    RequestLogStore,
    AgentRunStore,
    Protocol,
):
    """What a storage backend behind a URL provides: every protocol above, the LLM layer's response cache and
    spend ledger, migrations and its own life cycle."""

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

    def schema_version(self) -> int:
        """Return the highest applied schema migration."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...

    def expected_schema_version(self) -> int:
        """Return the schema version this code writes (the store is current when `schema_version()` equals it)."""
        ...
