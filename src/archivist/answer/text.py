"""Sentences with document offsets, and the stemmed content terms lexical scores compare."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import Stemmer

from archivist.answer.context import Passage

# A sentence ends at . ! ? (optionally closed by a quote or bracket) before whitespace and a capital, digit or
# opening bracket; a blank line or a line break also ends one (headings, list items, table rows).
_BOUNDARY = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[A-Z0-9\"“(\[])|\n+")
# Abbreviations whose period does not end a sentence.
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|et al|etc|vs|Fig|Figs|Dr|Mr|Mrs|Ms|No|approx|ca|cf|Ref|Eq)\.|\b[A-Z]\.)$")
_WORD = re.compile(r"[A-Za-z0-9]+")
_STOP = frozenset(
    "a an and are as at be been but by can could did do does for from had has have how i if in into is it its "
    "many may more most much no not of on or other our should so some such than that the their them then there "
    "these they this those to was we were what when where which while who whom why will with would you your "
    "about also any both each".split()
)
MIN_SENTENCE_CHARS = 20
MAX_SENTENCE_CHARS = 600


@dataclass(frozen=True, slots=True)
class Sentence:
    """A sentence of a passage: its text is exactly `document.text[start:end]`."""

    passage: int
    document_id: str
    start: int
    end: int
    text: str


def split_sentences(passage: Passage) -> list[Sentence]:
    """Return the passage's sentences (too short or too long ones left out), with document offsets."""
    out: list[Sentence] = []
    for seg in passage.segments:
        pieces: list[tuple[int, int]] = []
        a = 0
        for m in _BOUNDARY.finditer(seg.text):
            if m.group(0)[0] not in "\n" and _ABBREV.search(seg.text[a : m.start()]):
                continue
            # Keep a closing quote or bracket with its sentence.
            cut = m.start() + len(m.group(0)) - len(m.group(0).lstrip("\"'”’)]"))
            pieces.append((a, cut))
            a = m.end()
        pieces.append((a, len(seg.text)))
        for a, b in pieces:
            raw = seg.text[a:b]
            lead = len(raw) - len(raw.lstrip())
            body = raw.strip()
            if MIN_SENTENCE_CHARS <= len(body) <= MAX_SENTENCE_CHARS and _WORD.search(body):
                start = seg.start + a + lead
                out.append(Sentence(passage.n, passage.document_id, start, start + len(body), body))
    return out


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def terms(text: str) -> list[str]:
    """Return the stemmed content words of a text (lowercased, stop words dropped)."""
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOP and (len(w) > 1 or w.isdigit())]
    return list(_stemmer().stemWords(words))


def overlap(query_terms: Sequence[str], text_terms: Sequence[str]) -> float:
    """Return the share of the query's distinct terms that occur in the text (0 when the query has none)."""
    q = set(query_terms)
    return len(q & set(text_terms)) / len(q) if q else 0.0
