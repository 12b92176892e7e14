"""The ingestion pipeline: load, filter, skip unchanged, chunk, embed (cached), write atomically, sync."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from archivist.embed.base import Embedder, SpanEmbedder, Vectors, span_pooling
from archivist.embed.minilm_onnx import MODEL_ID as MINILM_MODEL_ID
from archivist.guard.injection import InjectionDetector
from archivist.guard.pii import PiiDetector
from archivist.ingest.chunker import Chunker
from archivist.ingest.document_filter import DocumentFilter, filter_problem
from archivist.ingest.guards import chunk_scores, redact_document, verdicts
from archivist.ingest.loaders import iter_jsonl, load_path, source_for
from archivist.observe import span
from archivist.store.protocols import Store
from archivist.store.records import DocumentWrite, SentenceVectors
from archivist.text.sentences import SPLITTER_VERSION, sentence_model_key, sentence_spans
from archivist.types import (
    DEFAULT_COLLECTION,
    ArchivistError,
    Document,
    IngestReport,
    Skipped,
    StoreError,
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

    writes: list[tuple[DocumentWrite, list[str]]] = field(default_factory=list)
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
        filters: Sequence[DocumentFilter] = (),
        injection: Callable[[], InjectionDetector] | None = None,
        pii: Callable[[], PiiDetector] = PiiDetector,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self.max_file_bytes = max_file_bytes
        self.group_chunks = group_chunks
        #: applied in order to each loaded document before chunking (see `ingest.document_filter`)
        self.filters = list(filters)
        #: the injection detector every chunk is scored with (loaded on first use; None: chunks are stored unscored)
        self.injection = injection
        #: the PII detector of collections whose policy says `pii=redact` (made on first use)
        self.pii = pii

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
        report: IngestReport | None = None,
        follow_symlinks: bool = False,
    ) -> IngestReport:
        """Ingest files and folders into a collection; return what was added, updated, unchanged, removed, skipped,
        failed. `source_name` names each file's source (default: its path); `metadata` is added to every document;
        `title` replaces the loaders' titles (for a single document sent with its own title). `refresh` rewrites
        unchanged documents too (cached vectors are reused; what the store lacks, e.g. sentence vectors, is made).
        `report`, when given, is filled as the run goes (a progress hook can read what is written so far).
        In a folder, a symlink to a file or folder outside it is skipped unless `follow_symlinks` (a path named in
        `paths` is always read, link or not).
        """
        started = time.perf_counter()
        report = report if report is not None else IngestReport()
        protected: set[str] = set()  # files (and folders, ending in '/') with problems: --sync keeps what they held
        inputs = self._expand(paths, report, source_name or source_for, follow_symlinks, protected)
        total = sum(_estimate_documents(i) for i in inputs)
        seen: set[str] = set()
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

        # The collection's policy is read once per run: redaction happens before anything of a document is stored.
        redactor = self.pii() if self.store.collection_policy(collection).get("pii") == "redact" else None

        for batch in self._document_batches(inputs, report, protected):
            docs = [d for d in batch if d.source not in seen]
            seen.update(d.source for d in batch)
            for doc in docs:
                doc.collection = collection
                if metadata:
                    doc.metadata = {**doc.metadata, **metadata}
                if title:
                    doc.title = title
            kept = [d for d in (self._filter(doc, report, redactor) for doc in docs) if d is not None]
            done += len(docs) - len(kept)
            docs = kept
            states = self.store.document_states([d.source for d in docs], collection)
            for doc in docs:
                with span("ingest.document", source=doc.source, collection=collection) as current:
                    write, outcome = self._prepare(doc, states.get(doc.source), fingerprint, refresh, report)
                    current.set(outcome=outcome, chunks=len(write.chunks) if write else 0)
                if write is None:
                    done += 1
                    continue
                pending.writes.append((write, [c.embedding_text(doc.title) for c in write.chunks]))
                pending.chunk_count += len(write.chunks)
                if pending.chunk_count >= self.group_chunks:
                    done += self._flush(pending, report, refresh)
                    pending = _Pending()
                    tick(doc.source)
            tick(docs[-1].source if docs else "")
        done += self._flush(pending, report, refresh)
        tick("")
        if sync:
            self._sync(paths, inputs, seen, protected, report, collection)
        report.seconds = time.perf_counter() - started
        return report

    # -- steps --------------------------------------------------------------------------------------

    def _prepare(
        self,
        doc: Document,
        state: tuple[str, str] | None,
        fingerprint: str,
        refresh: bool,
        report: IngestReport,
    ) -> tuple[DocumentWrite | None, str]:
        """Return the write of a document's chunks ("chunked": embedded and written with its group), or None when
        it is done already ("unchanged", "failed", "skipped": noted in the report)."""
        if state == (doc.content_hash, fingerprint) and not refresh:
            report.unchanged.append(doc.source)
            return None, "unchanged"
        try:
            chunks = self.chunker.chunk(doc)
        except Exception as exc:  # one bad document must not stop the run
            report.failed.append(Skipped(doc.source, f"chunking failed: {exc}"))
            return None, "failed"
        if not chunks:
            report.skipped.append(Skipped(doc.source, "no text to index"))
            return None, "skipped"
        hashes = [sha256_hex(c.embedding_text(doc.title)) for c in chunks]
        return DocumentWrite(doc, chunks, hashes, fingerprint), "chunked"

    def _filter(self, doc: Document, report: IngestReport, redactor: PiiDetector | None) -> Document | None:
        """Return the document after every filter and, last, PII redaction (when the collection asks for it), or
        None when one skipped it or failed (the report says why)."""
        doc = without_nul(doc)
        steps: list[DocumentFilter] = list(self.filters)
        if redactor is not None:
            steps.append(lambda d: redact_document(d, redactor))
        for keep in steps:
            try:
                result = keep(doc)
            except Exception as exc:  # one bad document (or filter bug) must not stop the run
                report.failed.append(Skipped(doc.source, f"document filter failed: {exc}"))
                return None
            if isinstance(result, Skipped):
                report.skipped.append(result)
                return None
            problem = filter_problem(doc, result)
            if problem is not None:
                report.failed.append(Skipped(doc.source, problem))
                return None
            doc = result
        return doc

    def _expand(
        self,
        paths: Sequence[Path],
        report: IngestReport,
        name: Callable[[Path], str],
        follow_symlinks: bool,
        protected: set[str],
    ) -> list[_Input]:
        inputs: list[_Input] = []

        def add(file: Path) -> None:
            source = name(file)
            problem = _name_problem(file, source)
            if problem is not None:
                report.skipped.append(Skipped(_printable(source), problem))
            else:
                inputs.append(_Input(file, source, file.suffix.lower() in _JSONL_SUFFIXES))

        for path in paths:
            if not path.exists():
                report.skipped.append(Skipped(_printable(str(path)), "no such file or directory"))
            elif path.is_dir():
                for file, reason in _walk(path, follow_symlinks):
                    if reason is None:
                        add(file)
                        continue
                    report.skipped.append(Skipped(_printable(name(file)), reason))
                    if reason.startswith("cannot read folder"):
                        protected.add(name(file).rstrip("/") + "/")
            elif path.is_file():
                add(path)
            else:
                report.skipped.append(Skipped(_printable(str(path)), "not a regular file or directory"))
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
                if isinstance(item, Document) and not _encodable(item):
                    item = Skipped(_printable(item.source), "not valid Unicode text (an unpaired surrogate)")
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

    def _flush(self, pending: _Pending, report: IngestReport, refresh: bool) -> int:
        """Embed what the cache lacks and write the pending documents; return how many were handled."""
        if not pending.writes:
            return 0
        with span("ingest.write", documents=len(pending.writes), chunks=pending.chunk_count) as current:
            embedded_before = report.chunks_embedded
            handled = self._embed_and_write(pending, report, refresh)
            current.set(chunks_embedded=report.chunks_embedded - embedded_before)
            return handled

    def _embed_and_write(self, pending: _Pending, report: IngestReport, refresh: bool) -> int:
        model = self.embedder.model_id
        all_hashes = [h for w, _ in pending.writes for h in w.embed_hashes]
        pooling = span_pooling(self.embedder)
        try:
            vectors: dict[str, Vectors] = self.store.cached_vectors(model, all_hashes)
            sentence_key = sentence_model_key(model)
            # A chunk whose vector is cached but whose sentences are not (stored before sentence vectors
            # existed) is run through the model again: both come out of the same pass.
            have_sentences = self.store.sentence_hashes(sentence_key, all_hashes) if pooling else set()
            missing: dict[str, tuple[str, str]] = {}
            for w, texts in pending.writes:
                for h, t, c in zip(w.embed_hashes, texts, w.chunks, strict=True):
                    if h not in vectors or (pooling is not None and h not in have_sentences):
                        missing.setdefault(h, (t, c.text))
            sentences: dict[str, SentenceVectors] = {}
            if missing:
                with span("embed", kind="documents", texts=len(missing)):
                    if pooling is not None:
                        embedded, sentences = _embed_with_sentences(pooling, missing)
                    else:
                        embedded = self.embedder.embed([t for t, _ in missing.values()])
                vectors.update(zip(missing.keys(), embedded, strict=True))
                report.chunks_embedded += len(missing)
            if self.injection is not None:
                self._scan(pending, vectors, sentences, rescan=refresh)
            outcomes = self.store.write_documents(
                model,
                [w for w, _ in pending.writes],
                vectors,
                (sentence_key, sentences) if pooling is not None else None,
                skip_unchanged=not refresh,
            )
        except StoreError:
            raise  # the store itself failed (locked, full, gone): every later write would fail too, so stop
        except ArchivistError as exc:
            for w, _ in pending.writes:
                report.failed.append(Skipped(w.document.source, str(exc)))
            return len(pending.writes)
        # The store decides inside its write transaction: another process may have written the same file since
        # this run read the document states.
        for (w, _), outcome in zip(pending.writes, outcomes, strict=True):
            {"added": report.added, "updated": report.updated, "unchanged": report.unchanged}[outcome].append(
                w.document.source
            )
            if outcome != "unchanged":
                report.chunks_written += len(w.chunks)
        return len(pending.writes)

    def _scan(
        self,
        pending: _Pending,
        vectors: dict[str, Vectors],
        sentences: dict[str, SentenceVectors],
        *,
        rescan: bool = False,
    ) -> None:
        """Give each pending write its chunks' injection verdicts, reusing the vectors when the detector reads this
        embedder's (the bundled MiniLM) and, unless `rescan` (`--refresh`: the detector may be new), the scores the
        store holds for texts it has seen."""
        assert self.injection is not None
        detector = self.injection()
        texts = {
            h: (t, c.text) for w, ts in pending.writes for h, t, c in zip(w.embed_hashes, ts, w.chunks, strict=True)
        }
        with span("guard.scan", chunks=len(texts)):
            scores = chunk_scores(
                detector,
                texts,
                vectors if self.embedder.model_id == MINILM_MODEL_ID else None,
                sentences,
                {} if rescan else self.store.guard_scores(list(texts)),
            )
        for w, _ in pending.writes:
            w.guards = verdicts(w.embed_hashes, scores, detector.threshold)

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
            if any(file_source.startswith(p) for p in protected if p.endswith("/")):
                continue
            if self.store.delete_document(document_id_for(source, collection)):
                report.removed.append(source)


def _printable(text: str) -> str:
    """Return a path or source fit to store and print: bytes that are not UTF-8 shown as \\xNN escapes."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _name_problem(path: Path, source: str) -> str | None:
    """Return why a file cannot be stored under its name (one that is not UTF-8), or None."""
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        # Python keeps such bytes as lone surrogates, which no store, hash or JSON output can encode.
        return "file name is not valid UTF-8" if not _is_utf8(path.name) else "path is not valid UTF-8"
    return None


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encodable(doc: Document) -> bool:
    """Return whether a document's source, title, metadata and text are valid Unicode (can be hashed and stored)."""
    try:
        doc.content_hash.encode("ascii")
        doc.source.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _within(path: str, folder: str) -> bool:
    """Return whether a resolved path is the folder or lies under it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk(root: Path, follow_symlinks: bool) -> Iterator[tuple[Path, str | None]]:
    """Yield (file, None) for each regular file under a folder in a stable order, and (path, reason) for each entry
    that is not ingested; hidden files and folders are left out without a word.

    A symlink to something outside the folder is skipped unless `follow_symlinks`; one to a folder inside it is
    never followed (its files are read under their own path). Each folder is walked once, so a symlink loop ends.
    """
    base = os.path.realpath(root)
    walked: set[tuple[int, int]] = set()
    try:
        info = os.stat(root)
        walked.add((info.st_dev, info.st_ino))
    except OSError:
        pass
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as error:
            yield folder, f"cannot read folder: {error.strerror or error}"
            continue
        subfolders: list[Path] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            reason, is_folder = _entry_problem(entry, base, follow_symlinks, walked)
            if reason is not None:
                yield path, reason
            elif is_folder:
                subfolders.append(path)
            else:
                yield path, None
        # Depth-first in name order, a folder's own files before its subfolders' (the order os.walk gives).
        stack.extend(reversed(subfolders))


def _entry_problem(
    entry: os.DirEntry[str], base: str, follow_symlinks: bool, walked: set[tuple[int, int]]
) -> tuple[str | None, bool]:
    """Return why a folder entry is not ingested (None if it is) and whether it is a folder to walk."""
    if not _is_utf8(entry.name):
        kind = "folder" if entry.is_dir() else "file"
        return f"{kind} name is not valid UTF-8", False
    link = entry.is_symlink()
    try:
        info = os.stat(entry.path)
    except OSError as error:
        if link and error.errno == errno.ELOOP:
            return "symlink loop", False
        if link and error.errno == errno.ENOENT:
            return "broken symlink", False
        return f"cannot read: {error.strerror or error}", False
    is_folder = stat.S_ISDIR(info.st_mode)
    if not is_folder and not stat.S_ISREG(info.st_mode):
        # A FIFO would block the reader forever; a device or socket holds no document.
        return "not a regular file", False
    kind = "folder" if is_folder else "file"
    if link:
        inside = _within(os.path.realpath(entry.path), base)
        if not inside and not follow_symlinks:
            return f"symlink to a {kind} outside the ingested folder (--follow-symlinks reads it)", False
        if inside and is_folder:
            return "symlink to a folder inside the ingested folder (its files are read under their own path)", False
    if is_folder:
        key = (info.st_dev, info.st_ino)
        if key in walked:
            return "folder already walked (reached again through a symlink: a loop)", False
        walked.add(key)
    return None, is_folder


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


def without_nul(doc: Document) -> Document:
    """Return the document with every NUL character in its title, text and metadata replaced by U+FFFD: a NUL
    past the loader's binary check is damage, not text, and PostgreSQL refuses to store it (one such file must not
    stop an ingest). One character for one, so the blocks' offsets still hold."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("\x00", "\ufffd")
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    title, text, metadata = clean(doc.title), clean(doc.text), clean(doc.metadata)
    if (title, text, metadata) == (doc.title, doc.text, doc.metadata):
        return doc
    return replace(doc, title=title, text=text, metadata=metadata)
