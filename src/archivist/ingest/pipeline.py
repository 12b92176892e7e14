"""The ingestion pipeline: load, skip unchanged, chunk, embed (cached), write atomically, sync."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archivist.answer.text import SPLITTER_VERSION, sentence_model_key, sentence_spans
from archivist.embed.base import Embedder, SpanEmbedder, Vectors, span_pooling
from archivist.ingest.chunker import Chunker
from archivist.ingest.loaders import iter_jsonl, load_path, source_for
from archivist.store.base import DocumentWrite, SentenceVectors, Store
from archivist.types import (
    DEFAULT_COLLECTION,
    ArchivistError,
    Document,
    IngestReport,
    Skipped,
    document_id_for,
    sha256_hex,
)

_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})


@dataclass(slots=True)
class Progress:
    """What a progress display needs after each step."""

    done: int
    total: int
    current: str
    chunks_embedded: int


ProgressHook = Callable[[Progress], None]


@dataclass(slots=True)
class _Pending:
    """Documents chunked and waiting for their vectors, grouped so the model sees full batches."""

    writes: list[tuple[DocumentWrite, list[str], bool]] = field(default_factory=list)
    chunk_count: int = 0


@dataclass(slots=True)
class _Input:
    path: Path
    source: str
    is_jsonl: bool


class IngestPipeline:
    """Turns files into stored, embedded, searchable chunks, one atomic write per document."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        chunker: Chunker,
        *,
        max_file_bytes: int,
        group_chunks: int = 64,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self.max_file_bytes = max_file_bytes
        self.group_chunks = group_chunks

    def run(
        self,
        paths: Sequence[Path],
        *,
        sync: bool = False,
        progress: ProgressHook | None = None,
        collection: str = DEFAULT_COLLECTION,
        source_name: Callable[[Path], str] | None = None,
        metadata: dict[str, Any] | None = None,
        title: str | None = None,
        refresh: bool = False,
    ) -> IngestReport:
        """Ingest files and folders into a collection; return what was added, updated, unchanged, removed, skipped,
        failed. `source_name` names each file's source (default: its path); `metadata` is added to every document;
        `title` replaces the loaders' titles (for a single document sent with its own title). `refresh` rewrites
        unchanged documents too (cached vectors are reused; what the store lacks, e.g. sentence vectors, is made).
        """
        started = time.perf_counter()
        report = IngestReport()
        inputs = self._expand(paths, report, source_name or source_for)
        total = sum(_estimate_documents(i) for i in inputs)
        seen: set[str] = set()
        protected: set[str] = set()  # files with problems: --sync must not delete what they held
        pending = _Pending()
        done = 0
        # Vectors of another model are useless: switching embedders must re-chunk and re-embed. Sentence vectors
        # cut by another splitter version are useless too: a document stored without current ones is rewritten, so
        # an upgrade heals on the next ingest instead of answering slower (chunk vectors are reused).
        fingerprint = f"{self.chunker.fingerprint()}|{self.embedder.model_id}"
        if span_pooling(self.embedder) is not None:
            fingerprint += f"|sentences-{SPLITTER_VERSION}"

        def tick(current: str) -> None:
            if progress is not None:
                progress(Progress(done, max(total, done), current, report.chunks_embedded))

        for batch in self._document_batches(inputs, report, protected):
            docs = [d for d in batch if d.source not in seen]
            seen.update(d.source for d in batch)
            for doc in docs:
                doc.collection = collection
                if metadata:
                    doc.metadata = {**doc.metadata, **metadata}
                if title:
                    doc.title = title
            states = self.store.document_states([d.source for d in docs], collection)
            for doc in docs:
                state = states.get(doc.source)
                if state == (doc.content_hash, fingerprint) and not refresh:
                    report.unchanged.append(doc.source)
                    done += 1
                    continue
                try:
                    chunks = self.chunker.chunk(doc)
                except Exception as exc:  # one bad document must not stop the run
                    report.failed.append(Skipped(doc.source, f"chunking failed: {exc}"))
                    done += 1
                    continue
                if not chunks:
                    report.skipped.append(Skipped(doc.source, "no text to index"))
                    done += 1
                    continue
                hashes = [sha256_hex(c.embedding_text(doc.title)) for c in chunks]
                write = DocumentWrite(doc, chunks, hashes, fingerprint)
                pending.writes.append((write, [c.embedding_text(doc.title) for c in chunks], state is not None))
                pending.chunk_count += len(chunks)
                if pending.chunk_count >= self.group_chunks:
                    done += self._flush(pending, report)
                    pending = _Pending()
                    tick(doc.source)
            tick(docs[-1].source if docs else "")
        done += self._flush(pending, report)
        tick("")
        if sync:
            self._sync(paths, inputs, seen, protected, report, collection)
        report.seconds = time.perf_counter() - started
        return report

    # -- steps --------------------------------------------------------------------------------------

    def _expand(self, paths: Sequence[Path], report: IngestReport, name: Callable[[Path], str]) -> list[_Input]:
        inputs: list[_Input] = []
        for path in paths:
            if not path.exists():
                report.skipped.append(Skipped(str(path), "no such file or directory"))
            elif path.is_dir():
                for file in _walk(path):
                    inputs.append(_Input(file, name(file), file.suffix.lower() in _JSONL_SUFFIXES))
            elif path.is_file():
                inputs.append(_Input(path, name(path), path.suffix.lower() in _JSONL_SUFFIXES))
            else:
                report.skipped.append(Skipped(str(path), "not a regular file or directory"))
        unique: dict[str, _Input] = {}
        for i in inputs:
            unique.setdefault(i.source, i)
        return list(unique.values())

    def _document_batches(
        self, inputs: list[_Input], report: IngestReport, protected: set[str], size: int = 256
    ) -> Iterator[list[Document]]:
        batch: list[Document] = []
        for inp in inputs:
            for item in self._load(inp):
                if isinstance(item, Skipped):
                    report.skipped.append(item)
                    protected.add(inp.source)
                    continue
                batch.append(item)
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def _load(self, inp: _Input) -> Iterator[Document | Skipped]:
        if inp.is_jsonl:
            items: Iterable[Document | Skipped] = iter_jsonl(inp.path, max_record_bytes=self.max_file_bytes)
        else:
            result = load_path(inp.path, max_file_bytes=self.max_file_bytes)
            items = [*result.skipped, *result.documents]
        # Loaders name sources by path; a caller-chosen name (an upload's) replaces that prefix.
        default = source_for(inp.path)
        for item in items:
            if inp.source != default and (item.source == default or item.source.startswith(default + "#")):
                item.source = inp.source + item.source[len(default) :]
            yield item

    def _flush(self, pending: _Pending, report: IngestReport) -> int:
        """Embed what the cache lacks and write the pending documents; return how many were handled."""
        if not pending.writes:
            return 0
        model = self.embedder.model_id
        all_hashes = [h for w, _, _ in pending.writes for h in w.embed_hashes]
        pooling = span_pooling(self.embedder)
        try:
            vectors: dict[str, Vectors] = self.store.cached_vectors(model, all_hashes)
            sentence_key = sentence_model_key(model)
            # A chunk whose vector is cached but whose sentences are not (stored before sentence vectors
            # existed) is run through the model again: both come out of the same pass.
            have_sentences = self.store.sentence_hashes(sentence_key, all_hashes) if pooling else set()
            missing: dict[str, tuple[str, str]] = {}
            for w, texts, _ in pending.writes:
                for h, t, c in zip(w.embed_hashes, texts, w.chunks, strict=True):
                    if h not in vectors or (pooling is not None and h not in have_sentences):
                        missing.setdefault(h, (t, c.text))
            sentences: dict[str, SentenceVectors] = {}
            if missing and pooling is not None:
                embedded, sentences = _embed_with_sentences(pooling, missing)
            elif missing:
                embedded = self.embedder.embed([t for t, _ in missing.values()])
            if missing:
                vectors.update(zip(missing.keys(), embedded, strict=True))
                report.chunks_embedded += len(missing)
            self.store.write_documents(
                model,
                [w for w, _, _ in pending.writes],
                vectors,
                (sentence_key, sentences) if pooling is not None else None,
            )
        except ArchivistError as exc:
            for w, _, _ in pending.writes:
                report.failed.append(Skipped(w.document.source, str(exc)))
            return len(pending.writes)
        for w, _, existed in pending.writes:
            (report.updated if existed else report.added).append(w.document.source)
            report.chunks_written += len(w.chunks)
        return len(pending.writes)

    def _sync(
        self,
        paths: Sequence[Path],
        inputs: list[_Input],
        seen: set[str],
        protected: set[str],
        report: IngestReport,
        collection: str,
    ) -> None:
        """Delete stored documents under the given paths whose source is gone."""
        dirs = [source_for(p).rstrip("/") + "/" for p in paths if p.is_dir()]
        files = {i.source for i in inputs} | {source_for(p) for p in paths if not p.is_dir()}
        for source in self.store.sources(collection):
            if source in seen:
                continue
            file_source = source.split("#", 1)[0]
            in_scope = file_source in files or any(file_source.startswith(d) for d in dirs)
            # A source under a given path that was not named at all (e.g. a deleted file) is also gone.
            if not in_scope or file_source in protected or source in protected:
                continue
            if self.store.delete_document(document_id_for(source, collection)):
                report.removed.append(source)


