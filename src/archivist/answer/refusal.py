"""Refusal: when the best evidence for a question is too weak, say so plainly and list the closest sources."""

from __future__ import annotations

from collections.abc import Sequence

from archivist.answer.context import Passage

#: The best sentence's relevance score (extractive.score_sentences) below which the answerer refuses.
#: Calibrated, not guessed: produced by `python -m archivist.answer.calibrate` (src/archivist/answer/calibrate.py)
#: on COVID-QA questions (answerable) against PubMedQA questions asked of the COVID-QA corpus (unanswerable);
#: see docs/answers.md for the precision and recall it gives.
REFUSAL_THRESHOLD = 0.45

REFUSAL_TEXT = "The documents do not answer this question."


def should_refuse(evidence: float, threshold: float = REFUSAL_THRESHOLD) -> bool:
    """Return whether the evidence score is too weak to answer from."""
    return evidence < threshold


def refusal_text(passages: Sequence[Passage], max_sources: int = 3) -> str:
    """Return the plain refusal, naming the closest sources so the user knows where the search looked."""
    names = list(dict.fromkeys(p.title or p.source for p in passages[:max_sources]))
    return f"{REFUSAL_TEXT} Closest sources: " + "; ".join(names) + "." if names else REFUSAL_TEXT
