"""Loaders that turn files of each supported media type into `Document` records.

Every loader reports bad input as a `Skipped` with a one-line reason instead of raising:
one unreadable file must never stop the ingestion of a corpus.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from archivist.ingest.spans import trim_span
from archivist.types import Block, BlockKind, Document, Skipped

_MB = 1024 * 1024
_SNIFF_BYTES = 8192
_SHORT_TITLE_CHARS = 120
#: Titles and heading names are repeated in every chunk's embedded text and every search hit: a "title" of
#: megabytes (one huge line under a `#`) is cut to this many characters.
MAX_TITLE_CHARS = 500
_UTF8_BOM = b"\xef\xbb\xbf"

MARKDOWN = "text/markdown"
PLAIN = "text/plain"
HTML = "text/html"
PDF = "application/pdf"
JSONL = "application/jsonl"

MEDIA_TYPES: dict[str, str] = {
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".txt": PLAIN,
    ".text": PLAIN,
    ".rst": PLAIN,
    ".html": HTML,
    ".htm": HTML,
    ".pdf": PDF,
    ".jsonl": JSONL,
    ".ndjson": JSONL,
}


@dataclass
class LoadResult:
    """What loading one path yields: the documents found and the inputs skipped."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class _Rejected(Exception):
    """Internal signal that a file is skipped; the message is the user-facing reason."""


def supported_suffixes() -> frozenset[str]:
    """Return the file suffixes (lower case, with the dot) that have a loader."""
    return frozenset(MEDIA_TYPES)


def source_for(path: Path) -> str:
    """Return the stable source URI of a file: relative to the cwd when under it, else absolute."""
    absolute = os.path.abspath(path)
    try:
        relative = os.path.relpath(absolute, os.getcwd())
    except (ValueError, OSError):
        # Different drive on Windows, or the cwd no longer exists.
        return Path(absolute).as_posix()
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return Path(absolute).as_posix()
    return Path(relative).as_posix()


def load_path(path: Path, *, max_file_bytes: int) -> LoadResult:
    """Return the documents in one file, or why it was skipped; never raises for bad input."""
    source = source_for(path)
    suffix = path.suffix.lower()
    media_type = MEDIA_TYPES.get(suffix)
    if media_type is None:
        return LoadResult(skipped=[Skipped(source, _unsupported_reason(suffix))])
    if media_type == JSONL:
        return _collect(iter_jsonl(path, max_record_bytes=max_file_bytes))
    try:
        data = _read_bytes(path, max_file_bytes)
        document = _LOADERS[media_type](path, source, data)
    except _Rejected as rejected:
        return LoadResult(skipped=[Skipped(source, str(rejected))])
    except Exception as error:  # a parser bug or exotic input must not abort a whole corpus
        return LoadResult(skipped=[Skipped(source, f"could not parse: {_one_line(error)}")])
    return LoadResult(documents=[document])


def _collect(items: Iterable[Document | Skipped]) -> LoadResult:
    """Return the documents and skips of a stream, separated."""
    result = LoadResult()
    for item in items:
        if isinstance(item, Document):
            result.documents.append(item)
        else:
            result.skipped.append(item)
    return result


def _unsupported_reason(suffix: str) -> str:
    """Return the skip reason for a file type without a loader."""
    supported = ", ".join(sorted(MEDIA_TYPES))
    what = f"'{suffix}'" if suffix else "(no extension)"
    return f"unsupported file type {what} (supported: {supported})"


def _one_line(error: BaseException) -> str:
    """Return an exception as one short line."""
    message = " ".join(str(error).split()) or type(error).__name__
    return message[:200]


def _too_large_reason(size: int, limit: int) -> str:
    """Return the skip reason for input over the size limit."""
    return f"too large: {_human_size(size)} exceeds the {_human_size(limit)} limit (ARCHIVIST_MAX_FILE_MB)"


def _human_size(size: int) -> str:
    """Return a byte count the way a person reads it: "50.0 MB", "2.0 KB", "10 bytes"."""
    if size >= _MB:
        return f"{size / _MB:.1f} MB"
    return f"{size / 1024:.1f} KB" if size >= 1024 else f"{size} bytes"


