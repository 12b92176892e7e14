"""Character spans of a text: the unit loaders and the chunker both work in."""

from __future__ import annotations

# Past this many whitespace characters a span's edge is found by slicing (C speed) instead of stepping in Python:
# a file of megabytes of blank space must not cost one interpreter step per character.
_STEP_LIMIT = 64


def trim_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Return the span shrunk to exclude surrounding whitespace, or None if nothing is left."""
    limit = start + _STEP_LIMIT
    while start < end and text[start].isspace():
        start += 1
        if start == limit:
            start = end - len(text[start:end].lstrip())
            break
    limit = end - _STEP_LIMIT
    while end > start and text[end - 1].isspace():
        end -= 1
        if end == limit:
            end = start + len(text[start:end].rstrip())
            break
    return (start, end) if start < end else None
