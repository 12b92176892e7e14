"""The structure loaders share: paragraph and line spans, blocks, titles, and a builder for assembled text."""

from __future__ import annotations

import re

from archivist.ingest.spans import trim_span
from archivist.types import Block, BlockKind

_SHORT_TITLE_CHARS = 120
#: Titles and heading names are repeated in every chunk's embedded text and every search hit: a "title" of
#: megabytes (one huge line under a `#`) is cut to this many characters.
MAX_TITLE_CHARS = 500

# Starts at a non-space and never backtracks, so a line of a million spaces costs one pass, not one per space.
_PARAGRAPH_RUN = re.compile(r"\S[^\n]*+(?:\n[^\S\n]*+\S[^\n]*+)*+")
_LINE_CONTENT = re.compile(r"\S(?:[^\n]*\S)?")
_WHITESPACE = re.compile(r"\s+")


def clip_title(title: str) -> str:
    """Return a title of at most MAX_TITLE_CHARS characters, cut at a space and marked with '…' when too long."""
    if len(title) <= MAX_TITLE_CHARS:
        return title
    cut = title[: MAX_TITLE_CHARS - 1]
    space = cut.rfind(" ", MAX_TITLE_CHARS // 2)
    return (cut[:space] if space > 0 else cut).rstrip() + "…"


def collapse(text: str) -> str:
    """Return text with every whitespace run turned into one space, trimmed."""
    return _WHITESPACE.sub(" ", text).strip()


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """Return the (start, end) of each run of non-blank lines, whitespace-trimmed."""
    spans = []
    for match in _PARAGRAPH_RUN.finditer(text):
        span = trim_span(text, match.start(), match.end())
        if span is not None:
            spans.append(span)
    return spans


def line_spans(text: str) -> list[tuple[int, int]]:
    """Return the (start, end) of each non-blank line, whitespace-trimmed."""
    return [(m.start(), m.end()) for m in _LINE_CONTENT.finditer(text)]


def paragraph_blocks(text: str) -> list[Block]:
    """Return one paragraph block per run of non-blank lines of text."""
    return [Block("paragraph", s, e) for s, e in paragraph_spans(text)]


def short_line_title(text: str, fallback: str) -> str:
    """Return the first content line if it is short enough to be a title, else the fallback."""
    for match in _LINE_CONTENT.finditer(text):
        line = match.group()
        # An reStructuredText over/underline is not the title.
        if len(set(line)) == 1 and not line[0].isalnum():
            continue
        return line if len(line) < _SHORT_TITLE_CHARS else fallback
    return fallback


class TextBuilder:
    """Assembles a document's text from pieces (HTML elements, PDF pages), recording each piece as a block."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.blocks: list[Block] = []

    @property
    def text(self) -> str:
        """Return the text assembled so far."""
        return "".join(self._parts)

    def _append(self, piece: str, separator: str) -> int:
        """Append a piece after the separator; return the piece's offset."""
        if self._parts:
            self._parts.append(separator)
            self._length += len(separator)
        start = self._length
        self._parts.append(piece)
        self._length += len(piece)
        return start

    def add(self, piece: str, kind: BlockKind, path: tuple[str, ...] = ()) -> None:
        """Append one block's text, if it has any."""
        if piece.strip():
            start = self._append(piece, "\n\n")
            self.blocks.append(Block(kind, start, start + len(piece), path))

    def add_page(self, page_text: str, spans: list[tuple[int, int]], page: int) -> None:
        """Append one PDF page's text with a paragraph block per span."""
        base = self._append(page_text, "\n\n")
        self.blocks.extend(Block("paragraph", base + s, base + e, (), page) for s, e in spans)
