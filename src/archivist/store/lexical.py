"""Lexical analysis for BM25: tokenize, drop English stopwords, Snowball-stem; term counts as compact blobs."""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import Stemmer

_TOKEN_RE = re.compile(r"\w+", re.UNICODE)
# Dropping these keeps posting lists short (speed) and stops question words from matching everything.
STOPWORDS = frozenset(
    (
        "a an and are as at be been being but by can could did do does doing for from had has have having how "
        "i if in into is it its itself me my no nor not of off on or our ours so such than that the their "
        "theirs them then there these they this those to too was we were what when where which while who whom "
        "why will with would you your yours "
    ).split()
)


class Analyzer:
    """Turns text into BM25 terms: lowercase word tokens, stopwords removed, Snowball English stems."""

    def __init__(self) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        self.stem = lru_cache(maxsize=200_000)(self._stemmer.stemWord)

    def terms(self, text: str) -> list[str]:
        """Return the stemmed, stopword-free terms of a text in order."""
        stem = self.stem
        return [stem(t) for t in _TOKEN_RE.findall(text.lower()) if t not in STOPWORDS and len(t) < 64]

    def counts(self, text: str) -> Counter[str]:
        """Return how often each term occurs in a text."""
        return Counter(self.terms(text))


def encode_counts(term_ids: list[int], counts: list[int]) -> bytes:
    """Return term ids and their counts packed as little-endian int32 pairs."""
    arr = np.empty((len(term_ids), 2), dtype="<i4")
    arr[:, 0] = term_ids
    arr[:, 1] = counts
    return arr.tobytes()


def decode_counts(blob: bytes) -> npt.NDArray[np.int32]:
    """Return an (n, 2) array of (term id, count) from a packed blob."""
    return np.frombuffer(blob, dtype="<i4").reshape(-1, 2)
