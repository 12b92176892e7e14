"""Refusal: when the best evidence for a question is too weak, say so plainly and list the closest sources."""

from __future__ import annotations

from collections.abc import Sequence

from archivist.answer.context import Passage

#: The best sentence's relevance score (extractive.score_sentences) below which the answerer refuses.
#: Calibrated, not guessed, on questions the reported eval never asks: produced by `archivist eval
#: calibrate-refusal` (src/archivist/evals/calibrate.py): 600 COVID-QA questions (answerable) and 300
#: PubMedQA questions asked of the COVID-QA corpus (unanswerable), none of them among the 400 and 200 that
#: `archivist eval answers --limit 400 --unanswerable-limit 200` reports on; the same 2:1 mix, since precision moves
#: with it. Chosen on one half, measured on the other: held-out refusal precision 0.937, recall 0.987, 3.3 % of
#: answerable questions refused. Recalibrate when k, the packing budget, the sentence score weights or the
#: candidate set change: the score's scale moves with them (0.493 when the calibration shared the reported
#: questions, in halves; 0.503 before sentence vectors).
REFUSAL_THRESHOLD = 0.496

#: With a model configured, the evidence score below which a question is refused without asking the model: only
#: what is clearly out of the documents' scope (the model decides the rest, with its "not in the documents" option).
#: Measured by `python benchmarks/llm_refusal_floor.py --limit 200`: under 0.25 fall none of 121 answerable questions
#: of the golden set over docs/ (lowest 0.283) nor of 200 COVID-QA ones (lowest 0.351), and 80% of 200 questions
#: from other corpora asked of docs/ and 41% of 160 docs/ questions asked of COVID-QA. 0.30 would refuse one
#: answerable docs/ question (0.8%) to refuse 88% and 68% of those: a wrong refusal costs more than a model call.
LLM_REFUSAL_FLOOR = 0.25

REFUSAL_TEXT = "The documents do not answer this question."


def should_refuse(evidence: float, threshold: float = REFUSAL_THRESHOLD) -> bool:
    """Return whether the evidence score is too weak to answer from."""
    return evidence < threshold


def closest_sources(passages: Sequence[Passage], max_sources: int = 3) -> list[str]:
    """Return the names (title, else source) of the closest sources a refusal points to, each once."""
    return list(dict.fromkeys(p.title or p.source for p in passages[:max_sources]))


def refusal_text(passages: Sequence[Passage], max_sources: int = 3, names: Sequence[str] | None = None) -> str:
    """Return the plain refusal, naming the closest sources (or the `names` given for them, e.g. redacted) so the
    user knows where the search looked."""
    shown = list(names) if names is not None else closest_sources(passages, max_sources)
    return f"{REFUSAL_TEXT} Closest sources: " + "; ".join(shown) + "." if shown else REFUSAL_TEXT