def _read_bytes(path: Path, max_file_bytes: int) -> bytes:
    """Return a file's bytes, rejecting files that are missing, unreadable, too large or empty."""
    try:
        info = path.stat()
    except OSError as error:
        raise _Rejected(f"cannot read: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise _Rejected("not a regular file")
    # Checked before reading so a huge file never reaches memory.
    if info.st_size > max_file_bytes:
        raise _Rejected(_too_large_reason(info.st_size, max_file_bytes))
    try:
        data = path.read_bytes()
    except OSError as error:
        raise _Rejected(f"cannot read: {error.strerror or error}") from None
    if not data.strip():
        raise _Rejected("empty file")
    return data


def _wide_encoding(head: bytes) -> str | None:
    """Return "utf-32" or "utf-16" when bytes start with that encoding's byte order mark, else None."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def _decode_text(data: bytes, fallback_encoding: str | None = None) -> str:
    """Return bytes decoded as UTF-8 (or UTF-16/32 with a byte order mark) with the BOM stripped and LF line ends,
    or reject them."""
    wide = _wide_encoding(data)
    if wide is not None:
        # Windows tools save text as UTF-16 with a BOM: its NUL bytes do not make it binary.
        try:
            text = data.decode(wide)
        except UnicodeDecodeError as error:
            raise _Rejected(f"not valid {wide.upper()}: {_one_line(error)}") from None
        if "\x00" in text[:_SNIFF_BYTES]:
            raise _Rejected("binary content, not text")
    elif b"\x00" in data[:_SNIFF_BYTES]:
        raise _Rejected("binary content, not text")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            text = _decode_fallback(data, fallback_encoding, error)
    text = normalise_newlines(text.removeprefix("\ufeff"))
    if not text.strip():
        raise _Rejected("empty file")
    return text


def _decode_fallback(data: bytes, encoding: str | None, error: UnicodeDecodeError) -> str:
    """Return bytes decoded with a declared encoding, or reject them with the UTF-8 error."""
    if encoding is not None:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            pass
    raise _Rejected(f"not valid UTF-8: {_bad_byte(error)} at offset {error.start}") from None


def _bad_byte(error: UnicodeDecodeError) -> str:
    """Return the first undecodable byte of a decode error, as hex."""
    return f"byte 0x{error.object[error.start]:02x}"


def clip_title(title: str) -> str:
    """Return a title of at most MAX_TITLE_CHARS characters, cut at a space and marked with '…' when too long."""
    if len(title) <= MAX_TITLE_CHARS:
        return title
    cut = title[: MAX_TITLE_CHARS - 1]
    space = cut.rfind(" ", MAX_TITLE_CHARS // 2)
    return (cut[:space] if space > 0 else cut).rstrip() + "…"


def normalise_newlines(text: str) -> str:
    """Return text with CRLF and lone CR line ends turned into LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# Starts at a non-space and never backtracks, so a line of a million spaces costs one pass, not one per space.
_PARAGRAPH_RUN = re.compile(r"\S[^\n]*+(?:\n[^\S\n]*+\S[^\n]*+)*+")
_LINE_CONTENT = re.compile(r"\S(?:[^\n]*\S)?")


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """Return the (start, end) of each run of non-blank lines, whitespace-trimmed."""
    spans = []
    for match in _PARAGRAPH_RUN.finditer(text):
        span = trim_span(text, match.start(), match.end())
        if span is not None:
            spans.append(span)
    return spans


def _line_spans(text: str) -> list[tuple[int, int]]:
    """Return the (start, end) of each non-blank line, whitespace-trimmed."""
    return [(m.start(), m.end()) for m in _LINE_CONTENT.finditer(text)]


def _paragraph_blocks(text: str) -> list[Block]:
    """Return one paragraph block per run of non-blank lines of text."""
    return [Block("paragraph", s, e) for s, e in paragraph_spans(text)]


def _short_line_title(text: str, fallback: str) -> str:
    """Return the first content line if it is short enough to be a title, else the fallback."""
    for match in _LINE_CONTENT.finditer(text):
        line = match.group()
        # An reStructuredText over/underline is not the title.
        if len(set(line)) == 1 and not line[0].isalnum():
            continue
        return line if len(line) < _SHORT_TITLE_CHARS else fallback
    return fallback


# --- plain text -------------------------------------------------------------------------------


def _load_text(path: Path, source: str, data: bytes) -> Document:
    """Return a plain-text document: one paragraph block per blank-line-separated run."""
    text = _decode_text(data)
    return Document(
        source=source,
        title=_short_line_title(text, path.stem),
        text=text,
        media_type=PLAIN,
        blocks=_paragraph_blocks(text),
    )


# --- markdown ---------------------------------------------------------------------------------

_ATX_OPEN = re.compile(r" {0,3}(#{1,6})(?=[ \t]|$)")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_THEMATIC = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|(\d{1,9})[.)])(?:[ \t]+|$)")
_TABLE_ROW = re.compile(r"^ {0,3}\|")
# Values are matched greedily and right-trimmed by the caller: a lazy `(.*?)[ \t]*$` retries the tail at every
# space of a long line.
_FRONT_KEY = re.compile(r"^([A-Za-z_][\w.-]*)[ \t]*:(?:[ \t]+(.*))?$")
_FRONT_ITEM = re.compile(r"^[ \t]+-[ \t]+(.*)$")
_FRONT_END = frozenset({"---", "..."})


