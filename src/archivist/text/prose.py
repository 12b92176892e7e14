"""Quotes rendered as answer prose: Markdown tables, lists, links and code read as sentences."""

from __future__ import annotations

import re

from archivist.text.markdown import FENCE

_LINK = re.compile(r"\[([^\]\n]+)\]\([^)\s]*\)")
_EMPHASIS = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_LIST_MARK = re.compile(r"^(?:[-*+•]|\d{1,9}[.)])\s+")
#: a table's header rule: cells of dashes (colons for alignment) between pipes; a line of dashes alone is a break
_TABLE_RULE = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)+\|?$|^\|\s*:?-+:?\s*\|$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_BREAK = re.compile(r"^(?:-[ \t]*){3,}$|^(?:\*[ \t]*){3,}$|^(?:_[ \t]*){3,}$")  # a thematic break
#: a document's own numeric reference mark: "[3]", "[3, 4]", "[12–14]", "[1; 5-7]"; then any space before the
#: punctuation that follows it ("days [3] ." in text extracted from PDFs)
_REFERENCE = re.compile(r"\[\s*(\d{1,4}(?:\s*[-–—,;]\s*\d{1,4})*)\s*\](?:\s+(?=[.,;:!?](?:\s|$)))?")
_INLINE_CODE = re.compile(r"(`+)[^`]*?\1")


def _cells(line: str) -> list[str]:
    """Return a table row's non-empty cells."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip() for c in _CELL_SPLIT.split(body) if c.strip()]


def _inline(text: str) -> str:
    """Return Markdown inline text as read: links and bold shown as their text, reference marks as plain text."""
    return plain_references(_EMPHASIS.sub(r"\2", _LINK.sub(r"\1", text)))


def _reference(match: re.Match[str]) -> str:
    """Return one reference mark as plain text: "(ref. 3)", "(refs. 3, 4)", "(refs. 12–14)"."""
    body = re.sub(r"\s*([,;])\s*", r"\1 ", match.group(1))
    body = re.sub(r"\s*[-–—]\s*", "–", body)
    return f"(ref. {body})" if body.isdigit() else f"(refs. {body})"


def plain_references(text: str) -> str:
    """Return text with a document's own numeric reference marks ("[3]", "[3, 4]", "[12–14]") written as
    "(ref. 3)", "(refs. 3, 4)", "(refs. 12–14)": in an answer, "[n]" is only ever our citation. Inline code is
    left as it is."""
    out: list[str] = []
    pos = 0
    for m in _INLINE_CODE.finditer(text):
        out += [_REFERENCE.sub(_reference, text[pos : m.start()]), m.group(0)]
        pos = m.end()
    out.append(_REFERENCE.sub(_reference, text[pos:]))
    return "".join(out)


def prose(text: str) -> str:
    """Return a quote as answer prose: line wraps joined, Markdown links and bold shown as their text, a table
    row's cells separated by dashes (a header row and its rule left out; rows with or without outer pipes), a
    list item's marker dropped, a code block's lines as inline code, untouched; consecutive rows, items or code
    lines are separated by semicolons; the document's own reference marks as "(ref. 3)" (`plain_references`).
    The citation keeps the exact text.
    """
    lines = text.splitlines()
    flat = [" ".join(raw.split()) for raw in lines]
    # Rows of a table without outer pipes ("name | meaning", as HTML tables load) come two or more together.
    piped = [" | " in x or x.startswith("|") for x in flat]
    parts: list[str] = []
    previous = ""  # the kind of the line before: "row", "item", "code" or "text"
    fence: str | None = None
    for i, (raw, line) in enumerate(zip(lines, flat, strict=True)):
        if m := FENCE.match(raw):
            mark = m.group(1)[0]
            fence = None if fence == mark else fence or mark
            continue
        following = flat[i + 1] if i + 1 < len(flat) else ""
        rule = _TABLE_RULE.match(line) or _TABLE_RULE.match(following) or _BREAK.match(line)
        if not line or (fence is None and rule):
            continue
        table = line.startswith("|") or (piped[i] and ((i and piped[i - 1]) or (i + 1 < len(piped) and piped[i + 1])))
        kind = "code" if fence else "row" if table else "item" if _LIST_MARK.match(line) else "text"
        if kind == "row":
            line = " — ".join(_inline(c) for c in _cells(line))
        elif kind == "code":
            line = f"`{line}`" if "`" not in line else line
        else:
            line = _inline(_LIST_MARK.sub("", line))
        if kind == "text" and previous == "item" and raw[:1].isspace():
            kind = "continued"  # an item's indented continuation line: the next item still follows an item
        if parts:
            parts.append("; " if kind == previous and kind in ("row", "item", "code") else " ")
        parts.append(line)
        previous = "item" if kind == "continued" else kind
    return "".join(parts)
