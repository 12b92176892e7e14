"""Sentences of a text as character offsets, and the blocks a sentence ending in a colon introduces."""

from __future__ import annotations

import re

from archivist.text.markdown import ATX, FENCE, closing_fence

# A sentence ends at . ! ? (optionally closed by a quote or bracket) before whitespace and a capital, digit or
# opening bracket; a blank line or a line break also ends one (headings, list items, table rows) unless it is a soft
# wrap (see `_soft_wrap`).
_BOUNDARY = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[A-Z0-9\"“(\[])|[ \t]*\n\s*")
# A line that starts a list item or a table row: the break before it is a real one.
_LIST_ITEM = re.compile(r"[-*+•|>#]|\d+[.)]\s")
# Abbreviations whose period does not end a sentence.
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|et al|etc|vs|Fig|Figs|Dr|Mr|Mrs|Ms|No|approx|ca|cf|Ref|Eq)\.|\b[A-Z]\.)$")
_WORD = re.compile(r"[A-Za-z0-9]+")
MIN_SENTENCE_CHARS = 20
MAX_SENTENCE_CHARS = 600
#: the most text a sentence ending in a colon pulls in from the list, table or code block it introduces
MAX_INTRODUCED_CHARS = 800
#: changes whenever `sentence_spans` would cut prose differently: stored sentence vectors are keyed by it. Leaving
#: code blocks and headings out (they are not prose) kept it: stores from before still hold valid vectors for every
#: prose sentence, and their extra vectors of code lines only ever bring a chunk into the evidence.
SPLITTER_VERSION = "s2"


def sentence_model_key(model_id: str) -> str:
    """Return the key sentence vectors are stored under: the embedding model and the splitter that cut them."""
    return f"{model_id}|sentences-{SPLITTER_VERSION}"


def sentence_spans(text: str, *, prose_only: bool = True) -> list[tuple[int, int]]:
    """Return the (start, end) offsets of the text's sentences, too short or too long ones left out.

    Markdown code blocks and ATX headings are not prose: with `prose_only` (what answers quote and what is stored
    at ingest) they give no sentences; otherwise each of their lines is one (what an LLM's claims are checked
    against). A line break never joins a code line or a heading to the prose around it.
    """
    out: list[tuple[int, int]] = []
    for a, b, is_prose in _regions(text):
        if is_prose:
            out += [(a + x, a + y) for x, y in _prose_spans(text[a:b])]
        elif not prose_only:
            out += [(a + x, a + y) for x, y in _kept(text[a:b], _line_pieces(text[a:b]))]
    return out


def _regions(text: str) -> list[tuple[int, int, bool]]:
    """Return the text cut into (start, end, is_prose) runs: fenced code blocks and ATX headings are not prose."""
    out: list[tuple[int, int, bool]] = []
    prose_from = 0
    pos = 0
    fence: re.Pattern[str] | None = None
    other_from = 0
    for line in text.splitlines(keepends=True):
        end = pos + len(line)
        if fence is not None:
            if fence.match(line):
                out.append((other_from, end, False))
                fence, prose_from = None, end
        elif m := FENCE.match(line):
            out.append((prose_from, pos, True))
            other_from = pos
            fence = closing_fence(m.group(1))
        elif ATX.match(line):
            out += [(prose_from, pos, True), (pos, end, False)]
            prose_from = end
        pos = end
    # An unclosed fence runs to the end of the text, as in CommonMark.
    out.append((other_from, len(text), False) if fence is not None else (prose_from, len(text), True))
    return [(a, b, is_prose) for a, b, is_prose in out if b > a]


def _line_pieces(text: str) -> list[tuple[int, int]]:
    """Return the text's lines as (start, end) offsets, fence lines left out."""
    out = []
    pos = 0
    for line in text.splitlines(keepends=True):
        if not FENCE.match(line):
            out.append((pos, pos + len(line)))
        pos += len(line)
    return out


def sentence_start(text: str, offset: int) -> int:
    """Return where the sentence holding `offset` starts (`offset` itself when one starts there), cut as
    `sentence_spans` cuts the text but keeping sentences of any length; in a code block or heading, the line's."""
    for a, b, is_prose in _regions(text):
        if not a <= offset < b:
            continue
        if not is_prose:
            return max(text.rfind("\n", a, offset) + 1, a)
        begin = a
        for x, _ in _prose_pieces(text[a:b]):
            if a + x > offset:
                break
            begin = a + x
        body = text[begin:offset]
        # Space that opens the run belongs to no sentence.
        return begin + len(body) - len(body.lstrip()) if body.strip() else offset
    return offset


def _prose_spans(text: str) -> list[tuple[int, int]]:
    """Return the sentences of a run of prose (see `_BOUNDARY`, `_soft_wrap`)."""
    return _kept(text, _prose_pieces(text))


def _prose_pieces(text: str) -> list[tuple[int, int]]:
    """Return a run of prose cut at its sentence boundaries, untrimmed and unfiltered."""
    pieces: list[tuple[int, int]] = []
    a = 0
    for m in _BOUNDARY.finditer(text):
        if "\n" in m.group(0):
            if _soft_wrap(text, m.start(), m.end()):
                continue
        elif _ABBREV.search(text[a : m.start()]):
            continue
        # Keep a closing quote or bracket with its sentence.
        cut = m.start() + len(m.group(0)) - len(m.group(0).lstrip("\"'”’)]"))
        pieces.append((a, cut))
        a = m.end()
    pieces.append((a, len(text)))
    return pieces


