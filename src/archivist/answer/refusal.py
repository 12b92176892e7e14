"""Refusal: when the best evidence for a question is too weak, say so plainly and list the closest sources."""

from __future__ import annotations

from collections.abc import Sequence

from archivist.answer.context import Passage

#: The best sentence's relevance score (extractive.score_sentences) below which the answerer refuses.
#: Calibrated, not guessed: produced by `python -m archivist.answer.calibrate --limit 400 --unanswerable-limit 200`
#: (src/archivist/answer/calibrate.py): 400 COVID-QA questions (answerable) and 200 PubMedQA questions asked of the
#: COVID-QA corpus (unanswerable), threshold chosen on one half, measured on the other: held-out refusal precision
#: 0.93, recall 0.95, 3.5 % of answerable questions refused (docs/answers.md). Recalibrate when k, the packing
#: budget, the sentence score weights or the candidate set change: the score's scale moves with them (0.503 before
#: sentence vectors put every retrieved sentence in the candidate set and sentence hits added the corpus's best).
REFUSAL_THRESHOLD = 0.493

REFUSAL_TEXT = "The documents do not answer this question."


def should_refuse(evidence: float, threshold: float = REFUSAL_THRESHOLD) -> bool:
    """Return whether the evidence score is too weak to answer from."""
    return evidence < threshold


def refusal_text(passages: Sequence[Passage], max_sources: int = 3) -> str:
    """Return the plain refusal, naming the closest sources so the user knows where the search looked."""
    names = list(dict.fromkeys(p.title or p.source for p in passages[:max_sources]))
    return f"{REFUSAL_TEXT} Closest sources: " + "; ".join(names) + "." if names else REFUSAL_TEXT
