"""An answer's text as segments: plain text and our citation marks, so no reader has to find "[n]" in prose."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class AnswerSegment:
    """A piece of an answer: plain text, or the mark of citation `n` (shown as "[n]" in the answer text)."""

    type: Literal["text", "citation"]
    text: str = ""
    n: int = 0

    @property
    def shown(self) -> str:
        """Return the segment as the answer text shows it."""
        return f"[{self.n}]" if self.type == "citation" else self.text

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: {"type": "text", "text": …} or {"type": "citation", "n": …}."""
        return {"type": "citation", "n": self.n} if self.type == "citation" else {"type": "text", "text": self.text}


def plain(value: str) -> AnswerSegment:
    """Return a plain-text segment."""
    return AnswerSegment("text", value)


def mark(n: int) -> AnswerSegment:
    """Return the segment of citation `n`'s mark."""
    return AnswerSegment("citation", n=n)


def compact(segments: Iterable[AnswerSegment]) -> list[AnswerSegment]:
    """Return the segments with neighbouring text joined and empty text left out."""
    out: list[AnswerSegment] = []
    for seg in segments:
        if seg.type == "text" and not seg.text:
            continue
        if seg.type == "text" and out and out[-1].type == "text":
            out[-1] = plain(out[-1].text + seg.text)
        else:
            out.append(seg)
    return out


def shown(segments: Iterable[AnswerSegment]) -> str:
    """Return the answer text the segments make: text as is, each citation as "[n]"."""
    return "".join(s.shown for s in segments)


def quoted(quotes: Sequence[str]) -> list[AnswerSegment]:
    """Return the segments of an extractive answer: each quote followed by its citation, 1, 2, …"""
    out: list[AnswerSegment] = []
    for n, quote in enumerate(quotes, start=1):
        out += [plain(" " if out else ""), plain(f"{quote} "), mark(n)]
    return compact(out)
