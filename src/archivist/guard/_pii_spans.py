"""PII spans: their kinds and placeholders, overlaps resolved, and text with spans replaced."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

PiiKind = Literal["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "NATIONAL_ID", "PERSON", "LOCATION", "ORGANIZATION"]
#: every kind, in the order docs and reports list them
KINDS: tuple[PiiKind, ...] = get_args(PiiKind)
#: the kinds found without the NER model (the regex level)
PATTERN_KINDS: tuple[PiiKind, ...] = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "NATIONAL_ID")
#: Presidio's entity names (and those of its evaluation data: GPE) as our kinds
ENTITY_KINDS: dict[str, PiiKind] = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "US_SSN": "NATIONAL_ID",
    "UK_NHS": "NATIONAL_ID",
    "PERSON": "PERSON",
    "LOCATION": "LOCATION",
    "GPE": "LOCATION",
    "STREET_ADDRESS": "LOCATION",
    "ORGANIZATION": "ORGANIZATION",
}


@dataclass(frozen=True, slots=True)
class PiiSpan:
    """One piece of personal data: its kind and `text[start:end]`, with the detector's confidence in [0, 1]."""

    kind: PiiKind
    start: int
    end: int
    score: float


def placeholder(kind: PiiKind) -> str:
    """Return the text a span of this kind is replaced with (`<EMAIL>`, `<PERSON>`…): stable, part of the API."""
    return f"<{kind}>"


def resolve(spans: Iterable[PiiSpan]) -> list[PiiSpan]:
    """Return the spans with overlaps removed, in text order: where spans overlap the surest wins, then the longest
    (a card number also read as a phone number is a card number)."""
    kept: list[PiiSpan] = []
    for s in sorted(spans, key=lambda s: (-s.score, -(s.end - s.start), s.start)):
        if s.end > s.start and all(s.end <= k.start or s.start >= k.end for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: s.start)


def replace_spans(text: str, spans: Sequence[PiiSpan]) -> str:
    """Return `text` with each of the (non-overlapping, ordered) spans replaced by its kind's placeholder."""
    parts: list[str] = []
    pos = 0
    for s in spans:
        parts += [text[pos : s.start], placeholder(s.kind)]
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts)
