"""Copying a whole store into another (`archivist store copy`), any backend to any backend, through the store
protocols only: what one backend reads, the other writes, vectors as they are (never embedded again).

Copied: collections; documents with their chunks, each with the vectors and sentence vectors of the model it was
ingested with (its chunker fingerprint names it), keeping its id, content hash, version and times; API keys and the
spend of each key's current budget periods; eval runs; agent runs with their steps, effects and approvals; the
request log. Not copied, on purpose:

- vectors no stored chunk uses (kept by a store as a cache of deleted or re-chunked text): a text that comes back
  is embedded again, and no search reads them;
- the LLM response cache: a cache whose entries expire; the target fills its own;
- jobs: queued or running work belongs to the source's workers and their leases, and ended jobs are history
  rotated after 30 days (the report warns when the source has jobs that have not ended: let them finish first);
- an agent run's lease: no process drives the run in the target (`agent resume` takes it up there);
- chunk ids: the target numbers its rows (nothing stored refers to a chunk id: citations name documents and
  offsets);
- when a collection was created and when an effect's outcome was recorded: the protocols' writers stamp those with
  the time of the copy.

Safety: the target must hold no documents, keys, eval runs, agent runs or collections but `default`, unless
`into_existing`; then what the target holds already must not clash with what is copied (a document of the same
source in the same collection, a key, eval run or agent run of the same id, a collection's policy value set otherwise
there, `default`'s included): clashes are refused before anything is written. What the target holds identically
(the content hash and chunker of a document, the secret of a key, the whole of an eval run, the task and start of an
agent run) is skipped instead, so rerunning a copy that stopped halfway finishes it; a policy value the target lacks
is added to its collection. Each batch of documents is one `write_documents` call, which both backends commit as one
transaction: a copy that fails leaves the target with whole documents only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from archivist.embed.base import Vectors
from archivist.store.filters import Filters
from archivist.store.protocols import Store
from archivist.store.records import (
    AgentRunRecord,
    ApprovalRecord,
    ChunkGuard,
    DocumentWrite,
    SentenceVectors,
    StoredChunk,
    document_text,
)
from archivist.types import (
    DEFAULT_COLLECTION,
    ArchivistError,
    Chunk,
    ConflictError,
    Document,
    DocumentRecord,
    sha256_hex,
)

#: `progress(stage, done, total, detail)`, as the CLI's stage progress takes it
ProgressHook = Callable[[str, int, int | None, str], None]

#: chunks written per `write_documents` call (one transaction): big enough that a round trip is cheap beside it
BATCH_CHUNKS = 2000
#: documents read per listing page
PAGE = 500
#: "every row" for listings that take a limit
_ALL = 2**62
#: how many clashes a refusal names
_NAMED = 5


@dataclass(slots=True)
class CopyReport:
    """What a copy wrote, per kind, what it found in the target already (a stopped copy's part), and warnings."""

    source: str
    target: str
    copied: dict[str, int] = field(default_factory=dict)
    already_there: dict[str, int] = field(default_factory=dict)
    #: vectors and sentence vector sets written, per model (key)
    vectors: dict[str, int] = field(default_factory=dict)
    sentence_vectors: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, kind: str, n: int = 1) -> None:
        """Count `n` more records of a kind as copied."""
        self.copied[kind] = self.copied.get(kind, 0) + n

    def skip(self, kind: str, n: int = 1) -> None:
        """Count `n` more records of a kind as found in the target already."""
        self.already_there[kind] = self.already_there.get(kind, 0) + n

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "source": self.source,
            "target": self.target,
            "copied": dict(self.copied),
            "already_there": dict(self.already_there),
            "vectors": dict(self.vectors),
            "sentence_vectors": dict(self.sentence_vectors),
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }


