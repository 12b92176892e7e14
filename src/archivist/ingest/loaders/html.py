"""HTML (`.html`, `.htm`): the page's main content (headings, paragraphs, lists, `<pre>`, tables), without
navigation and other chrome. The parser, selectolax, is imported only when a page is read."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from archivist.ingest.loaders.blocks import TextBuilder, clip_title, collapse
from archivist.ingest.loaders.decode import decode_text
from archivist.ingest.loaders.reasons import Rejected, missing_library
from archivist.ingest.loaders.registry import register_loader
from archivist.ingest.loaders.source import SourceFile
from archivist.types import Document

HTML = "text/html"


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
    return collapse("".join(parts))


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
        self.builder = TextBuilder()
        self.headings: list[tuple[int, str]] = []
        self._inline: list[str] = []

    def _path(self) -> tuple[str, ...]:
        return tuple(title for _, title in self.headings)

    def flush(self) -> None:
        """Emit the pending inline text as a paragraph."""
        text = collapse("".join(self._inline))
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


def load_html(file: SourceFile) -> Document:
    """Return the main content of an HTML page, without navigation and other chrome."""
    data = file.read_bytes()
    try:
        from selectolax.lexbor import LexborHTMLParser
    except ImportError as error:
        raise missing_library("selectolax", "HTML files") from error
    text = decode_text(data, fallback_encoding=_declared_charset(data))
    if _nesting_depth(text, MAX_HTML_DEPTH) > MAX_HTML_DEPTH:
        raise Rejected(f"HTML nested too deeply (over {MAX_HTML_DEPTH} levels of elements)")
    tree = LexborHTMLParser(text)
    declared_title = _first_text(tree, "title")
    _remove_chrome(tree)
    walker = _HtmlWalker()
    walker.walk(_content_root(tree))
    walker.flush()
    if not walker.builder.blocks:
        raise Rejected("no text found")
    return Document(
        source=file.source,
        # The first <h1> is looked for only once a site banner's cannot be it.
        title=clip_title(declared_title or _first_text(tree, "h1") or file.path.stem),
        text=walker.builder.text,
        media_type=file.media_type,
        blocks=walker.builder.blocks,
    )


register_loader((".html", ".htm"), load_html, media_type=HTML)
