"""The guards at ingest: personal data redacted from a document before anything of it is chunked, embedded or
stored (a collection whose policy says `pii=redact`), and each chunk scored once by the injection detector.

Scoring reuses what the pipeline computed: with the bundled MiniLM as the embedder, a chunk's vector and its
sentences' vectors are the detector's inputs (no model pass); a chunk whose vectors came from the store's cache
takes the score stored with the same embedded text; only what is left is embedded by the detector itself (every
chunk, with another embedder: the detector reads MiniLM vectors of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from archivist.embed.base import Vectors
from archivist.guard._pii_spans import replace_spans
from archivist.guard.injection import EmbeddedText, InjectionDetector
from archivist.guard.pii import PiiDetector, kind_counts, placeholder
from archivist.ingest.document_filter import TextEdit, edit_text
from archivist.store.records import ChunkGuard, SentenceVectors
from archivist.types import Document

#: the metadata key of a redacted document: how many spans of each kind were replaced
REDACTED_KEY = "pii_redacted"


def redact_document(doc: Document, detector: PiiDetector) -> Document:
    """Return the document with the personal data in its text, title, headings and string metadata replaced by
    placeholders (`<EMAIL>`…), its blocks moved to match, and `pii_redacted` ({kind: count} over its text and
    title) in its metadata when any was found."""
    strings = _metadata_strings(doc.metadata)
    headings = list(dict.fromkeys(h for b in doc.blocks for h in b.heading_path))
    found = detector.find_many([doc.text, doc.title, *strings, *headings])
    text_spans, title_spans = found[0], found[1]
    value_spans, heading_spans = found[2 : 2 + len(strings)], found[2 + len(strings) :]
    out = edit_text(doc, [TextEdit(s.start, s.end, placeholder(s.kind)) for s in text_spans])
    if title_spans:
        out.title = replace_spans(doc.title, title_spans)
    redacted = {s: replace_spans(s, spans) for s, spans in zip(strings, value_spans, strict=True) if spans}
    if redacted:
        out.metadata = _with_strings(out.metadata, redacted)
    # A heading is also text of the document (its spans are counted there): only its copy in the blocks is redacted.
    named = {h: replace_spans(h, spans) for h, spans in zip(headings, heading_spans, strict=True) if spans}
    if named:
        out.blocks = [replace(b, heading_path=tuple(named.get(h, h) for h in b.heading_path)) for b in out.blocks]
    counts = kind_counts([*text_spans, *title_spans, *(s for spans in value_spans for s in spans)])
    if counts:
        out.metadata = {**out.metadata, REDACTED_KEY: counts}
    return out


def redact_fields(
    title: str | None, metadata: dict[str, Any], detector: PiiDetector
) -> tuple[str | None, dict[str, Any]]:
    """Return a title and metadata with personal data in the title and in string values (never keys) replaced by
    placeholders: what an upload to a `pii=redact` collection is queued with."""
    strings = _metadata_strings(metadata)
    found = detector.find_many([title or "", *strings])
    redacted = {s: replace_spans(s, spans) for s, spans in zip(strings, found[1:], strict=True) if spans}
    return (
        replace_spans(title, found[0]) if title else title,
        _with_strings(metadata, redacted) if redacted else metadata,
    )


def _metadata_strings(value: Any) -> list[str]:
    """Return every distinct string value (not key) in a metadata tree, in order."""
    out: dict[str, None] = {}

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.setdefault(v)
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)

    walk(value)
    return list(out)


def _with_strings(value: Any, replaced: dict[str, str]) -> Any:
    if isinstance(value, str):
        return replaced.get(value, value)
    if isinstance(value, dict):
        return {k: _with_strings(v, replaced) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_strings(v, replaced) for v in value]
    return value


def chunk_scores(
    detector: InjectionDetector,
    texts: dict[str, tuple[str, str]],
    vectors: dict[str, Vectors] | None,
    sentences: dict[str, SentenceVectors],
    stored: dict[str, float],
) -> dict[str, float]:
    """Return the injection score of each embedded text, {hash: (embedded text, chunk text)}.

    `vectors` are the detector's own kind (MiniLM) or None; a text embedded in this run has its sentence vectors
    in `sentences` (spans into the chunk text, which ends the embedded text); `stored` holds scores the store kept
    for texts it has seen."""
    scores = {h: stored[h] for h in texts if h in stored}
    ready: list[tuple[str, EmbeddedText]] = []
    rest: list[str] = []
    for h, (embedded, chunk) in texts.items():
        if h in scores:
            continue
        sv = sentences.get(h)
        if vectors is None or h not in vectors or sv is None:
            rest.append(h)
            continue
        shift = len(embedded) - len(chunk)
        units = [((a + shift, b + shift), sv.vectors[j]) for j, (a, b) in enumerate(sv.spans)]
        ready.append((h, EmbeddedText(embedded, vectors[h], units)))
    if ready:
        scores.update(zip((h for h, _ in ready), detector.score_embedded([e for _, e in ready]), strict=True))
    if rest:
        scores.update(zip(rest, detector.score([texts[h][0] for h in rest]), strict=True))
    return scores


def verdicts(hashes: Sequence[str], scores: dict[str, float], threshold: float) -> list[ChunkGuard]:
    """Return the guard verdict of each chunk (by embedding hash): its score, flagged at or above the threshold."""
    return [ChunkGuard(scores[h], scores[h] >= threshold) for h in hashes]