def copy_store(
    src: Store,
    dst: Store,
    *,
    into_existing: bool = False,
    progress: ProgressHook | None = None,
    batch_chunks: int = BATCH_CHUNKS,
) -> CopyReport:
    """Copy everything `src` holds that a store copy carries (see the module's docstring) into `dst`, writing
    documents in batches of about `batch_chunks` chunks; return what was written. Raise ConflictError when `dst` is
    not empty (and not `into_existing`) or holds clashing records."""
    started = time.perf_counter()
    show = progress or (lambda stage, done, total, detail: None)
    report = CopyReport(src.url, dst.url)
    if not into_existing:
        held = _held(dst)
        if held:
            raise ConflictError(
                f"{dst.url} is not empty (it holds {', '.join(held)}): copy into a new or empty store, or pass "
                "--into-existing to add to it"
            )
    collections = [c.name for c in src.list_collections()]
    documents = _DocumentCopy(src, dst, report, show, batch_chunks)
    clashes = documents.check(collections) + _record_clashes(src, dst)
    if clashes:
        named = "; ".join(clashes[:_NAMED]) + (f"; and {len(clashes) - _NAMED} more" if len(clashes) > _NAMED else "")
        raise ConflictError(f"{dst.url} holds records that clash with {src.url}'s ({len(clashes)}): {named}")
    open_jobs = {s: n for s, n in src.job_counts().items() if s in ("queued", "running") and n}
    if open_jobs:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(open_jobs.items()))
        report.warnings.append(f"jobs are not copied: {src.url} has {counts}; let its workers finish them")
    have = {c.name: c.policy for c in dst.list_collections()}
    for c in src.list_collections():
        if c.name in have:
            report.skip("collections")
            if c.policy:  # "default", which every store has, takes the values the target lacks (none clash)
                dst.set_collection_policy(c.name, c.policy)
        else:
            dst.create_collection(c.name, c.description, c.policy)
            report.add("collections")
    _copy_keys(src, dst, report)
    documents.copy(collections)
    _copy_eval_runs(src, dst, report)
    _copy_agent_runs(src, dst, report, show)
    _copy_request_log(src, dst, report)
    report.seconds = time.perf_counter() - started
    return report


def _held(store: Store) -> list[str]:
    """Return what a store holds that a copy could clash with, described ("3 documents"), or [] when empty."""
    held = []
    documents = store.count_documents()
    if documents:
        held.append(f"{documents} documents")
    named = [c.name for c in store.list_collections() if c.name != DEFAULT_COLLECTION]
    if named:
        held.append(f"collections {', '.join(named[:_NAMED])}")
    keys = len(store.list_api_keys())
    if keys:
        held.append(f"{keys} API keys")
    if store.list_eval_runs(limit=1):
        held.append("eval runs")
    if store.list_agent_runs(limit=1):
        held.append("agent runs")
    return held


def _record_clashes(src: Store, dst: Store) -> list[str]:
    """Return the collection policies, keys, eval runs and agent runs of `src` that `dst` holds differently,
    described."""
    have = {c.name: c.policy for c in dst.list_collections()}
    # A policy value set differently on each side is a clash, never settled silently: the target's `pii=off` kept
    # over the source's `redact` would show personal data the source's owner had redacted.
    clashes = [
        f"collection {c.name!r} has policy {name}={have[c.name][name]} there, {name}={value} here"
        for c in src.list_collections()
        if c.name in have
        for name, value in sorted(c.policy.items())
        if have[c.name].get(name, value) != value
    ]
    for key in src.list_api_keys():
        theirs = dst.get_api_key(key.id)
        if theirs is not None and theirs.secret_hash != key.secret_hash:
            clashes.append(f"API key {key.id} is another key there")
    for run in src.list_eval_runs(limit=_ALL):
        other = dst.get_eval_run(run["id"])
        if other is not None and other["id"] == run["id"] and other != run:
            clashes.append(f"eval run {run['id']} differs there")
    for agent_run in src.list_agent_runs(limit=_ALL):
        theirs_run = dst.get_agent_run(agent_run.id)
        if theirs_run is not None and theirs_run.id == agent_run.id and not _same_run(theirs_run, agent_run):
            clashes.append(f"agent run {agent_run.id} is another run there")
    return clashes