def _atx_heading(line: str) -> tuple[int, str] | None:
    """Return the level and title of an ATX heading line ("## Title ##"), or None if it is not one."""
    match = _ATX_OPEN.match(line)
    if match is None:
        return None
    rest = line[match.end() :].lstrip(" \t")
    title = rest.rstrip(" \t")
    # A closing run of '#' counts only after a space; a title is never the closing run alone.
    unclosed = title.rstrip("#")
    if unclosed != title and unclosed.endswith((" ", "\t")):
        title = unclosed.rstrip(" \t")
    return len(match.group(1)), title


@dataclass
class _Line:
    start: int
    end: int
    content: str

    @property
    def blank(self) -> bool:
        return not self.content.strip()


def _split_lines(text: str) -> list[_Line]:
    """Return every line of text with its offsets (newline excluded)."""
    lines = []
    start = 0
    for content in text.split("\n"):
        lines.append(_Line(start, start + len(content), content))
        start += len(content) + 1
    return lines


def _unquote(value: str) -> str:
    """Return a front-matter scalar without its surrounding quotes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _parse_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Return the `key: value` front matter of a markdown file and the body after it."""
    if not text.startswith("---\n"):
        return {}, text
    lines = text.split("\n")
    end = next((i for i in range(1, len(lines)) if lines[i].strip() in _FRONT_END), None)
    if end is None:
        return {}, text
    metadata = _front_matter_fields(lines[1:end])
    if not metadata:
        # A leading thematic break followed by prose, not front matter.
        return {}, text
    return metadata, "\n".join(lines[end + 1 :])


def _front_matter_fields(lines: list[str]) -> dict[str, Any]:
    """Return the fields of front-matter lines, or {} if they are not simple key/value lines."""
    fields: dict[str, Any] = {}
    last_key: str | None = None
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key_match = _FRONT_KEY.match(line)
        item_match = _FRONT_ITEM.match(line)
        if key_match:
            last_key = key_match.group(1)
            value = (key_match.group(2) or "").rstrip(" \t")
            fields[last_key] = _unquote(value) if value else []
        elif item_match and last_key is not None and isinstance(fields[last_key], list):
            fields[last_key].append(_unquote(item_match.group(1).rstrip(" \t")))
        else:
            return {}
    return fields


