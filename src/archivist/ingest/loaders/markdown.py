"""Markdown (`.md`, `.markdown`): headings, paragraphs, lists, fenced code and tables as blocks; front matter
becomes metadata."""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Any

import yaml

from archivist.ingest.loaders.blocks import clip_title
from archivist.ingest.loaders.reasons import Rejected, one_line
from archivist.ingest.loaders.registry import register_loader
from archivist.ingest.loaders.source import SourceFile
from archivist.ingest.spans import trim_span
from archivist.types import Block, BlockKind, Document

MARKDOWN = "text/markdown"

log = logging.getLogger(__name__)


_ATX_OPEN = re.compile(r" {0,3}(#{1,6})(?=[ \t]|$)")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_THEMATIC = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|(\d{1,9})[.)])(?:[ \t]+|$)")
_TABLE_ROW = re.compile(r"^ {0,3}\|")
#: a front-matter line that starts a mapping key: YAML that fails to parse is front matter gone wrong only when a line
#: looks like one (otherwise it is a thematic break followed by prose)
_FRONT_KEY = re.compile(r"[A-Za-z_][\w.-]*[ \t]*:(?:[ \t]|$)")
_FRONT_END = frozenset({"---", "..."})
#: the most values (mappings, lists and scalars, nested ones included) front matter may hold
MAX_FRONT_MATTER_VALUES = 10_000
#: where front matter that could not be read says why: a warning on the document, shown with its metadata
FRONT_MATTER_ERROR = "front_matter_error"
# libyaml's safe loader when PyYAML was built with it (about 10x faster), else the pure-Python one.
# Scalars stay the text the author wrote (as before YAML was parsed): YAML 1.1's typing would turn `country: NO`
# into false, `version: 1.10` into 1.1 and `.nan` into a float JSON cannot store, and filters compare text anyway.
# Lists and mappings are kept. The base loader builds no Python objects: it is safe loading too.
_SAFE_LOADER: type[yaml.BaseLoader] = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


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


def _parse_front_matter(text: str) -> tuple[dict[str, Any], str, str | None]:
    """Return the YAML front matter of a markdown file as metadata, the body after it, and why the front matter was
    left out (None when it was read, or when there is none)."""
    if not text.startswith("---\n"):
        return {}, text, None
    lines = text.split("\n")
    end = next((i for i in range(1, len(lines)) if lines[i].strip() in _FRONT_END), None)
    if end is None:
        return {}, text, None
    header, body = lines[1:end], "\n".join(lines[end + 1 :])
    try:
        loaded = yaml.load("\n".join(header), Loader=_SAFE_LOADER)  # safe loading: plain data, no Python objects
        metadata = _json_ready(loaded, [MAX_FRONT_MATTER_VALUES]) if isinstance(loaded, dict) else None
    except yaml.YAMLError as exc:
        if not any(_FRONT_KEY.match(line) for line in header if line.strip()):
            return {}, text, None  # a leading thematic break followed by prose, not front matter
        return {}, body, f"front matter is not valid YAML, so it was left out: {_yaml_problem(exc)}"
    except _TooBig:  # aliases can make a few lines expand to billions of values
        return {}, body, f"front matter has more than {MAX_FRONT_MATTER_VALUES} values, so it was left out"
    except RecursionError:
        return {}, body, "front matter nests too deeply, so it was left out"
    if isinstance(loaded, list):
        return {}, body, "front matter is a list, not a mapping of keys to values, so it was left out"
    if not metadata:
        # A leading thematic break followed by prose (YAML reads it as one string), not front matter.
        return {}, text, None
    return metadata, body, None


class _TooBig(Exception):
    """Front matter expands to more values than `MAX_FRONT_MATTER_VALUES`."""


def _json_ready(value: Any, budget: list[int]) -> Any:
    """Return a YAML value as JSON can store it: dates as ISO text, keys as text, sets as sorted lists.

    `budget` holds how many more values may be read: YAML aliases can make a few lines expand to billions of values.
    """
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig
    if isinstance(value, dict):
        return {str(k): _json_ready(v, budget) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v, budget) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_json_ready(v, budget) for v in value), key=str)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Return a YAML error as one line naming the file line it is on (the front matter starts on line 2)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 2}, column {mark.column + 1})"
    return one_line(exc)


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


def load_markdown(file: SourceFile) -> Document:
    """Return a markdown document with heading, paragraph, code, table and list blocks."""
    metadata, text, problem = _parse_front_matter(file.read_text())
    if problem is not None:
        # Documents carry no warnings of their own: the warning is logged and kept in the metadata, where the
        # document's listing shows it; the body is ingested without the front matter.
        log.warning("%s: %s", file.source, problem)
        metadata[FRONT_MATTER_ERROR] = problem
    parser = _MarkdownParser(text)
    blocks = parser.parse()
    if not blocks:
        raise Rejected("no text found")
    declared = metadata.pop("title", None)
    title = declared if isinstance(declared, str) and declared.strip() else parser.first_h1
    return Document(
        source=file.source,
        title=clip_title((title or file.path.stem).strip()),
        text=text,
        media_type=file.media_type,
        blocks=blocks,
        metadata=metadata,
    )


register_loader((".md", ".markdown"), load_markdown, media_type=MARKDOWN)
