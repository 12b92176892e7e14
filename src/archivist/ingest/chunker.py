"""Structure-aware chunking, sized in tokens of the embedding model's own tokenizer.

A document is cut into sections at headings, each section's blocks are packed greedily up to
the target size, and only blocks too big for a chunk are split: prose at sentence boundaries,
code and tables at line ends, and anything still too big into token windows. Every chunk is a
contiguous span of the document text.

A chunk is also capped in characters (`ChunkerSettings.max_chars`): a word-piece tokenizer reads a long unbroken
run of characters as one unknown token, so the token cap alone would let one "word" of megabytes through. Runs
over the character cap are cut before any of them reaches the tokenizer.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from archivist.embed.base import Tokenizer
from archivist.ingest.spans import trim_span
from archivist.types import Block, Chunk, Document, UsageError

# Bump whenever a change to this module can change the chunks of an unchanged document.
CHUNKER_VERSION = "2"

_ATOMIC_KINDS = frozenset({"heading", "code", "table"})
_MIN_WINDOW_TOKENS = 16
_ABBREVIATION_LOOKBACK = 12
#: Characters a chunk may hold per token of its cap. English prose runs at about 4-5 characters per word-piece token
#: and indented code at up to about 10; only text the tokenizer cannot split (a run with no space or punctuation,
#: read as one unknown token) comes near this bound, and that is what the character cap is for.
MAX_CHARS_PER_TOKEN = 16
#: A run over the character cap is cut at the last whitespace (else punctuation) in the last 1/_BREAK_WINDOW of the
#: cap, and hard at the cap when there is none there.
_BREAK_WINDOW = 2
#: Characters sent to the tokenizer in one call: its per-token bookkeeping of a whole large document at once would
#: cost many times the document's size.
_COUNT_BATCH_CHARS = 1 << 18

# A match starts only where a run of end punctuation starts, and nothing backtracks: a run of a million dots must
# cost one pass, not one pass per dot.
_SENTENCE_END = re.compile(r"""(?<![.!?])([.!?]++['"”’)\]]*+)\s++(?=[A-Z0-9"“'‘(\[])""")
_ABBREVIATIONS = frozenset(
    {
        *("al.", "approx.", "ca.", "cf.", "ch.", "col.", "dept.", "dr.", "ed.", "eds.", "eq.", "eqs."),
        *("fig.", "figs.", "gen.", "inc.", "jr.", "lt.", "ltd.", "mr.", "mrs.", "ms.", "mt.", "no."),
        *("nos.", "p.", "pp.", "prof.", "ref.", "refs.", "resp.", "rev.", "sec.", "sr.", "st.", "tab."),
        *("univ.", "vol.", "vs."),
    }
)
_INITIALS = re.compile(r"(?:[A-Za-z]\.){2,}|[A-Z]\.")  # "e.g.", "U.S.", "J."
_LIST_MARKER = re.compile(r"[ \t]*(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)", re.MULTILINE)
# From a line's first non-space character to its end (trimmed by the caller); starting at a non-space keeps a
# line of a million spaces linear.
_NON_WS_LINE = re.compile(r"\S[^\n]*+")
_PUNCTUATION = re.compile(r"[^\w\s]")


@dataclass(frozen=True)
class ChunkerSettings:
    """How big chunks are, in model tokens (and, derived from that, in characters)."""

    max_tokens: int = 256  # hard cap per chunk
    target_tokens: int = 200  # aim; a chunk may grow to max_tokens to keep a code block/table whole
    overlap_tokens: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.target_tokens <= self.max_tokens:
            raise UsageError(
                f"chunk target_tokens must be between 1 and max_tokens ({self.max_tokens}), got {self.target_tokens}"
            )
        if not 0 <= self.overlap_tokens < self.target_tokens:
            raise UsageError(
                f"chunk overlap_tokens must be at least 0 and below target_tokens ({self.target_tokens}), "
                f"got {self.overlap_tokens}"
            )

    @property
    def max_chars(self) -> int:
        """Return the most characters a chunk may hold: MAX_CHARS_PER_TOKEN per token of the cap."""
        return self.max_tokens * MAX_CHARS_PER_TOKEN


@dataclass(frozen=True, slots=True)
class _Unit:
    """The smallest piece packing moves around: a sentence, a code block, a token window."""

    start: int
    end: int
    tokens: int
    page: int | None
    prose: bool  # prose units may be repeated as overlap; code, tables and headings never are
    heading: bool
    exact: bool = True  # False when `tokens` is an estimate (a window cut inside a word)


@dataclass(frozen=True, slots=True)
class _Group:
    """Units that go into one chunk together whenever they fit."""

    units: tuple[_Unit, ...]

    @property
    def tokens(self) -> int:
        return sum(unit.tokens for unit in self.units)

    @property
    def heading(self) -> bool:
        return all(unit.heading for unit in self.units)


@dataclass
class _Section:
    path: tuple[str, ...]
    blocks: list[Block]


def _is_abbreviation(text: str, period: int, floor: int) -> bool:
    """Return whether the period at text[period] ends an abbreviation rather than a sentence."""
    lowest = max(floor, period - _ABBREVIATION_LOOKBACK)
    space = max(text.rfind(" ", lowest, period), text.rfind("\n", lowest, period))
    if space < 0 and lowest > floor:
        return False  # a word longer than any abbreviation
    word = text[space + 1 if space >= 0 else lowest : period + 1].lstrip("([{\"'“‘")
    return word.lower() in _ABBREVIATIONS or _INITIALS.fullmatch(word) is not None


def sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Return the whitespace-trimmed span of each sentence of text[start:end]."""
    spans: list[tuple[int, int]] = []
    begin = start
    for match in _SENTENCE_END.finditer(text, start, end):
        punctuation = match.group(1)
        single_period = punctuation.rstrip("'\"”’)]") == "."
        if single_period and _is_abbreviation(text, match.start(1), begin):
            continue
        span = trim_span(text, begin, match.end(1))
        if span is not None:
            spans.append(span)
        begin = match.end()
    tail = trim_span(text, begin, end)
    if tail is not None:
        spans.append(tail)
    return spans


def _item_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Return the span of each item of a list block (an item runs until the next marker line)."""
    starts = []
    for match in _NON_WS_LINE.finditer(text, start, end):
        line = max(start, text.rfind("\n", start, match.start()) + 1)
        if _LIST_MARKER.match(text, line, end):
            starts.append(line)
    if not starts or starts[0] != _first_content(text, start, end):
        starts.insert(0, start)
    return _spans_between(text, [*starts, end])


def _spans_between(text: str, bounds: Sequence[int]) -> list[tuple[int, int]]:
    """Return the non-empty trimmed spans between consecutive bounds."""
    spans = (trim_span(text, a, b) for a, b in itertools.pairwise(bounds))
    return [span for span in spans if span is not None]


def _first_content(text: str, start: int, end: int) -> int:
    span = trim_span(text, start, end)
    return span[0] if span is not None else start


def _line_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = (trim_span(text, m.start(), m.end()) for m in _NON_WS_LINE.finditer(text, start, end))
    return [span for span in spans if span is not None]


def hard_split(text: str, start: int, end: int, cap: int) -> list[tuple[int, int, bool]]:
    """Return text[start:end] as trimmed spans of at most `cap` characters, each with whether it was cut at
    whitespace (so token counts of neighbours add up); a span within the cap comes back whole."""
    pieces: list[tuple[int, int, bool]] = []
    clean = True  # whether the piece being cut starts at whitespace (or where the caller's span starts)
    while end - start > cap:
        limit = start + cap
        low = limit - max(1, cap // _BREAK_WINDOW)
        space = max(text.rfind(" ", low, limit), text.rfind("\n", low, limit), text.rfind("\t", low, limit))
        if space > start:
            cut, resume, at_space = space, space + 1, True
        else:
            marks = [m.end() for m in _PUNCTUATION.finditer(text, low, limit)]
            cut = resume = marks[-1] if marks else limit
            at_space = False
        span = trim_span(text, start, cut)
        if span is not None:
            pieces.append((span[0], span[1], clean and at_space))
        clean = at_space
        start = resume
    span = trim_span(text, start, end)
    if span is not None:
        pieces.append((span[0], span[1], clean))
    return pieces


def _window_cuts(offsets: Sequence[tuple[int, int]], size: int) -> list[int]:
    """Return the token indices where windows of at most `size` tokens start, cut between words if possible."""
    cuts = [0]
    first = 0
    while len(offsets) - first > size:
        cut = first + size
        for candidate in range(cut, first + max(1, size // 2), -1):
            # A gap between two tokens' characters is whitespace: a word boundary.
            if offsets[candidate][0] > offsets[candidate - 1][1]:
                cut = candidate
                break
        cuts.append(cut)
        first = cut
    return cuts


class Chunker:
    """Cuts documents into contiguous, heading-aware chunks of at most `max_tokens` model tokens."""

    def __init__(self, tokenizer: Tokenizer, settings: ChunkerSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        # Sums of piece counts are trusted only clear of the cap, in case the tokenizer is not additive.
        self._trusted_tokens = settings.max_tokens - max(8, settings.max_tokens // 16)
        self._window_tokens = min(settings.target_tokens, max(settings.overlap_tokens, _MIN_WINDOW_TOKENS))
        self._max_chars = settings.max_chars

    def fingerprint(self) -> str:
        """Return a stable string naming the chunking behaviour, so a change re-chunks documents."""
        s = self.settings
        return f"chunker-v{CHUNKER_VERSION}:max={s.max_tokens}:target={s.target_tokens}:overlap={s.overlap_tokens}"

    def chunk(self, doc: Document) -> list[Chunk]:
        """Return the chunks of a document, in order, with ordinals 0..n-1."""
        size = len(doc.text)
        # A block outside the text would make a chunk that is no span of it.
        blocks = [b for b in doc.blocks if 0 <= b.start < b.end <= size] or self._fallback_blocks(doc.text)
        pieces = [self._block_pieces(doc.text, block) for block in blocks]
        # A piece over the character cap (only an oversize code block or table) is never tokenized whole: it is
        # marked over the token cap, so it is split into lines first.
        counts = iter(self._count([doc.text[a:b] for spans in pieces for a, b, _ in spans if b - a <= self._max_chars]))
        over = self.settings.max_tokens + 1
        groups_by_block = {
            id(block): self._block_groups(
                doc.text, block, [(a, b, next(counts) if b - a <= self._max_chars else over, e) for a, b, e in spans]
            )
            for block, spans in zip(blocks, pieces, strict=True)
        }
        packed: list[tuple[tuple[str, ...], list[_Unit]]] = []
        for section in _sections(blocks):
            groups = [group for block in section.blocks for group in groups_by_block[id(block)]]
            packed.extend((section.path, units) for units in self._pack(groups))
        return self._materialise(doc, packed)

    @staticmethod
    def _fallback_blocks(text: str) -> list[Block]:
        """Return one paragraph block over the whole text, for a document a loader gave no blocks."""
        span = trim_span(text, 0, len(text))
        return [] if span is None else [Block("paragraph", span[0], span[1])]

    def _count(self, texts: list[str]) -> list[int]:
        """Return the token count of each text, asking the tokenizer a bounded number of characters at a time."""
        counts: list[int] = []
        batch: list[str] = []
        size = 0
        for text in texts:
            batch.append(text)
            size += len(text)
            if size >= _COUNT_BATCH_CHARS:
                counts += self.tokenizer.count(batch)
                batch, size = [], 0
        return counts + self.tokenizer.count(batch) if batch else counts

    def _block_pieces(self, text: str, block: Block) -> list[tuple[int, int, bool]]:
        """Return the spans whose token counts the block needs: sentences for prose (any over the character cap
        cut into pieces), else the block; each with whether it ends at a word boundary (its count is exact)."""
        if block.kind in _ATOMIC_KINDS:
            span = trim_span(text, block.start, block.end)
            return [] if span is None else [(span[0], span[1], True)]
        if block.kind == "list":
            spans = [s for a, b in _item_spans(text, block.start, block.end) for s in sentence_spans(text, a, b)]
        else:
            spans = sentence_spans(text, block.start, block.end)
        cap = self._max_chars
        return [piece for a, b in spans for piece in ([(a, b, True)] if b - a <= cap else hard_split(text, a, b, cap))]

    def _block_groups(self, text: str, block: Block, pieces: list[tuple[int, int, int, bool]]) -> list[_Group]:
        """Return a block as groups: whole if it fits a chunk, else its pieces one group each."""
        s = self.settings
        if block.kind in _ATOMIC_KINDS:
            if not pieces:
                return []
            start, end, tokens, _ = pieces[0]
            if tokens <= s.max_tokens:
                return [_Group((self._unit(block, start, end, tokens),))]
            return [_Group((unit,)) for unit in self._split_atomic(text, block, start, end)]
        units: list[_Unit] = []
        for start, end, tokens, exact in pieces:
            if tokens <= s.max_tokens:
                units.append(self._unit(block, start, end, tokens, exact))
            else:
                units.extend(self._windows(text, block, start, end, self._window_tokens))
        if sum(unit.tokens for unit in units) <= s.target_tokens and units[-1].end - units[0].start <= self._max_chars:
            return [_Group(tuple(units))]
        return [_Group((unit,)) for unit in units]

    @staticmethod
    def _unit(block: Block, start: int, end: int, tokens: int, exact: bool = True) -> _Unit:
        prose = block.kind not in _ATOMIC_KINDS
        return _Unit(start, end, tokens, block.page, prose=prose, heading=block.kind == "heading", exact=exact)

    def _split_atomic(self, text: str, block: Block, start: int, end: int) -> list[_Unit]:
        """Return an oversize code block or table as runs of whole lines, lines too long as windows (a line over
        the character cap is first cut into pieces within it)."""
        cap = self._max_chars
        lines = [piece for a, b in _line_spans(text, start, end) for piece in hard_split(text, a, b, cap)]
        counts = self._count([text[a:b] for a, b, _ in lines])
        target = self.settings.target_tokens
        units: list[_Unit] = []
        run: list[tuple[int, int, int, bool]] = []

        def close_run() -> None:
            if run:
                exact = all(e for _, _, _, e in run)
                units.append(self._unit(block, run[0][0], run[-1][1], sum(c for _, _, c, _ in run), exact))
                run.clear()

        for (a, b, exact), tokens in zip(lines, counts, strict=True):
            if tokens > target:
                close_run()
                units.extend(self._windows(text, block, a, b, target))
            else:
                if run and (sum(c for _, _, c, _ in run) + tokens > target or b - run[0][0] > cap):
                    close_run()
                run.append((a, b, tokens, exact))
        close_run()
        return units

    def _windows(self, text: str, block: Block, start: int, end: int, size: int) -> list[_Unit]:
        """Return a span cut into windows of at most `size` tokens (estimated from token offsets)."""
        offsets = self.tokenizer.offsets(text[start:end])
        cuts = _window_cuts(offsets, size)
        bounds = [start, *(start + offsets[cut][0] for cut in cuts[1:]), end]
        token_bounds = [*cuts, len(offsets)]
        units = []
        for i in range(len(bounds) - 1):
            span = trim_span(text, bounds[i], bounds[i + 1])
            if span is not None:
                tokens = token_bounds[i + 1] - token_bounds[i]
                units.append(replace(self._unit(block, span[0], span[1], tokens), exact=False))
        return units

    def _pack(self, groups: list[_Group]) -> list[list[_Unit]]:
        """Return the units of one section packed greedily into chunks, with overlap between them."""
        s = self.settings
        chunks: list[list[_Unit]] = []
        current: list[_Unit] = []
        total = 0
        has_content = False  # anything besides headings and repeated overlap
        for group in groups:
            size = group.tokens
            fits = total + size <= s.target_tokens
            # Until a chunk has content of its own, it may grow to the cap rather than leave
            # a heading or an overlap alone in a chunk.
            fits = fits or (not has_content and total + size <= s.max_tokens)
            fits = fits and (not current or group.units[-1].end - current[0].start <= self._max_chars)
            if current and not fits:
                chunks.append(current)
                current = self._overlap(current, group)
                total = sum(unit.tokens for unit in current)
                has_content = False
            current.extend(group.units)
            total += size
            has_content = has_content or not group.heading
        if current:
            chunks.append(current)
        return chunks

    def _overlap(self, previous: list[_Unit], incoming: _Group) -> list[_Unit]:
        """Return the trailing prose sentences of a chunk to repeat at the start of the next one."""
        budget = self.settings.overlap_tokens
        room = self.settings.max_tokens - incoming.tokens
        taken: list[_Unit] = []
        total = 0
        # Never the whole previous chunk: the next one must not start where it started.
        for unit in reversed(previous[1:]):
            if not unit.prose or total + unit.tokens > min(budget, room):
                break
            if incoming.units[-1].end - unit.start > self._max_chars:
                break
            taken.append(unit)
            total += unit.tokens
        taken.reverse()
        return taken

    def _materialise(self, doc: Document, packed: list[tuple[tuple[str, ...], list[_Unit]]]) -> list[Chunk]:
        """Return Chunk records for packed units, re-splitting any whose exact count is over the cap."""
        text = doc.text
        counts = [sum(unit.tokens for unit in units) for _, units in packed]
        # Counting every chunk again would double the tokenizer work; the sum of its pieces' counts
        # is exact when they were cut at whitespace, so only doubtful sums are recounted.
        doubtful = [i for i, (_, units) in enumerate(packed) if self._doubtful(text, units, counts[i])]
        recounted = self._count([text[packed[i][1][0].start : packed[i][1][-1].end] for i in doubtful])
        for i, tokens in zip(doubtful, recounted, strict=True):
            counts[i] = tokens
        chunks: list[Chunk] = []
        for (path, units), tokens in zip(packed, counts, strict=True):
            start, end = units[0].start, units[-1].end
            fits = tokens <= self.settings.max_tokens and end - start <= self._max_chars
            pieces = [(start, end, tokens)] if fits else self._fit(text, start, end)
            for a, b, n in pieces:
                chunks.append(
                    Chunk(
                        document_id=doc.id,
                        ordinal=len(chunks),
                        text=text[a:b],
                        start=a,
                        end=b,
                        heading_path=path,
                        token_count=n,
                        page=units[0].page,
                        page_end=units[-1].page,
                    )
                )
        return chunks

    def _doubtful(self, text: str, units: list[_Unit], estimate: int) -> bool:
        """Return whether a chunk's summed token count may differ from its real count near the cap."""
        if estimate > self._trusted_tokens or not all(unit.exact for unit in units):
            return True
        # Text between units that no unit counted (e.g. a markdown horizontal rule).
        return any(text[a.end : b.start].strip() for a, b in itertools.pairwise(units))

    def _fit(self, text: str, start: int, end: int) -> list[tuple[int, int, int]]:
        """Return a span cut into windows whose exact token counts and lengths are within the caps."""
        return [w for a, b, _ in hard_split(text, start, end, self._max_chars) for w in self._fit_tokens(text, a, b)]

    def _fit_tokens(self, text: str, start: int, end: int) -> list[tuple[int, int, int]]:
        """Return a span within the character cap cut into windows whose exact token counts are within the cap."""
        size = self.settings.max_tokens
        [tokens] = self.tokenizer.count([text[start:end]])
        if tokens <= size:
            return [(start, end, tokens)]
        while True:
            offsets = self.tokenizer.offsets(text[start:end])
            bounds = [start, *(start + offsets[c][0] for c in _window_cuts(offsets, size)[1:]), end]
            spans = _spans_between(text, bounds)
            counts = self.tokenizer.count([text[a:b] for a, b in spans])
            if all(n <= self.settings.max_tokens for n in counts) or size == 1:
                return [(a, b, n) for (a, b), n in zip(spans, counts, strict=True)]
            size = max(1, size * 9 // 10)


def _sections(blocks: list[Block]) -> list[_Section]:
    """Return blocks grouped into sections: a heading starts one, unless the section so far holds
    only headings it is a subsection of (so "# A" directly followed by "## B" stays together)."""
    sections: list[_Section] = []
    for block in blocks:
        current = sections[-1] if sections else None
        if current is not None and _continues(current, block):
            current.blocks.append(block)
            current.path = block.heading_path
        else:
            sections.append(_Section(block.heading_path, [block]))
    return sections


def _continues(section: _Section, block: Block) -> bool:
    """Return whether a block belongs to the section before it."""
    if block.kind != "heading":
        return block.heading_path == section.path
    only_headings = all(b.kind == "heading" for b in section.blocks)
    path = block.heading_path
    return only_headings and len(path) > len(section.path) and path[: len(section.path)] == section.path