def _same_run(a: AgentRunRecord, b: AgentRunRecord) -> bool:
    """Return whether two records are of one run (it may have gone on in one store since)."""
    return (a.task, a.created_at) == (b.task, b.created_at)


def _copy_keys(src: Store, dst: Store, report: CopyReport) -> None:
    """Copy the API keys the target lacks, and raise the target's spend of each key's current periods to the
    source's (its budget would otherwise start again in the target)."""
    now = datetime.now(UTC)
    for key in src.list_api_keys():
        if dst.get_api_key(key.id) is None:
            dst.save_api_key(key)
            report.add("api_keys")
        else:
            report.skip("api_keys")
        # The budget ledger's key and period labels (llm/accounting.py: KeyBudget, period_label).
        for period in (now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")):
            tokens, usd = src.spend_get(f"key:{key.id}", period)
            have_tokens, have_usd = dst.spend_get(f"key:{key.id}", period)
            if tokens > have_tokens or usd > have_usd:
                dst.spend_add(f"key:{key.id}", period, max(0, tokens - have_tokens), max(0.0, usd - have_usd))
                report.add("key_spend")


def _copy_eval_runs(src: Store, dst: Store, report: CopyReport) -> None:
    """Copy the eval runs the target lacks, oldest first (so both list them in one order)."""
    for run in reversed(src.list_eval_runs(limit=_ALL)):
        other = dst.get_eval_run(run["id"])
        if other is not None and other["id"] == run["id"]:
            report.skip("eval_runs")
            continue
        dst.save_eval_run(run)
        report.add("eval_runs")


def _copy_agent_runs(src: Store, dst: Store, report: CopyReport, show: ProgressHook) -> None:
    """Copy agent runs, oldest first, with the steps, effects and approvals the target lacks of each."""
    runs = list(reversed(src.list_agent_runs(limit=_ALL)))
    for done, run in enumerate(runs, 1):
        theirs = dst.get_agent_run(run.id)
        if theirs is not None and theirs.id == run.id:
            report.skip("agent_runs")
        else:
            dst.create_agent_run(replace(run, lease_holder=None, lease_until=None))
            report.add("agent_runs")
        have_steps = {s.seq for s in dst.agent_steps(run.id)}
        for step in src.agent_steps(run.id):
            if step.seq not in have_steps:
                dst.add_agent_step(step)
                report.add("agent_steps")
        have_effects = {e.idempotency_key for e in dst.agent_effects(run.id)}
        for effect in src.agent_effects(run.id):
            if effect.idempotency_key in have_effects:
                continue
            dst.record_intent(replace(effect, status="pending", result=None, completed_at=None))
            if effect.status != "pending":
                dst.record_outcome(run.id, effect.idempotency_key, effect.status, effect.result)
            report.add("agent_effects")
        have_approvals = {(a.step, a.kind) for a in dst.agent_approvals(run.id)}
        # Decided approvals first: deciding one decides every pending approval of its step.
        for approval in sorted(src.agent_approvals(run.id), key=lambda a: (a.step, a.status == "pending")):
            if (approval.step, approval.kind) not in have_approvals:
                _copy_approval(dst, approval)
                report.add("agent_approvals")
        show("agent runs", done, len(runs), run.id)


def _copy_approval(dst: Store, approval: ApprovalRecord) -> None:
    """Write an approval as it stands: requested, then decided and consumed as it was."""
    dst.request_approval(replace(approval, status="pending", decided_at=None))
    if approval.status != "pending":
        decided = approval.decided_at or approval.created_at
        dst.decide_approval(approval.run_id, approval.step, approved=approval.status != "rejected", now=decided)
    if approval.status == "consumed":
        dst.consume_approval(approval.run_id, approval.step, approval.kind)


def _copy_request_log(src: Store, dst: Store, report: CopyReport) -> None:
    """Append the source's request log rows the target lacks (by request id)."""
    have = {r.request_id for r in dst.request_log(since="")}
    theirs = src.request_log(since="")
    rows = [r for r in theirs if r.request_id not in have]
    for i in range(0, len(rows), 1000):
        dst.log_requests(rows[i : i + 1000])
    report.add("request_log", len(rows))
    if len(rows) < len(theirs):
        report.skip("request_log", len(theirs) - len(rows))


@dataclass(slots=True)
class _Pending:
    """Documents waiting to be written in one batch: their writes and stored chunks, by (model, sentence key)."""

    writes: list[tuple[DocumentWrite, list[StoredChunk]]] = field(default_factory=list)
    chunks: int = 0


class _DocumentCopy:
    """Documents read page by page from the source, rebuilt as writes and written in batches of whole documents."""

    def __init__(self, src: Store, dst: Store, report: CopyReport, show: ProgressHook, batch_chunks: int) -> None:
        self.src, self.dst, self.report, self.show = src, dst, report, show
        self.batch_chunks = batch_chunks
        self.models = sorted(src.stats().get("vectors", {}), key=len, reverse=True)
        #: ids of the documents the target holds identically (skipped)
        self.there: set[str] = set()
        #: the embedding hashes whose vectors were written, per model (a text shared by documents counts once)
        self.hashes: dict[str, set[str]] = {}

    def _pages(self, collection: str) -> Iterator[tuple[list[DocumentRecord], dict[str, tuple[str, str]]]]:
        """Yield a collection's documents a page at a time, in source order, with each one's (hash, chunker)."""
        scope = Filters(scope=(collection,))
        offset = 0
        while True:
            page = self.src.list_documents(limit=PAGE, offset=offset, filters=scope, order="source")
            if not page:
                return
            yield page, self.src.document_states([d.source for d in page], collection)
            offset += len(page)

    def check(self, collections: list[str]) -> list[str]:
        """Return the documents the target holds differently (by source and collection), described; note those it
        holds identically."""
        clashes = []
        listed = 0
        for collection in collections:
            for page, states in self._pages(collection):
                listed += len(page)
                theirs = self.dst.document_states([d.source for d in page], collection)
                for d in page:
                    if d.source not in theirs:
                        continue
                    if theirs[d.source] == states[d.source]:
                        self.there.add(d.id)
                    else:
                        clashes.append(f"document {d.source!r} in collection {collection!r} differs there")
        total = self.src.count_documents()
        if listed != total:  # a document of a collection that has no row (a store damaged by hand)
            raise ArchivistError(f"{self.src.url} lists {listed} documents in its collections but holds {total}")
        return clashes

    def copy(self, collections: list[str]) -> None:
        """Write every document the target does not hold yet, in batches of about BATCH_CHUNKS chunks."""
        total = self.src.count_documents()
        done = 0
        pending: dict[tuple[str, str | None], _Pending] = {}
        for collection in collections:
            for page, states in self._pages(collection):
                for record in page:
                    done += 1
                    if record.id in self.there:
                        self.report.skip("documents")
                        continue
                    chunks = self.src.document_chunks(record.id)
                    chunker = states[record.source][1]
                    models = self._models(record, chunker, bool(chunks))
                    batch = pending.setdefault(models, _Pending())
                    batch.writes.append((_write_of(record, chunks, chunker), chunks))
                    batch.chunks += len(chunks)
                    if batch.chunks >= self.batch_chunks:
                        self._flush(models, pending.pop(models))
                    self.show("documents", done, total, record.source)
        for models, batch in pending.items():
            self._flush(models, batch)

    def _models(self, record: DocumentRecord, chunker: str, has_chunks: bool) -> tuple[str, str | None]:
        """Return the embedding model a document was written with and its sentence model key (None: it has no
        sentence vectors), read from its chunker fingerprint: "<chunker>|<model>[|sentences-<version>]"."""
        base, sep, version = chunker.rpartition("|sentences-")
        if not sep or not version or "|" in version:
            base, version = chunker, ""
        model = next((m for m in self.models if base.endswith(f"|{m}")), None)
        if model is None:
            if has_chunks:
                raise ArchivistError(
                    f"{record.source}: its chunker fingerprint {chunker!r} names no embedding model whose vectors "
                    f"{self.src.url} holds ({', '.join(self.models) or 'none'})"
                )
            model = base.rpartition("|")[2]  # nothing to look up: any name writes no vector
        return model, f"{model}|sentences-{version}" if version else None

    def _flush(self, models: tuple[str, str | None], batch: _Pending) -> None:
        """Write a batch of documents with their vectors and sentence vectors in one `write_documents` call."""
        model, sentence_key = models
        hashes = [h for w, _ in batch.writes for h in w.embed_hashes]
        vectors: dict[str, Vectors] = self.src.cached_vectors(model, hashes)
        for w, _ in batch.writes:
            missing = sum(h not in vectors for h in w.embed_hashes)
            if missing:
                raise ArchivistError(
                    f"{w.document.source}: {missing} of its {len(w.chunks)} chunks have no {model} vector in "
                    f"{self.src.url}"
                )
        sentences: tuple[str, dict[str, SentenceVectors]] | None = None
        if sentence_key is not None:
            by_chunk = {c.id: (c, h) for w, chunks in batch.writes for c, h in zip(chunks, w.embed_hashes, strict=True)}
            by_hash = {}
            for chunk_id, sv in self.src.chunk_sentences(sentence_key, list(by_chunk)).items():
                chunk, h = by_chunk[chunk_id]
                # Read back as document offsets, written as offsets into the chunk's text.
                by_hash[h] = SentenceVectors([(a - chunk.start, b - chunk.start) for a, b in sv.spans], sv.vectors)
            sentences = (sentence_key, by_hash)
            if by_hash:
                self.report.sentence_vectors[sentence_key] = self.report.sentence_vectors.get(sentence_key, 0) + len(
                    by_hash
                )
        self.dst.write_documents(model, [w for w, _ in batch.writes], vectors, sentences)
        self.report.add("documents", len(batch.writes))
        self.report.add("chunks", sum(len(w.chunks) for w, _ in batch.writes))
        seen = self.hashes.setdefault(model, set())
        seen.update(vectors)
        self.report.vectors[model] = len(seen)


def _write_of(record: DocumentRecord, chunks: list[StoredChunk], chunker: str) -> DocumentWrite:
    """Return the write that stores a document as the source holds it: its chunks, their embedding keys (the hash
    of each chunk's embedded text, as ingestion computes it), its fingerprint, hash, version and times."""
    document = Document(
        source=record.source,
        title=record.title,
        text=document_text(chunks, record.char_count),
        media_type=record.media_type,
        blocks=[],
        metadata=record.metadata,
        collection=record.collection,
    )
    if document.id != record.id:
        raise ArchivistError(
            f"{record.source}: stored with id {record.id}, but its source and collection give {document.id}"
        )
    rebuilt = [
        Chunk(
            document_id=record.id,
            ordinal=c.ordinal,
            text=c.text,
            start=c.start,
            end=c.end,
            heading_path=c.heading_path,
            token_count=c.token_count,
            page=c.page,
            page_end=c.page_end,
        )
        for c in chunks
    ]
    hashes = [sha256_hex(c.embedding_text(record.title)) for c in rebuilt]
    guards = [ChunkGuard(c.guard_score, c.guard_flagged, c.guard_cleared_by, c.guard_cleared_at) for c in chunks]
    return DocumentWrite(document, rebuilt, hashes, chunker, copied_from=record, guards=guards)
