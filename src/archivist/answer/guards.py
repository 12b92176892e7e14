"""The guard steps of an answer: passages flagged by the injection scan, sentences written as instructions to the
reader kept out of extractive answers, a model's answer checked for leaking our prompt or obeying a flagged passage,
and personal data redacted from what an answer shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from archivist.answer.context import Passage
from archivist.answer.extractive import Extraction, ScoredSentence, select
from archivist.answer.segments import AnswerSegment, plain
from archivist.guard.injection import EmbeddedText, InjectionDetector
from archivist.guard.output import LEAK_THRESHOLD, followed_payload, leak_score, payloads
from archivist.guard.pii import PiiDetector
from archivist.types import Hit


def _names(passages: Sequence[Passage]) -> str:
    return ", ".join(f"[{p.n}] {p.title or p.source}" for p in passages)


def flagged_warning(passages: Sequence[Passage]) -> str | None:
    """Return the warning an answer carries when its evidence holds chunks the injection scan flagged, or None."""
    flagged = [p for p in passages if p.flagged]
    if not flagged:
        return None
    top = max(s for p in flagged for s in p.flagged.values())
    return (
        f"the evidence includes text that the injection scan flagged as instructions to the reader (passage "
        f"{_names(flagged)}; score up to {top:.2f}): it was read as data, never followed, and a person can review it "
        "with `archivist guard review`"
    )


def drop_reader_aimed(
    extraction: Extraction,
    passages: Sequence[Passage],
    detector: InjectionDetector,
    vectors_fit: bool,
    max_sentences: int,
) -> tuple[Extraction, list[str]]:
    """Return the extraction without the candidate sentences of flagged or never-scanned passages that the detector
    scores as instructions to the reader (the chosen ones selected again from the rest), and a warning per passage
    that lost a sentence the answer would have quoted. `vectors_fit`: the extraction's vectors are the detector's
    model's, so no model pass is needed."""
    suspect = {p.n for p in passages if p.flagged or p.unscanned}
    at = [i for i, c in enumerate(extraction.candidates) if c.sentence.passage in suspect]
    if not at:
        return extraction, []
    texts = [extraction.candidates[i].sentence.text for i in at]
    if vectors_fit:
        items = [EmbeddedText(t, extraction.vectors[i]) for t, i in zip(texts, at, strict=True)]
        scores = detector.score_embedded(items)
    else:
        scores = detector.score(texts)
    dropped = {i: s for i, s in zip(at, scores, strict=True) if s >= detector.threshold}
    if not dropped:
        return extraction, []
    keep = [i for i in range(len(extraction.candidates)) if i not in dropped]
    candidates: list[ScoredSentence] = [extraction.candidates[i] for i in keep]
    vectors = extraction.vectors[keep] if keep else np.zeros((0, extraction.vectors.shape[1]), dtype=np.float32)
    by_n = {p.n: p for p in passages}
    worst: dict[int, float] = {}
    chosen = {id(c) for c in extraction.chosen}
    for i, s in dropped.items():
        if id(extraction.candidates[i]) not in chosen:
            continue  # it would not have been quoted anyway: nothing for the reader to know
        n = extraction.candidates[i].sentence.passage
        worst[n] = max(worst.get(n, 0.0), s)
    warnings = [
        f"passage [{n}] {by_n[n].title or by_n[n].source} holds text written as instructions to the reader "
        f"(injection score {s:.2f}): it was not quoted as an answer"
        for n, s in worst.items()
    ]
    return Extraction(select(candidates, vectors, max_sentences=max_sentences), candidates, vectors), warnings


def output_problem(text: str, system_prompt: str, passages: Sequence[Passage], question: str) -> str | None:
    """Return why a model's answer must be withheld (it repeats our system prompt, or says what a flagged passage
    asked its reader to say), or None when it may be shown."""
    leaked = leak_score(text, system_prompt)
    if leaked >= LEAK_THRESHOLD:
        return (
            f"the model's answer repeated {leaked:.0%} of the system prompt's word sequences: it was withheld "
            "(system-prompt leakage)"
        )
    flagged = [p for p in passages if p.flagged]
    said = followed_payload(text, payloads(p.text for p in flagged), question)
    if said is not None:
        return (
            f"the model's answer says {said!r}, which flagged text in passage {_names(flagged)} asked its reader to "
            "say: it followed an injected instruction instead of the question and was withheld"
        )
    return None


def redact_hits(hits: Sequence[Hit], pii: PiiDetector) -> list[Hit]:
    """Return the hits with personal data in their text, titles and headings replaced by placeholders."""
    redacted = iter(pii.redact_many([x for h in hits for x in (h.text, h.title, *h.heading_path)]))
    return [
        replace(
            h, text=next(redacted), title=next(redacted), heading_path=tuple(next(redacted) for _ in h.heading_path)
        )
        for h in hits
    ]


def redact_segments(segments: Sequence[AnswerSegment], pii: PiiDetector) -> list[AnswerSegment]:
    """Return an answer's segments with personal data in their text replaced by placeholders (marks kept)."""
    texts = pii.redact_many([s.text for s in segments if s.type == "text"])
    out, at = [], 0
    for s in segments:
        if s.type == "text":
            out.append(plain(texts[at]))
            at += 1
        else:
            out.append(s)
    return out