class _MarkdownParser:
    """A line-based parser for the block structure of markdown."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = _split_lines(text)
        self.blocks: list[Block] = []
        self.headings: list[tuple[int, str]] = []
        self.first_h1: str | None = None
        self._paragraph: list[_Line] = []

    def parse(self) -> list[Block]:
        """Return the blocks of the whole text, in order."""
        i = 0
        while i < len(self.lines):
            i = self._step(i)
        self._flush_paragraph()
        return self.blocks

    def _step(self, i: int) -> int:
        """Consume the construct starting at line i; return the index of the next line."""
        line = self.lines[i]
        content = line.content
        if self._paragraph and _SETEXT.match(content):
            self._setext_heading(line)
            return i + 1
        if line.blank:
            self._flush_paragraph()
            return i + 1
        fence = _FENCE.match(content)
        if fence:
            self._flush_paragraph()
            return self._fenced_code(i, fence.group(1))
        atx = _atx_heading(content)
        if atx:
            self._flush_paragraph()
            self._heading(atx[0], atx[1].strip(), line.start, line.end)
            return i + 1
        if _THEMATIC.match(content):
            # A horizontal rule carries no text worth indexing.
            self._flush_paragraph()
            return i + 1
        if _TABLE_ROW.match(content):
            self._flush_paragraph()
            return self._table(i)
        if self._starts_list(content):
            self._flush_paragraph()
            return self._list(i)
        self._paragraph.append(line)
        return i + 1

    def _starts_list(self, content: str) -> bool:
        """Return whether a line starts a list (an ordered one interrupts a paragraph only at 1)."""
        match = _LIST_ITEM.match(content)
        if match is None:
            return False
        number = match.group(1)
        return not self._paragraph or number is None or int(number) == 1

    def _add(self, kind: BlockKind, start: int, end: int, path: tuple[str, ...]) -> None:
        span = trim_span(self.text, start, end)
        if span is not None:
            self.blocks.append(Block(kind, span[0], span[1], path))

    def _path(self) -> tuple[str, ...]:
        return tuple(title for _, title in self.headings)

    def _heading(self, level: int, title: str, start: int, end: int) -> None:
        while self.headings and self.headings[-1][0] >= level:
            self.headings.pop()
        if not title:
            # An empty heading closes deeper sections but names none.
            return
        title = clip_title(title)
        self.headings.append((level, title))
        if level == 1 and self.first_h1 is None:
            self.first_h1 = title
        self._add("heading", start, end, self._path())

    def _setext_heading(self, underline: _Line) -> None:
        lines, self._paragraph = self._paragraph, []
        title = " ".join(line.content.strip() for line in lines)
        level = 1 if underline.content.strip().startswith("=") else 2
        self._heading(level, title, lines[0].start, underline.end)

    def _flush_paragraph(self) -> None:
        if self._paragraph:
            self._add("paragraph", self._paragraph[0].start, self._paragraph[-1].end, self._path())
            self._paragraph = []

    def _fenced_code(self, i: int, fence: str) -> int:
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        j = i + 1
        while j < len(self.lines) and not closing.match(self.lines[j].content):
            j += 1
        # An unclosed fence runs to the end of the document, as in CommonMark.
        last = min(j, len(self.lines) - 1)
        self._add("code", self.lines[i].start, self.lines[last].end, self._path())
        return last + 1

    def _table(self, i: int) -> int:
        j = i
        while j < len(self.lines) and _TABLE_ROW.match(self.lines[j].content):
            j += 1
        self._add("table", self.lines[i].start, self.lines[j - 1].end, self._path())
        return j

    def _list(self, i: int) -> int:
        last = i
        j = i + 1
        while j < len(self.lines):
            line = self.lines[j]
            if line.blank:
                nxt = self._next_content(j)
                if nxt is None or not self._continues_list_after_blank(self.lines[nxt].content):
                    break
                j = nxt
                continue
            if not self._continues_list(line.content):
                break
            last = j
            j += 1
        self._add("list", self.lines[i].start, self.lines[last].end, self._path())
        return last + 1

    def _next_content(self, j: int) -> int | None:
        while j < len(self.lines) and self.lines[j].blank:
            j += 1
        return j if j < len(self.lines) else None

    @staticmethod
    def _continues_list_after_blank(content: str) -> bool:
        return bool(_LIST_ITEM.match(content)) or content.startswith(("  ", "\t"))

    @staticmethod
    def _continues_list(content: str) -> bool:
        if content.startswith(("  ", "\t")) or _LIST_ITEM.match(content):
            return True
        # A lazy continuation line belongs to the item unless it starts another construct.
        starts_other = _atx_heading(content) or _FENCE.match(content) or _TABLE_ROW.match(content)
        return not starts_other and not _THEMATIC.match(content)


def _load_markdown(path: Path, source: str, data: bytes) -> Document:
    """Return a markdown document with heading, paragraph, code, table and list blocks."""
    metadata, text = _parse_front_matter(_decode_text(data))
    parser = _MarkdownParser(text)
    blocks = parser.parse()
    if not blocks:
        raise _Rejected("no text found")
    declared = metadata.pop("title", None)
    title = declared if isinstance(declared, str) and declared.strip() else parser.first_h1
    return Document(
        source=source,
        title=clip_title((title or path.stem).strip()),
        text=text,
        media_type=MARKDOWN,
        blocks=blocks,
        metadata=metadata,
    )


# --- assembled text (HTML, PDF) ---------------------------------------------------------------


class _TextBuilder:
    """Assembles a document's text from pieces, recording each piece as a block."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.blocks: list[Block] = []

    @property
    def text(self) -> str:
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


# --- HTML -------------------------------------------------------------------------------------

_DROP_SELECTOR = ", ".join(
    (
        *("script", "style", "noscript", "template", "nav", "footer", "aside", "form", "svg", "iframe"),
        *("button", "select", "dialog", "[hidden]", "[role=navigation]", "[role=banner]"),
        *("[role=contentinfo]", "[role=search]", "[role=complementary]"),
    )
)
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_BLOCK_TAGS = frozenset(
    {
        *("address", "article", "blockquote", "body", "caption", "center", "dd", "details", "div", "dl"),
        *("dt", "fieldset", "figcaption", "figure", "header", "hgroup", "hr", "html", "li", "main", "p"),
        *("section", "summary", "td", "th", "tr"),
    }
)
_CONTENT_SECTIONS = frozenset({"article", "main", "section"})
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def _collapse(text: str) -> str:
    """Return text with every whitespace run turned into one space, trimmed."""
    return _WHITESPACE.sub(" ", text).strip()


def _declared_charset(data: bytes) -> str | None:
    """Return the charset an HTML file declares in a meta tag near its start, if any."""
    match = _CHARSET.search(data[:4096])
    if match is None:
        return None
    name = match.group(1).decode("ascii", "replace")
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


