"""Markdown line patterns that sentence splitting and prose rendering both read."""

from __future__ import annotations

import re

#: the line that opens (and closes) a fenced code block; group 1 is the fence itself
FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
#: an ATX heading line
ATX = re.compile(r" {0,3}#{1,6}(?:[ \t]|$)")


def closing_fence(opening: str) -> re.Pattern[str]:
    """Return the pattern of the line that closes a code block opened by the fence `opening` (e.g. "```")."""
    return re.compile(rf" {{0,3}}{re.escape(opening[0])}{{{len(opening)},}}[ \t]*$")
