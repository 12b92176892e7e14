"""The golden question set over docs/ (evals/golden/docs.jsonl) stays true to the docs it was written from.

Each answerable question names the page of docs/ and the span of it that answers it. When a page changes, the
span check lists every question whose span is gone, so whoever changed the docs can fix the span (or the
question) in the same change. No model, no store, no network: only text comparisons.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GOLDEN = ROOT / "evals" / "golden" / "docs.jsonl"

MIN_ANSWERABLE = 100
MIN_UNANSWERABLE = 30
KINDS = frozenset({"definition", "procedure", "number", "name", "list", "yes-no", "behaviour"})
ANSWERABLE_KEYS = frozenset({"id", "question", "answerable", "source", "span", "facts", "kind"})
UNANSWERABLE_KEYS = frozenset({"id", "question", "answerable", "why"})
MAX_FACTS = 3

_WHITESPACE = re.compile(r"\s+")
_KEBAB = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def normalise(text: str) -> str:
    """Collapse every run of whitespace to one space, so that re-wrapped lines still match."""
    return _WHITESPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class Question:
    line: int
    raw: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.raw.get("id", f"<line {self.line}>"))

    @property
    def answerable(self) -> bool:
        return self.raw.get("answerable") is True

    @property
    def source(self) -> str:
        return str(self.raw.get("source", ""))

    @property
    def span(self) -> str:
        return str(self.raw.get("span", ""))

    @property
    def facts(self) -> list[str]:
        facts = self.raw.get("facts", [])
        return [str(fact) for fact in facts] if isinstance(facts, list) else []

    def where(self) -> str:
        return f"{GOLDEN.relative_to(ROOT)}:{self.line} {self.id}"


@cache
def golden() -> tuple[Question, ...]:
    """Read the set: one JSON object per line (blank lines allowed)."""
    questions: list[Question] = []
    for number, line in enumerate(GOLDEN.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            pytest.fail(f"{GOLDEN.relative_to(ROOT)}:{number}: not JSON: {error}")
        if not isinstance(raw, dict):
            pytest.fail(f"{GOLDEN.relative_to(ROOT)}:{number}: not a JSON object")
        questions.append(Question(number, raw))
    return tuple(questions)


@cache
def doc_text(name: str) -> str | None:
    """Return the normalised text of docs/NAME, or None when there is no such page."""
    path = DOCS / name
    if Path(name).name != name or path.suffix != ".md" or not path.is_file():
        return None
    return normalise(path.read_text(encoding="utf-8"))


def _shape_problems(question: Question) -> list[str]:
    """Return what is wrong with one question's fields (empty when it is well formed)."""
    raw = question.raw
    problems: list[str] = []
    if not isinstance(raw.get("id"), str) or not _KEBAB.fullmatch(raw["id"]):
        problems.append("id must be a short kebab-case string")
    if not isinstance(raw.get("question"), str) or not raw["question"].strip():
        problems.append("question must be a non-empty string")
    if not isinstance(raw.get("answerable"), bool):
        problems.append("answerable must be true or false")
        return problems
    expected = ANSWERABLE_KEYS if question.answerable else UNANSWERABLE_KEYS
    if set(raw) != expected:
        problems.append(f"fields must be exactly {sorted(expected)}, not {sorted(raw)}")
    if not question.answerable:
        if not isinstance(raw.get("why"), str) or not raw["why"].strip():
            problems.append("why must say what the docs do not answer")
        return problems
    if raw.get("kind") not in KINDS:
        problems.append(f"kind must be one of {sorted(KINDS)}")
    if not isinstance(raw.get("source"), str) or not raw["source"].endswith(".md"):
        problems.append("source must be a file name in docs/")
    if not isinstance(raw.get("span"), str) or not raw["span"].strip():
        problems.append("span must be a non-empty string")
    facts = raw.get("facts")
    if (
        not isinstance(facts, list)
        or not 1 <= len(facts) <= MAX_FACTS
        or not all(isinstance(fact, str) and fact.strip() for fact in facts)
    ):
        problems.append(f"facts must be a list of 1 to {MAX_FACTS} non-empty strings")
    return problems


def test_every_question_is_well_formed() -> None:
    problems = [f"{q.where()}: {problem}" for q in golden() for problem in _shape_problems(q)]
    assert not problems, "malformed golden questions:\n" + "\n".join(problems)


def test_ids_are_unique() -> None:
    counts = Counter(q.id for q in golden())
    repeated = sorted(name for name, count in counts.items() if count > 1)
    assert not repeated, f"ids used more than once in {GOLDEN.relative_to(ROOT)}: {', '.join(repeated)}"


def test_the_set_is_large_enough() -> None:
    answerable = sum(q.answerable for q in golden())
    unanswerable = len(golden()) - answerable
    assert answerable >= MIN_ANSWERABLE, f"{answerable} answerable questions, at least {MIN_ANSWERABLE} wanted"
    assert unanswerable >= MIN_UNANSWERABLE, (
        f"{unanswerable} unanswerable questions, at least {MIN_UNANSWERABLE} wanted"
    )


def test_every_span_is_still_in_its_document() -> None:
    lost: list[str] = []
    for question in golden():
        if not question.answerable:
            continue
        text = doc_text(question.source)
        if text is None:
            reason = "no such page in docs/"
        elif normalise(question.span) not in text:
            reason = "span not found"
        else:
            continue
        lost.append(f"  {question.id} ({question.source}, {reason}): {normalise(question.span)[:60]!r}")
    assert not lost, (
        f"{len(lost)} golden question(s) lost their answer span in docs/. Copy the new wording of each answer into "
        f"its span (and facts), or drop the question, in {GOLDEN.relative_to(ROOT)}:\n" + "\n".join(lost)
    )


def test_every_fact_is_in_its_span() -> None:
    missing = [
        f"  {q.id}: fact {fact!r} is not in its span"
        for q in golden()
        if q.answerable
        for fact in q.facts
        if normalise(fact) not in normalise(q.span)
    ]
    assert not missing, "facts must be verbatim parts of their span:\n" + "\n".join(missing)