_TAG = re.compile(r"<(/?)([A-Za-z][\w:-]*)[^<>]*?(/?)>")
#: Elements that never deepen the tree: void elements, and those the parser closes by itself when the next one
#: opens (an unclosed <p>, <li> or <a> is ordinary HTML, not nesting).
_FLAT_TAGS = frozenset(
    {
        *("area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "img", "input", "keygen"),
        *("link", "meta", "param", "source", "track", "wbr", "p", "li", "dt", "dd", "option", "optgroup", "tr"),
        *("td", "th", "thead", "tbody", "tfoot", "caption", "colgroup", "rb", "rt", "rtc", "rp", "a", "nobr"),
        *("html", "head", "body", "form"),
    }
)
#: Deeper than any real page; the HTML parser's work per tag grows with the depth, so a file of nothing but
#: nested tags would take hours to parse.
MAX_HTML_DEPTH = 1000
_LISTS = frozenset({"ul", "ol"})


def _nesting_depth(text: str, limit: int) -> int:
    """Return how deep the markup of an HTML text nests (an estimate from its tags), counting at most past limit."""
    depth = peak = 0
    for match in _TAG.finditer(text):
        closing, name, self_closing = match.groups()
        if self_closing or name.lower() in _FLAT_TAGS:
            continue
        if closing:
            depth = max(0, depth - 1)
            continue
        depth += 1
        if depth > peak:
            peak = depth
            if peak > limit:
                break
    return peak


def _remove_chrome(tree: Any) -> None:
    """Remove navigation, banners, scripts and other elements that are not content."""
    doomed = {node.mem_id for node in tree.css(_DROP_SELECTOR)}
    headers = {node.mem_id for node in tree.css("header")}
    outermost: list[Any] = []
    # One pass over the tree, never entering a removed subtree: a per-element walk up to the root would cost the
    # depth of the tree for each element.
    stack: list[tuple[Any, bool]] = [(tree.root, False)] if tree.root is not None else []
    while stack:
        node, in_section = stack.pop()
        # A <header> inside an article or section holds its title, not the site banner.
        if node.mem_id in doomed or (node.mem_id in headers and not in_section):
            outermost.append(node)
            continue
        inner = in_section or node.tag in _CONTENT_SECTIONS
        stack.extend((child, inner) for child in _element_children(node))
    # Removing a subtree removes what it holds: only the outermost ones are removed, so no freed node is touched.
    for node in outermost:
        node.decompose()


def _content_root(tree: Any) -> Any:
    """Return the element holding the main content: <main>, a lone <article>, else <body>."""
    main = tree.css_first("main")
    if main is not None:
        return main
    articles = tree.css("article")
    if len(articles) == 1:
        return articles[0]
    return tree.body if tree.body is not None else tree.root


def _inline_text(node: Any, skip: frozenset[str] = frozenset()) -> str:
    """Return the collapsed text of an element, leaving out subtrees whose tag is in skip."""
    parts: list[str] = []
    # An explicit stack, not recursion: nesting is bounded by MAX_HTML_DEPTH, not by Python's recursion limit.
    stack: list[tuple[Iterator[Any], str]] = [(node.iter(include_text=True), "")]
    while stack:
        children, closer = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            parts.append(closer)
        elif child.is_text_node:
            parts.append(child.text(deep=False))
        elif child.tag in skip or child.tag == "-comment":
            continue
        elif child.tag in _BLOCK_TAGS or child.tag == "br":
            # Adjacent blocks must not run their words together.
            parts.append(" ")
            stack.append((child.iter(include_text=True), " "))
        else:
            stack.append((child.iter(include_text=True), ""))
    return _collapse("".join(parts))


def _element_children(node: Any) -> Iterator[Any]:
    return (child for child in node.iter(include_text=False) if child.tag not in ("-text", "-comment"))


@dataclass
class _ListFrame:
    """A list being turned into lines: its remaining items, its indent and its next number."""

    children: Iterator[Any]
    depth: int
    ordered: bool
    number: int


def _list_frame(node: Any, depth: int) -> _ListFrame:
    ordered = node.tag == "ol"
    return _ListFrame(_element_children(node), depth, ordered, _ol_start(node) if ordered else 1)


def _list_lines(node: Any) -> list[str]:
    """Return a list element as `- item` lines (numbered for <ol>), nested lists indented."""
    lines: list[str] = []
    stack = [_list_frame(node, 0)]
    while stack:
        frame = stack[-1]
        child = next(frame.children, None)
        if child is None:
            stack.pop()
            continue
        if child.tag in _LISTS:
            stack.append(_list_frame(child, frame.depth + 1))
            continue
        text = _inline_text(child, skip=_LISTS)
        if text:
            marker = f"{frame.number}." if frame.ordered else "-"
            lines.append(f"{'  ' * frame.depth}{marker} {text}")
            frame.number += 1
        # The item's own sub-lists come before its next sibling: pushed last-first, each is done before the next.
        stack.extend(_list_frame(nested, frame.depth + 1) for nested in reversed(_outer_lists(child)))
    return lines


def _outer_lists(node: Any) -> list[Any]:
    """Return the lists inside an element that are not inside another list of it, in document order."""
    found: list[Any] = []
    stack = list(_element_children(node))[::-1]
    while stack:
        current = stack.pop()
        if current.tag in _LISTS:
            found.append(current)
        else:
            stack.extend(list(_element_children(current))[::-1])
    return found


def _ol_start(node: Any) -> int:
    try:
        return int(node.attributes.get("start") or 1)
    except ValueError:
        return 1


def _table_rows(node: Any) -> Iterator[Any]:
    """Yield a table's own rows (a nested table's rows are part of the cell holding it)."""
    for child in _element_children(node):
        if child.tag == "tr":
            yield child
        elif child.tag in ("thead", "tbody", "tfoot"):
            yield from (row for row in _element_children(child) if row.tag == "tr")


def _table_lines(node: Any) -> list[str]:
    """Return a table as lines of cells joined with ' | '."""
    lines = []
    caption = next((child for child in _element_children(node) if child.tag == "caption"), None)
    if caption is not None and _inline_text(caption):
        lines.append(_inline_text(caption))
    for row in _table_rows(node):
        cells = [_inline_text(cell) for cell in _element_children(row) if cell.tag in ("td", "th")]
        if any(cells):
            lines.append(" | ".join(cells))
    return lines


class _HtmlWalker:
    """Walks the content element in document order, emitting blocks into a builder."""

    def __init__(self) -> None:
        self.builder = _TextBuilder()
        self.headings: list[tuple[int, str]] = []
        self._inline: list[str] = []

    def _path(self) -> tuple[str, ...]:
        return tuple(title for _, title in self.headings)

    def flush(self) -> None:
        """Emit the pending inline text as a paragraph."""
        text = _collapse("".join(self._inline))
        self._inline = []
        if text:
            self.builder.add(text, "paragraph", self._path())

    def walk(self, node: Any) -> None:
        """Emit the blocks of every child of a node."""
        # (children left, whether leaving the element ends a paragraph); a stack, not recursion, as in _inline_text.
        stack: list[tuple[Iterator[Any], bool]] = [(node.iter(include_text=True), False)]
        while stack:
            children, is_block = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                if is_block:
                    self.flush()
            elif child.is_text_node:
                self._inline.append(child.text(deep=False))
            elif child.tag == "br":
                self._inline.append(" ")
            elif child.tag in _HEADINGS:
                self.flush()
                self._heading(int(child.tag[1]), _inline_text(child))
            elif child.tag == "pre":
                self.flush()
                self.builder.add(child.text(deep=True).strip("\n").rstrip(), "code", self._path())
            elif child.tag == "table":
                self.flush()
                self.builder.add("\n".join(_table_lines(child)), "table", self._path())
            elif child.tag in _LISTS:
                self.flush()
                self.builder.add("\n".join(_list_lines(child)), "list", self._path())
            elif child.tag in _BLOCK_TAGS:
                self.flush()
                stack.append((child.iter(include_text=True), True))
            elif child.tag != "-comment":
                stack.append((child.iter(include_text=True), False))

    def _heading(self, level: int, title: str) -> None:
        while self.headings and self.headings[-1][0] >= level:
            self.headings.pop()
        if title:
            self.headings.append((level, clip_title(title)))
            self.builder.add(title, "heading", self._path())


def _first_text(tree: Any, selector: str) -> str:
    """Return the text of the first element matching a selector, or ''."""
    node = tree.css_first(selector)
    return "" if node is None else _inline_text(node)


def _load_html(path: Path, source: str, data: bytes) -> Document:
    """Return the main content of an HTML page, without navigation and other chrome."""
    from selectolax.lexbor import LexborHTMLParser

    text = _decode_text(data, fallback_encoding=_declared_charset(data))
    if _nesting_depth(text, MAX_HTML_DEPTH) > MAX_HTML_DEPTH:
        raise _Rejected(f"HTML nested too deeply (over {MAX_HTML_DEPTH} levels of elements)")
    tree = LexborHTMLParser(text)
    declared_title = _first_text(tree, "title")
    _remove_chrome(tree)
    walker = _HtmlWalker()
    walker.walk(_content_root(tree))
    walker.flush()
    if not walker.builder.blocks:
        raise _Rejected("no text found")
    return Document(
        source=source,
        # The first <h1> is looked for only once a site banner's cannot be it.
        title=clip_title(declared_title or _first_text(tree, "h1") or path.stem),
        text=walker.builder.text,
        media_type=HTML,
        blocks=walker.builder.blocks,
    )


# --- PDF --------------------------------------------------------------------------------------


def _open_pdf(data: bytes) -> Any:
    """Return a pypdf reader for the bytes, decrypted if it has an empty user password."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
    except Exception as error:
        raise _Rejected(f"not a readable PDF: {_one_line(error)}") from None
    if reader.is_encrypted:
        try:
            # Many PDFs are encrypted only to restrict printing, with an empty user password.
            decrypted = reader.decrypt("")
        except Exception as error:
            raise _Rejected(f"encrypted PDF, cannot decrypt: {_one_line(error)}") from None
        if not decrypted:
            raise _Rejected("encrypted PDF: a password is required")
    return reader


def _page_text(page: Any) -> str:
    """Return a page's extracted text, normalised; '' when it has none or extraction fails."""
    try:
        raw = page.extract_text() or ""
    except Exception:
        # One broken page should not cost the rest of the document.
        return ""
    return normalise_newlines(raw.replace("\x00", "")).strip()


def _page_spans(page_text: str) -> list[tuple[int, int]]:
    """Return a page's paragraphs, or its lines when it has no blank-line paragraph breaks."""
    paragraphs = paragraph_spans(page_text)
    return paragraphs if len(paragraphs) > 1 else _line_spans(page_text)


def _pdf_title(reader: Any, text: str, stem: str) -> str:
    """Return the PDF's metadata title, else its first line if short, else the file stem."""
    try:
        declared = reader.metadata.title if reader.metadata is not None else None
    except Exception:
        declared = None
    if declared is not None and str(declared).strip():
        return clip_title(_collapse(str(declared)))
    return _short_line_title(text, stem)


def _load_pdf(path: Path, source: str, data: bytes) -> Document:
    """Return a PDF's text layer, one paragraph block per page paragraph, with page numbers."""
    reader = _open_pdf(data)
    builder = _TextBuilder()
    try:
        pages = list(reader.pages)
    except Exception as error:
        raise _Rejected(f"not a readable PDF: {_one_line(error)}") from None
    for number, page in enumerate(pages, start=1):
        page_text = _page_text(page)
        if page_text:
            builder.add_page(page_text, _page_spans(page_text), number)
    if not builder.blocks:
        raise _Rejected("no extractable text (scanned PDF?)")
    text = builder.text
    return Document(
        source=source,
        title=_pdf_title(reader, text, path.stem),
        text=text,
        media_type=PDF,
        blocks=builder.blocks,
    )


_LOADERS: dict[str, Callable[[Path, str, bytes], Document]] = {
    MARKDOWN: _load_markdown,
    PLAIN: _load_text,
    HTML: _load_html,
    PDF: _load_pdf,
}


# --- JSONL ------------------------------------------------------------------------------------

_READ_CHUNK = 1024 * 1024
MAX_ID_CHARS = 1000
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read_lines(handle: BinaryIO, limit: int | None) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, line bytes), or None for a line over the limit, never holding one in full."""
    lineno = 0
    while True:
        lineno += 1
        # Room for the limit plus a CRLF, so a record exactly at the limit is read whole.
        line = handle.readline(-1 if limit is None else limit + 2)
        if not line:
            return
        if limit is not None and len(line.rstrip(b"\r\n")) > limit:
            # Skip the rest of the oversized line in bounded pieces.
            while not line.endswith(b"\n"):
                line = handle.readline(_READ_CHUNK)
                if not line:
                    break
            yield lineno, None
            continue
        yield lineno, line


def iter_jsonl(path: Path, *, max_record_bytes: int | None = None) -> Iterator[Document | Skipped]:
    """Yield a Document per valid line of a JSONL file and a Skipped per bad line, streaming."""
    source = source_for(path)
    try:
        # Opening a FIFO for reading would wait for a writer forever.
        if not stat.S_ISREG(path.stat().st_mode):
            yield Skipped(source, "not a regular file")
            return
        handle = path.open("rb")
    except OSError as error:
        yield Skipped(source, f"cannot read: {error.strerror or error}")
        return
    with handle:
        try:
            head = handle.read(_SNIFF_BYTES)
        except OSError as error:
            yield Skipped(source, f"cannot read: {error.strerror or error}")
            return
        wide = _wide_encoding(head)
        if wide is not None:
            yield Skipped(source, f"{wide.upper()} text: JSONL must be UTF-8")
            return
        if _binary_head(head):
            yield Skipped(source, "binary content, not text")
            return
        handle.seek(0)
        yield from _jsonl_records(handle, source, max_record_bytes)


def _binary_head(head: bytes) -> bool:
    """Return whether the start of a JSONL file is binary: a NUL byte on most of its lines (UTF-16 text,
    compressed data), not one bad line among good records (that line alone is skipped)."""
    if b"\x00" not in head:
        return False
    lines = [line for line in head.split(b"\n") if line.strip()]
    return 2 * sum(1 for line in lines if b"\x00" in line) > len(lines)


def _jsonl_records(handle: BinaryIO, source: str, limit: int | None) -> Iterator[Document | Skipped]:
    """Yield the documents and skips of an open JSONL file."""
    first_seen: dict[str, int] = {}
    any_content = False
    for lineno, raw in _read_lines(handle, limit):
        if raw is None:
            any_content = True
            reason = f"line {lineno}: record too large (over the {_human_size(limit or 0)} limit)"
            yield Skipped(f"{source}:{lineno}", reason)
            continue
        if lineno == 1:
            raw = raw.removeprefix(_UTF8_BOM)
        if not raw.strip():
            continue
        any_content = True
        item = _jsonl_record(raw, source, lineno, first_seen)
        yield item
    if not any_content:
        yield Skipped(source, "empty file")


def _jsonl_record(raw: bytes, source: str, lineno: int, first_seen: dict[str, int]) -> Document | Skipped:
    """Return the document of one JSONL line, or why it was skipped."""
    try:
        record = _parse_record(raw)
        record_id, id_key = _record_id(record)
        if record_id in first_seen:
            raise _Rejected(f"duplicate id {record_id}, first seen on line {first_seen[record_id]}")
        document = _record_document(record, record_id, id_key, source)
    except _Rejected as rejected:
        return Skipped(f"{source}:{lineno}", f"line {lineno}: {rejected}")
    first_seen[record_id] = lineno
    return document


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _parse_record(raw: bytes) -> dict[str, Any]:
    """Return the JSON object on a line, or reject it."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise _Rejected(f"binary content, not text (NUL byte at column {nul + 1})")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Rejected(f"not valid UTF-8: {_bad_byte(error)} at column {error.start + 1}") from None
    try:
        record = json.loads(line, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise _Rejected(f"invalid JSON ({error.msg} at column {error.colno})") from None
    except (ValueError, RecursionError) as error:
        raise _Rejected(f"invalid JSON ({_one_line(error)})") from None
    if not isinstance(record, dict):
        raise _Rejected(f"not a JSON object (got {_json_type(record)})")
    if _SURROGATE_ESCAPE.search(line):
        _check_unicode(record)
    return record


def _check_unicode(record: dict[str, Any]) -> None:
    """Reject a record holding a lone surrogate (a "\\ud800" escape JSON allows): it is no text, and nothing
    downstream (hashing, the store, JSON output) can encode it."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        bad = ord(error.object[error.start])
        raise _Rejected(f"not valid Unicode: unpaired surrogate \\u{bad:04x}") from None
    except (ValueError, RecursionError) as error:
        raise _Rejected(f"invalid JSON ({_one_line(error)})") from None


def _record_id(record: dict[str, Any]) -> tuple[str, str]:
    """Return a record's id as a string and the field it came from."""
    id_key = "_id" if record.get("_id") is not None else "id"
    value = record.get(id_key)
    if value is None or value == "":
        raise _Rejected("missing 'id' (or '_id')")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Rejected(f"'{id_key}' must be a string or an integer (got {_json_type(value)})")
    record_id = str(value)
    # The id is part of the source, repeated in every chunk's search hit.
    if len(record_id) > MAX_ID_CHARS:
        raise _Rejected(f"'{id_key}' is too long ({len(record_id)} characters, at most {MAX_ID_CHARS})")
    return record_id, id_key


def _record_document(record: dict[str, Any], record_id: str, id_key: str, source: str) -> Document:
    """Return the document of a parsed JSONL record."""
    text = record.get("text")
    if text is None:
        raise _Rejected("missing 'text'")
    if not isinstance(text, str):
        raise _Rejected(f"'text' is not a string (got {_json_type(text)})")
    text = normalise_newlines(text)
    if not text.strip():
        raise _Rejected("empty 'text'")
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        raise _Rejected(f"'title' is not a string (got {_json_type(title)})")
    metadata = {k: v for k, v in record.items() if k not in (id_key, "title", "text")}
    return Document(
        source=f"{source}#{record_id}",
        title=clip_title((title or "").strip() or record_id),
        text=text,
        media_type=JSONL,
        blocks=_paragraph_blocks(text),
        metadata=metadata,
    )