def _kept(text: str, pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Return the pieces trimmed of surrounding space, those too short, too long or without a word left out."""
    out: list[tuple[int, int]] = []
    for a, b in pieces:
        raw = text[a:b]
        body = raw.strip()
        if MIN_SENTENCE_CHARS <= len(body) <= MAX_SENTENCE_CHARS and _WORD.search(body):
            start = a + len(raw) - len(raw.lstrip())
            out.append((start, start + len(body)))
    return out


#: a lead-in's colon, maybe inside closing bold or italics ("**Set these:**")
_LEAD_IN = re.compile(r":[*_]*$")


def introduced_block(text: str, end: int, max_chars: int = MAX_INTRODUCED_CHARS) -> int:
    """Return where the block a sentence ending at `end` introduces ends (`end` when there is none).

    A sentence that ends in a colon ("set it from the environment:") is not complete without the list, table, code
    block or lines that follow it. The block starts on the next line (one blank line may come first) and runs to
    the next blank line, or through the closing fence of a code block that opens it; a heading ends it. It is cut
    at the last whole line within `max_chars`, and a block whose first line alone is longer is not taken.
    """
    if not _LEAD_IN.search(text[:end].rstrip()):
        return end
    gap = text[end:]
    lead = len(gap) - len(gap.lstrip(" \t\r\n"))
    if text.count("\n", end, end + lead) not in (1, 2):
        return end
    start = end + lead - len(gap[:lead].rsplit("\n", 1)[1])  # back to the start of the block's first line
    fence: re.Pattern[str] | None = None
    code_block = False  # the block is a fenced code block (it opens with the fence)
    block_end = pos = start
    for line in text[start:].splitlines(keepends=True):
        body = line.rstrip("\r\n")
        if fence is None and ((not body.strip() and pos > start) or ATX.match(body)):
            break
        if pos + len(body) - end > max_chars:
            break
        closes = False
        if fence is not None:
            closes = bool(fence.match(body))
            fence = None if closes else fence
        elif m := FENCE.match(body):
            fence = closing_fence(m.group(1))
            code_block = code_block or pos == start
        pos += len(line)
        block_end = pos - (len(line) - len(body))
        if closes and code_block:
            break  # what follows a code block's closing fence is not part of it
    return block_end if block_end > start else end


def leading_block(text: str) -> int:
    """Return the length of the block that opens `text`, as a colon just before it would introduce it (0: none)."""
    return max(introduced_block(":\n" + text, 1) - 2, 0)


#: the most text between a quote and the colon that ends its paragraph for the quote to run on through it
MAX_LEAD_IN_CHARS = 300
#: a line that starts a block rather than continuing a paragraph: blank, a list item, a table row, a fence, a heading
_BLOCK_START = re.compile(r"[ \t]*(?:$|[-*+•][ \t]|\d{1,9}[.)][ \t]|\||`{3,}|~{3,}|#{1,6}(?:[ \t]|$))")


def quote_end(text: str, end: int) -> int:
    """Return where a quote ending at `end` should end: after the block it introduces when it ends in a colon, or
    after the rest of its paragraph and the block that rest introduces when the paragraph ends in one ("Use the
    online backup command. It gives a consistent copy:" followed by the command). Otherwise `end`."""
    block = introduced_block(text, end)
    if block > end:
        return block
    # The rest of the paragraph: up to the first line that starts a block (or a blank line).
    stop = len(text)
    pos = text.find("\n", end)
    while pos != -1:
        if _BLOCK_START.match(text, pos + 1):
            stop = pos
            break
        pos = text.find("\n", pos + 1)
    rest = text[end:stop].rstrip()
    if not _LEAD_IN.search(rest) or len(rest.strip()) > MAX_LEAD_IN_CHARS:
        return end
    block = introduced_block(text, end + len(rest))
    return block if block > end + len(rest) else end


def unstored_space(length: int, after: str) -> str:
    """Return what stands for `length` characters of space whose text is not known (between two chunks) when
    sentences are split across it: two or more are taken for a blank line, which ends a sentence; one before a list
    item, table row or heading for a line break; else one space, which ends a sentence only after . ! or ?"""
    if length >= 2:
        return "\n\n"
    return "\n" if _LIST_ITEM.match(after) else " "


def _soft_wrap(text: str, start: int, end: int) -> bool:
    """Return whether the line break in text[start:end] only wraps a sentence (hard-wrapped prose, PDF text).

    One line break, after a lowercase letter, digit, comma, semicolon or hyphen and before a lowercase letter, digit
    or bracket that does not open a list item: "in degree, but not in kind, from\\nprevious pandemics".
    """
    if text.count("\n", start, end) > 1 or start == 0 or end >= len(text):
        return False
    before, after = text[start - 1], text[end]
    if not (before.islower() or before.isdigit() or before in ",;-–("):
        return False
    return (after.islower() or after.isdigit() or after in "([") and not _LIST_ITEM.match(text, end)
