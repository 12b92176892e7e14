"""A passage's sentences, with the document offsets citations quote."""

from __future__ import annotations

from dataclasses import dataclass

from archivist.answer.context import Passage
from archivist.text.sentences import sentence_spans


@dataclass(frozen=True, slots=True)
class Sentence:
    """A sentence of a passage: its text is exactly `document.text[start:end]`."""

    passage: int
    document_id: str
    start: int
    end: int
    text: str


def split_sentences(passage: Passage, *, prose_only: bool = True) -> list[Sentence]:
    """Return the passage's sentences (too short or too long ones left out), with document offsets; the piece of a
    sentence a segment was cut inside (`Segment.cut_start`, `cut_end`) is none."""
    out: list[Sentence] = []
    for seg in passage.segments:
        last = len(seg.text.rstrip())
        for a, b in sentence_spans(seg.text, prose_only=prose_only):
            if a < seg.cut_start or (seg.cut_end and b == last):
                continue
            out.append(Sentence(passage.n, passage.document_id, seg.start + a, seg.start + b, seg.text[a:b]))
    return out
