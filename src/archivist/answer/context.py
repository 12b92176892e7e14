"""Context packing: the best hits fitted to a token budget, overlapping chunks of one document merged."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from archivist.guard.quote import quote
from archivist.text.sentences import (
    MAX_INTRODUCED_CHARS,
    introduced_block,
    leading_block,
    sentence_spans,
    sentence_start,
    unstored_space,
)
from archivist.types import DEFAULT_COLLECTION, Hit

TokenCounter = Callable[[str], int]


def rough_tokens(text: str) -> int:
    """Return a cheap token estimate (about four characters a token), for budgets that need no tokenizer."""
    return -(-len(text) // 4)


@dataclass(slots=True)
class Segment:
    """A contiguous span `[start, end)` of a document, with its text exactly as in the document."""

    start: int
    end: int
    text: str
    #: the section and page of the hit the span starts in (a citation reports where its sentence is)
    heading_path: tuple[str, ...] = ()
    page: int | None = None
    #: the chunk the span ends in (where a sentence cut at the span's end continues: the chunk after it)
    end_chunk: int | None = None
    #: the chunk the span starts in (where a sentence cut at the span's start began: the chunk before it)
    start_chunk: int | None = None
    #: how much of the span's start belongs to a sentence begun before it that could not be completed (0: none)
    cut_start: int = 0
    #: the span ends inside a sentence that could not be completed: its last piece is no sentence
    cut_end: bool = False


@dataclass(slots=True)
class Passage:
    """One numbered context passage: spans of one document (merged from its hits), best hit's score."""

    n: int
    document_id: str
    source: str
    title: str
    heading_path: tuple[str, ...]
    page: int | None
    score: float
    segments: list[Segment] = field(default_factory=list)
    chunk_ids: list[int] = field(default_factory=list)
    collection: str = DEFAULT_COLLECTION
    #: its chunks that the injection scan flagged at ingest (and no person cleared): chunk id → score
    flagged: dict[int, float] = field(default_factory=dict)
    #: some of its chunks were never scanned (stored before the scan existed, or with it off)
    unscanned: bool = False

    @property
    def text(self) -> str:
        """Return the passage text: its segments in document order, gaps marked with an ellipsis."""
        return "\n…\n".join(s.text for s in self.segments)

    def locate(self, offset: int) -> tuple[tuple[str, ...], int | None]:
        """Return the heading path and page of the segment holding a document offset (the best hit's if none)."""
        for seg in self.segments:
            if seg.start <= offset < seg.end:
                return seg.heading_path, seg.page
        return self.heading_path, self.page

    @property
    def start(self) -> int:
        """Return the character offset where the passage begins in its document."""
        return self.segments[0].start

    @property
    def end(self) -> int:
        """Return the character offset where the passage ends in its document."""
        return self.segments[-1].end


def _merge(segments: list[Segment]) -> list[Segment]:
    """Return segments sorted by start with overlapping or touching ones joined into one exact span."""
    merged: list[Segment] = []
    for seg in sorted(segments, key=lambda s: s.start):
        last = merged[-1] if merged else None
        if last is not None and seg.start <= last.end:
            if seg.end > last.end:
                # Both texts are the document's own characters, so the overlap lines up exactly.
                last.text += seg.text[last.end - seg.start :]
                last.end = seg.end
                last.end_chunk = seg.end_chunk
                last.cut_end = seg.cut_end
        else:
            merged.append(replace(seg))
    return merged


def pack_context(
    hits: Sequence[Hit],
    *,
    budget_tokens: int = 1500,
    max_passages: int = 8,
    count_tokens: TokenCounter = rough_tokens,
) -> list[Passage]:
    """Return numbered passages: hits grouped by document and merged, best first, within the token budget."""
    by_doc: dict[str, Passage] = {}
    order: list[str] = []
    used = 0
    for hit in hits:
        cost = count_tokens(hit.text)
        if used + cost > budget_tokens:
            # A later, shorter hit may still fit; the budget is a ceiling, not a cut-off point.
            continue
        passage = by_doc.get(hit.document_id)
        if passage is None:
            if len(order) >= max_passages:
                continue
            passage = Passage(
                0,
                hit.document_id,
                hit.source,
                hit.title,
                hit.heading_path,
                hit.page,
                hit.score,
                collection=hit.collection,
            )
            by_doc[hit.document_id] = passage
            order.append(hit.document_id)
        passage.segments.append(
            Segment(hit.start, hit.end, hit.text, hit.heading_path, hit.page, hit.chunk_id, hit.chunk_id)
        )
        passage.chunk_ids.append(hit.chunk_id)
        if hit.guard_flagged:
            passage.flagged[hit.chunk_id] = hit.guard_score if hit.guard_score is not None else 1.0
        passage.unscanned = passage.unscanned or hit.guard_score is None
        used += cost
    passages = []
    # Best passage first: models (and readers) weigh the start of the context most, and the numbers
    # [1], [2]… then read as a ranking.
    for n, doc_id in enumerate(order, start=1):
        p = by_doc[doc_id]
        p.n = n
        p.segments = _merge(p.segments)
        passages.append(p)
    return passages


#: The end of a thought: sentence punctuation (or a closing quote or bracket after it) at the end of the text.
_ENDS_THOUGHT = re.compile(r"[.!?:;…][)\]\"'”’]*\s*$|\n\s*$")
_SENTENCE_END = re.compile(r"[.!?…][)\]\"'”’]*(?=\s|$)")

