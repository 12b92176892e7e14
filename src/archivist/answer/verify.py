"""Citation verification: each claim is checked against the passages it cites (lexical + embedding support).

With a model configured, `entailment.py` then asks the model to judge each claim; this similarity score stays the
fallback when that judgment fails.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from archivist.answer.context import Passage
from archivist.answer.sentences import Sentence, split_sentences
from archivist.embed.base import Embedder
from archivist.text.analyzer import ANSWER_TERMS, analyzer, overlap
from archivist.text.prose import plain_references

_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
# Claims end at sentence punctuation (after any citation markers) followed by whitespace or the end of the text,
# so the markers of "… the last fact. [2]" stay with their sentence.
_CLAIM_END = re.compile(r"(?<=[.!?])((?:\s*\[\d+(?:\s*,\s*\d+)*\])*)(?:\s+|$)|(?<=\])\s+(?=[A-Z])|\n+")
#: a claim is supported when its best cited sentence reaches this score (mean of cosine and term overlap).
#: Set on the loopback test's examples and COVID-QA gold answer sentences, not a full calibration: see
#: docs/answers.md.
SUPPORT_THRESHOLD = 0.55
#: claims shorter than this (e.g. "In short:") carry no fact to check
MIN_CLAIM_CHARS = 12


@dataclass(slots=True)
class Claim:
    """One sentence of a generated answer, the passages it cites, and how well they support it."""

    text: str
    cited: list[int]
    support: float = 0.0
    supported: bool = False
    #: the cited sentence that supports the claim best (a verbatim span of its document), if any
    evidence: Sentence | None = None
    #: per cited passage, its sentence closest to the claim (what a citation of that passage quotes)
    evidence_by_passage: dict[int, Sentence] = field(default_factory=dict)
    reason: str = ""
    #: the entailment judge's verdict (supported / partially / unsupported); None when similarity decided
    verdict: str | None = None
    #: the words of the cited text the judge said its verdict relies on
    judge_quote: str = ""


@dataclass(slots=True)
class Verification:
    """Every claim checked, and the answer's overall support (share of claims supported)."""

    claims: list[Claim] = field(default_factory=list)

    @property
    def support(self) -> float:
        """Return the share of checkable claims that their citations support (1.0 when there are none)."""
        checked = [c for c in self.claims if len(c.text) >= MIN_CLAIM_CHARS]
        return sum(c.supported for c in checked) / len(checked) if checked else 1.0


def split_claims(answer: str) -> list[Claim]:
    """Return the claims of an answer text with the passage numbers each one cites."""
    claims: list[Claim] = []
    a = 0
    for m in _CLAIM_END.finditer(answer):
        end = m.start() + len(m.group(1) or "")
        if end > a:
            claims.append(_claim(answer[a:end]))
        a = m.end()
    if a < len(answer):
        claims.append(_claim(answer[a:]))
    return [c for c in claims if c.text]


def _claim(text: str) -> Claim:
    cited = [int(n) for group in _MARKER.findall(text) for n in group.split(",")]
    # What is left in brackets is not a citation of ours ("[12–14]" copied from a paper): shown as plain text.
    return Claim(plain_references(strip_markers(text)), list(dict.fromkeys(cited)))


def strip_markers(text: str) -> str:
    """Return text with its [n] citation markers removed."""
    return re.sub(r"\s+([.,;:!?])", r"\1", _MARKER.sub("", text)).strip()


def verify(claims: list[Claim], passages: Sequence[Passage], embedder: Embedder) -> Verification:
    """Return the claims scored against the sentences of the passages they cite."""
    by_n = {p.n: p for p in passages}
    # A claim may state what a code block or heading says: check it against those lines too.
    sentences = {p.n: split_sentences(p, prose_only=False) for p in passages}
    wanted = [c for c in claims if c.cited and len(c.text) >= MIN_CLAIM_CHARS]
    cited_sentences = sorted({s for c in wanted for n in c.cited if n in by_n for s in sentences[n]}, key=_order)
    vectors = embedder.embed([s.text for s in cited_sentences]) if cited_sentences else None
    index = {s: i for i, s in enumerate(cited_sentences)}
    claim_vectors = embedder.embed([c.text for c in wanted]) if wanted else None
    terms = analyzer(ANSWER_TERMS).terms
    for i, claim in enumerate(wanted):
        claim_terms = terms(claim.text)
        candidates = [s for n in claim.cited if n in by_n for s in sentences[n]]
        if not candidates:
            claim.reason = f"cites passage(s) {claim.cited} that do not exist"
            continue
        assert vectors is not None and claim_vectors is not None
        cos = vectors[[index[s] for s in candidates]] @ claim_vectors[i]
        # Lexical support is read against the whole cited text, so a claim that merges two sentences still counts.
        cited_terms = [t for n in claim.cited if n in by_n for t in terms(by_n[n].text)]
        lex = overlap(claim_terms, cited_terms)
        best = int(np.argmax(cos))
        for n in claim.cited:
            own = [j for j, s in enumerate(candidates) if s.passage == n]
            if own:
                claim.evidence_by_passage[n] = candidates[max(own, key=lambda j: float(cos[j]))]
        claim.support = round(0.5 * float(cos[best]) + 0.5 * lex, 4)
        claim.evidence = candidates[best]
        claim.supported = claim.support >= SUPPORT_THRESHOLD
        if not claim.supported:
            claim.reason = f"cited text supports it weakly (score {claim.support:.2f} < {SUPPORT_THRESHOLD})"
    for claim in claims:
        if len(claim.text) < MIN_CLAIM_CHARS:
            claim.supported = True  # nothing to check: a connective or a heading-like fragment
        elif not claim.cited:
            claim.reason = "no citation"
    return Verification(claims)


def _order(s: Sentence) -> tuple[int, int]:
    return (s.passage, s.start)
