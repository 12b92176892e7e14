"""The term analyzer: word tokens, stopwords dropped, Snowball English stems; BM25 and answers configure it.

The two configurations differ on purpose and must stay as they are: BM25 scores (stored term counts, the learned
fusion model's features) and answer sentence scoring were tuned and gated with exactly these terms.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import Stemmer


@dataclass(frozen=True, slots=True)
class TermRules:
    """What counts as a term: the token pattern, the stopwords, and the token lengths kept (numbers are always)."""

    name: str
    token: re.Pattern[str]
    stopwords: frozenset[str]
    min_chars: int = 1
    max_chars: int | None = None


#: BM25's terms (index and queries): Unicode word tokens; dropping stopwords keeps posting lists short (speed) and
#: stops question words from matching everything; very long tokens (hashes, base64) are not words.
BM25_TERMS = TermRules(
    name="bm25",
    token=re.compile(r"\w+", re.UNICODE),
    stopwords=frozenset(
        "a an and are as at be been being but by can could did do does doing for from had has have having how "
        "i if in into is it its itself me my no nor not of off on or our ours so such than that the their "
        "theirs them then there these they this those to too was we were what when where which while who whom "
        "why will with would you your yours".split()
    ),
    max_chars=63,
)

#: the content words answers compare (sentence scoring, claim support): ASCII letters and digits, a longer
#: stopword list, single letters dropped.
ANSWER_TERMS = TermRules(
    name="answer",
    token=re.compile(r"[A-Za-z0-9]+"),
    stopwords=frozenset(
        "a an and are as at be been but by can could did do does for from had has have how i if in into is it its "
        "many may more most much no not of on or other our should so some such than that the their them then "
        "there these they this those to was we were what when where which while who whom why will with would "
        "you your about also any both each".split()
    ),
    min_chars=2,
)


class Analyzer:
    """Turns text into terms under one configuration: lowercased tokens, stopwords dropped, Snowball stems."""

    def __init__(self, rules: TermRules = BM25_TERMS) -> None:
        self.rules = rules
        self._stemmer = Stemmer.Stemmer("english")
        self.stem: Callable[[str], str] = lru_cache(maxsize=200_000)(self._stemmer.stemWord)

    def _kept(self, tokens: Iterable[str]) -> Iterator[str]:
        """Return the lowercased tokens that are terms, before stemming, in order."""
        stop, low, high = self.rules.stopwords, self.rules.min_chars, self.rules.max_chars or sys.maxsize
        return (t for t in tokens if t not in stop and len(t) <= high and (len(t) >= low or t.isdigit()))

    def terms(self, text: str) -> list[str]:
        """Return the stemmed, stopword-free terms of a text in order."""
        return list(map(self.stem, self._kept(self.rules.token.findall(text.lower()))))

    def counts(self, text: str) -> Counter[str]:
        """Return how often each term occurs in a text."""
        return Counter(self.terms(text))

    def term_set(self, text: str, initials: frozenset[str] | None = None) -> set[str]:
        """Return `set(self.terms(text))`, stemming each distinct token once (a hot path of learned fusion).

        With `initials`, only terms starting with one of those letters (a stem keeps its word's first letter,
        so this finds every match of a query's terms while stemming a fraction of the tokens).
        """
        tokens = set(self.rules.token.findall(text.lower()))
        if initials is not None:
            tokens = {t for t in tokens if t[0] in initials}
        return {self.stem(t) for t in self._kept(tokens)}


@cache
def analyzer(rules: TermRules) -> Analyzer:
    """Return the process's analyzer for a configuration (stemming is pure: sharing one changes no result)."""
    return Analyzer(rules)


def overlap(query_terms: Sequence[str], text_terms: Sequence[str]) -> float:
    """Return the share of the query's distinct terms that occur in the text (0 when the query has none)."""
    q = set(query_terms)
    return len(q & set(text_terms)) / len(q) if q else 0.0