def _walk(root: Path) -> Iterator[Path]:
    """Yield the regular files under a folder in a stable order, skipping hidden files and folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _estimate_documents(inp: _Input) -> int:
    """Return how many documents an input will likely yield (lines of a JSONL file, else 1)."""
    if not inp.is_jsonl:
        return 1
    try:
        with inp.path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 1


def _embed_with_sentences(
    pooling: SpanEmbedder, texts: dict[str, tuple[str, str]]
) -> tuple[Vectors, dict[str, SentenceVectors]]:
    """Return the vectors of {hash: (embedded text, chunk text)} and each chunk's sentence vectors, one pass."""
    own = [sentence_spans(chunk) for _, chunk in texts.values()]
    # The chunk text ends the embedded text (which may start with its title and headings).
    shifts = [len(embedded) - len(chunk) for embedded, chunk in texts.values()]
    vectors, pooled = pooling.embed_with_spans(
        [t for t, _ in texts.values()],
        [[(a + d, b + d) for a, b in spans] for spans, d in zip(own, shifts, strict=True)],
    )
    sentences: dict[str, SentenceVectors] = {}
    for h, spans, rows in zip(texts, own, pooled, strict=True):
        keep = [j for j in range(len(spans)) if rows[j].any()]  # a span past the model's truncation has none
        sentences[h] = SentenceVectors([spans[j] for j in keep], rows[keep])
    return vectors, sentences
