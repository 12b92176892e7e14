"""Conversation history for answers: earlier turns, their limits, the query a follow-up retrieves with, and the
turns as quoted prompt context."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from archivist.answer.context import Passage
from archivist.answer.extractive import Extraction, KnownVectors, VectorCache, extract, score_sentences, select
from archivist.embed.base import Embedder
from archivist.guard.quote import quote
from archivist.retrieve.hybrid import MAX_QUERY_CHARS
from archivist.text.analyzer import ANSWER_TERMS, analyzer
from archivist.types import UsageError

Role = Literal["user", "assistant"]

#: earlier turns one answer takes (a user question and its answer are two)
MAX_TURNS = 20
#: characters of all earlier turns together: bounds the retrieval query and the prompt whatever the client sends
MAX_HISTORY_CHARS = 16_000
#: earlier user questions a follow-up's retrieval query may borrow (each one a follow-up of the one before)
MAX_BORROWED = 3
#: a question with at most this many content words cannot stand alone ("and the limits?", "why not?")
_SHORT = 2
# Words that point back at an earlier turn ("how do I rotate them?", "what about the second one?"), and openings that
# continue one ("and…", "what about…").
_REFERS_BACK = re.compile(
    r"\b(it|its|they|them|their|theirs|this|that|these|those|there|he|she|him|her|his|one|ones|same|former|latter)\b",
    re.IGNORECASE,
)
_CONTINUES = re.compile(r"^\W*(and|but|or|so|also|then|what about|how about|why not|and if|what if)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier turn of a conversation: who said it and what."""

    role: Role
    content: str


def check_history(history: Sequence[Turn]) -> None:
    """Raise UsageError unless the turns are within MAX_TURNS and MAX_HISTORY_CHARS and none is empty."""
    if len(history) > MAX_TURNS:
        raise UsageError(f"history has {len(history)} turns: at most {MAX_TURNS} earlier turns are taken")
    total = sum(len(t.content) for t in history)
    if total > MAX_HISTORY_CHARS:
        raise UsageError(f"history has {total} characters: at most {MAX_HISTORY_CHARS} are taken")
    for i, turn in enumerate(history):
        if turn.role not in ("user", "assistant"):
            raise UsageError(f"history[{i}].role is {turn.role!r}: use 'user' or 'assistant'")
        if not turn.content.strip():
            raise UsageError(f"history[{i}].content is empty")


def recent_turns(history: Sequence[Turn]) -> list[Turn]:
    """Return the latest turns that fit MAX_TURNS and MAX_HISTORY_CHARS (oldest first), empty ones left out."""
    kept: list[Turn] = []
    total = 0
    for turn in reversed([t for t in history if t.content.strip()]):
        if len(kept) == MAX_TURNS or total + len(turn.content) > MAX_HISTORY_CHARS:
            break
        kept.append(turn)
        total += len(turn.content)
    return kept[::-1]


def is_follow_up(question: str) -> bool:
    """Return whether a question leans on earlier turns: it is short, refers back, or continues one."""
    words = analyzer(ANSWER_TERMS).terms(question)
    return len(words) <= _SHORT or bool(_REFERS_BACK.search(question) or _CONTINUES.search(question))


def search_query(question: str, history: Sequence[Turn]) -> str:
    """Return the text a question is retrieved with: the question itself, or for a follow-up, the earlier user
    question(s) it leans on followed by it (as many as lean on each other, up to MAX_BORROWED, the oldest left out
    first where they would make the query longer than a search takes)."""
    borrowed: list[str] = []
    current = question
    for turn in reversed(history):
        if len(borrowed) == MAX_BORROWED or not is_follow_up(current):
            break
        if turn.role == "user":
            borrowed.append(turn.content.strip())
            current = turn.content
    while borrowed and len("\n".join([*borrowed, question.strip()])) > MAX_QUERY_CHARS:
        borrowed.pop()  # the oldest: the question itself, and what it leans on most directly, are kept
    return "\n".join([*reversed(borrowed), question.strip()])


def render_history(history: Sequence[Turn]) -> str:
    """Return the turns as prompt context, oldest first: each quoted as untrusted data (a question or an answer)."""
    return "\n".join(
        quote("question" if t.role == "user" else "answer", t.content.strip(), turn=i)
        for i, t in enumerate(history, start=1)
    )


def already_said(sentence: str, history: Sequence[Turn]) -> bool:
    """Return whether an earlier answer of the conversation already holds the sentence (spacing and case aside)."""
    wanted = " ".join(sentence.lower().split())
    return any(wanted in " ".join(t.content.lower().split()) for t in history if t.role == "assistant")


@dataclass(slots=True)
class FollowUpExtraction(Extraction):
    """A follow-up's extraction: sentences scored against the follow-up in its context (the search query), less
    those an earlier answer already said; its evidence is also the best of them scored against the follow-up alone."""

    #: the best fresh sentence's score against the follow-up alone
    own_evidence: float = 0.0

    @property
    def evidence(self) -> float:
        """Return the best fresh sentence's score, in context or alone: "how do I rotate them?" is answerable by a
        sentence that names no subject ("To rotate them, …"), which the context's words score lower."""
        return max([self.own_evidence, *(c.score for c in self.candidates)])


def follow_up_extraction(
    question: str,
    query: str,
    history: Sequence[Turn],
    passages: Sequence[Passage],
    embedder: Embedder,
    *,
    max_sentences: int,
    cache: VectorCache | None = None,
    known: KnownVectors | None = None,
) -> Extraction:
    """Return the sentences that answer a follow-up: ranked by the follow-up in its context (`query`), without the
    ones earlier answers quoted (all of them, when every candidate was said before)."""
    extraction = extract(query, passages, embedder, max_sentences=max_sentences, cache=cache, known=known)
    fresh = [i for i, c in enumerate(extraction.candidates) if not already_said(c.sentence.text, history)]
    if not fresh:
        return extraction
    candidates = [extraction.candidates[i] for i in fresh]
    vectors = extraction.vectors[fresh]
    alone, _ = score_sentences(question, passages, embedder, cache=cache, known=known)
    own = max((s.score for s in alone if not already_said(s.sentence.text, history)), default=0.0)
    return FollowUpExtraction(select(candidates, vectors, max_sentences=max_sentences), candidates, vectors, own)
