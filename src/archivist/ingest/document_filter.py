"""The per-document filter hook of ingestion: each loaded document passes every filter before it is chunked.

A filter returns the document (changed or not) or `Skipped` with a reason to leave it out of the store. It may add
metadata (flags such as `{"pii_redacted": 3}`: they are stored and filterable like any metadata) and change the
title or text. A text change must keep `Document.blocks` (character offsets into the text) true: make it with
`edit_text`, which moves every block with the edits. Title, heading paths and metadata are the filter's own to
change. Filtered content is what is hashed, so a document is re-ingested when a filter's output changes.
PII redaction and injection scanning plug in here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Protocol

from archivist.types import Document, Skipped


class DocumentFilter(Protocol):
    """Checks or changes one loaded document before it is chunked."""

    def __call__(self, doc: Document) -> Document | Skipped:
        """Return the document to ingest (possibly changed) or Skipped with the reason it is left out."""
        ...


@dataclass(frozen=True, slots=True)
class TextEdit:
    """Replace `text[start:end]` of a document with `replacement`."""

    start: int
    end: int
    replacement: str


def edit_text(doc: Document, edits: Sequence[TextEdit]) -> Document:
    """Return a copy of the document with the edits made and its blocks' offsets moved to match.

    Edits must not overlap. A block boundary inside an edited span moves to that span's replacement: a start to its
    beginning, an end to its end, so a block keeps covering whatever replaced its own text.
    """
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    for e in ordered:
        if not 0 <= e.start <= e.end <= len(doc.text):
            raise ValueError(f"edit [{e.start}, {e.end}) is outside the document's {len(doc.text)} characters")
    for a, b in pairwise(ordered):
        if b.start < a.end:
            raise ValueError(f"edits [{a.start}, {a.end}) and [{b.start}, {b.end}) overlap")
    parts: list[str] = []
    pos = 0
    for e in ordered:
        parts += [doc.text[pos : e.start], e.replacement]
        pos = e.end
    parts.append(doc.text[pos:])

    def moved(offset: int, is_end: bool) -> int:
        shift = 0
        for e in ordered:
            if offset < e.start or (offset == e.start and is_end):
                break
            if offset < e.end or (offset == e.end and not is_end and e.start == e.end):
                return e.start + shift + (len(e.replacement) if is_end else 0)
            shift += len(e.replacement) - (e.end - e.start)
        return offset + shift

    blocks = [replace(b, start=moved(b.start, False), end=moved(b.end, True)) for b in doc.blocks]
    return replace(doc, text="".join(parts), blocks=blocks, metadata=dict(doc.metadata))


def filter_problem(before: Document, after: Document) -> str | None:
    """Return why a filter's output cannot be ingested in place of its input (None when it can)."""
    if after.source != before.source or after.collection != before.collection:
        return "a document filter changed the document's source or collection"
    if any(not 0 <= b.start <= b.end <= len(after.text) for b in after.blocks):
        return "a document filter left blocks outside the document's text (change text with edit_text)"
    return None