#: the most characters between a chunk that ends in a colon and the next one for that one's first block to count as
#: introduced (the blank line the chunker cut at)
BLOCK_GAP = 2
#: (document id, chunk id) → the chunk after (or before) it in that document, as (start, end, text), or None
NextChunk = Callable[[str, int], "tuple[int, int, str] | None"]


def complete_cut_sentences(
    passages: Sequence[Passage],
    next_chunk: NextChunk,
    previous_chunk: NextChunk | None = None,
    max_chars: int = 400,
) -> int:
    """Extend each segment that stops mid-sentence into the next chunk, to the end of that sentence (at most
    `max_chars` more), each that stops on a colon through the list, table or code block it introduces, and (given
    `previous_chunk`) each that starts mid-sentence back into the chunk before, to that sentence's start; return how
    many segments grew. Text stays an exact span of the document. A segment whose cut sentence cannot be completed
    is marked (`cut_start`, `cut_end`), so the fragment is never quoted as a sentence."""
    grown = 0
    added: list[tuple[Passage, Segment]] = []
    for passage in passages:
        for seg in passage.segments:
            if previous_chunk is not None and _complete_start(passage, seg, previous_chunk, max_chars):
                grown += 1
            introduces = seg.text.rstrip().endswith(":")
            if seg.end_chunk is None or (_ENDS_THOUGHT.search(seg.text) and not introduces):
                continue
            following = next_chunk(passage.document_id, seg.end_chunk)
            if following is None:
                continue
            start, end, text = following
            if introduces and seg.end < start <= seg.end + BLOCK_GAP:
                # The chunker cut at the blank line before the block: the block becomes a segment of its own (the
                # blank line is not in either chunk, so the two cannot be joined into one exact span).
                n = leading_block(text)
                if n:
                    added.append((passage, Segment(start, start + n, text[:n], seg.heading_path, seg.page)))
                continue
            if seg.end < start:
                # Only space lies between the two chunks: does the sentence run on across it?
                space = unstored_space(start - seg.end, text)
                after = len(seg.text) + len(space)
                seg.cut_end = not introduces and sentence_start(seg.text + space + text[:max_chars], after) < after
                continue
            if seg.end >= end:
                continue
            if introduces:
                tail = text[seg.end - start : seg.end - start + MAX_INTRODUCED_CHARS + 2]
                extra = introduced_block(seg.text + tail, len(seg.text)) - len(seg.text)
            else:
                tail = text[seg.end - start : seg.end - start + max_chars]
                stop = _SENTENCE_END.search(tail)
                extra = stop.end() if stop else 0
            if extra <= 0:
                seg.cut_end = not introduces
                continue
            seg.text += tail[:extra]
            seg.end += extra
            grown += 1
        if grown:
            passage.segments = _merge(passage.segments)
    for passage, block in added:
        passage.segments = _merge([*passage.segments, block])
        grown += 1
    return grown


#: how much text before a sentence boundary makes it trustworthy (the abbreviation rules read the words before it)
_LOOKBEHIND_CHARS = 24


def _complete_start(passage: Passage, seg: Segment, previous_chunk: NextChunk, max_chars: int) -> bool:
    """Extend a segment that starts mid-sentence back to that sentence's start, through the chunks before it (at
    most `max_chars`), or mark how much of it is the cut sentence when that starts further back or behind space
    that is not stored; return whether it grew."""
    head, at, chunk = "", seg.start, seg.start_chunk  # head: the document's text from `at` to the segment
    while chunk is not None:
        if len(head) > max_chars:
            seg.cut_start = _cut_sentence(head, seg.text)
            return False
        before = previous_chunk(passage.document_id, chunk)
        if before is None:
            break  # the document's first chunk starts a sentence
        start, end, text = before
        gap = end < at
        context = text[-max_chars:] + unstored_space(at - end, head + seg.text) if gap else text[: max(at - start, 0)]
        begin = sentence_start(context + head + seg.text, len(context) + len(head))
        # A boundary read near the start of a chunk that is not the document's first may be none: the words before
        # it are in the chunk before ("et al." cut after "et" reads as a sentence end). Trusted only with enough
        # text before it; else read on back.
        trusted = (start == 0 and not gap) or begin >= _LOOKBEHIND_CHARS
        if trusted and (begin >= len(context) or (begin > 0 and not gap)):
            head = (context + head)[begin:]
            break
        if gap or start >= at:
            seg.cut_start = _cut_sentence(context + head, seg.text)  # it runs on behind the space between chunks
            return False
        # The sentence may start before this chunk does: read on back.
        head, at, chunk = context + head, start, chunk - 1
    if not head:
        return False
    if len(head) > max_chars:
        seg.cut_start = _cut_sentence(head, seg.text)
        return False
    seg.text = head + seg.text
    seg.start -= len(head)
    return True


def _cut_sentence(before: str, text: str) -> int:
    """Return how much of `text` belongs to the sentence it starts inside, read with the text `before` it (a
    sentence boundary seen in `text` alone may be none: "et al." cut after "et")."""
    for a, _ in sentence_spans(text, prose_only=False):
        if a and sentence_start(before + text, len(before) + a) == len(before) + a:
            return a
    return len(text)


def render_passages(passages: Sequence[Passage]) -> str:
    """Return the passages quoted as untrusted data, numbered for citation; those holding a flagged chunk marked and
    datamarked as such (`guard.quote`)."""
    blocks = []
    for p in passages:
        head = " > ".join(x for x in (p.title, *p.heading_path) if x)
        blocks.append(quote("passage", f"{head}\n{p.text}" if head else p.text, flagged=bool(p.flagged), id=p.n))
    return "\n\n".join(blocks)
