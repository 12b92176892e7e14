"""Loaders: what users get out of their files, and the one-line reasons when they get nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fpdf import FPDF
from fpdf.enums import EncryptionMethod

from archivist.ingest.loaders import (
    LoadResult,
    iter_jsonl,
    load_path,
    source_for,
    supported_suffixes,
)
from archivist.types import Document, Skipped

LIMIT = 50 * 1024 * 1024


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Sources are relative to the cwd: run every test from its own folder.
    monkeypatch.chdir(tmp_path)


def write(name: str, content: str | bytes) -> Path:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def assert_valid_blocks(doc: Document) -> None:
    previous_end = 0
    for block in doc.blocks:
        assert 0 <= block.start < block.end <= len(doc.text)
        assert doc.text[block.start : block.end].strip()
        assert block.start >= previous_end, "blocks overlap or are out of order"
        previous_end = block.end


def load_one(path: Path) -> Document:
    result = load_path(path, max_file_bytes=LIMIT)
    assert result.skipped == []
    assert len(result.documents) == 1
    doc = result.documents[0]
    assert_valid_blocks(doc)
    return doc


def skip_reason(path: Path, limit: int = LIMIT) -> str:
    result = load_path(path, max_file_bytes=limit)
    assert result.documents == []
    assert len(result.skipped) == 1
    return result.skipped[0].reason


def block_texts(doc: Document, kind: str | None = None) -> list[str]:
    return [doc.text[b.start : b.end] for b in doc.blocks if kind is None or b.kind == kind]


# --- sources -------------------------------------------------------------------------------------


def test_source_is_relative_under_cwd_and_absolute_elsewhere(tmp_path: Path) -> None:
    inside = write("docs/sub/a.md", "# A\n")
    assert source_for(inside) == "docs/sub/a.md"
    assert source_for(tmp_path / "docs" / "sub" / ".." / "sub" / "a.md") == "docs/sub/a.md"
    outside = tmp_path.parent / "elsewhere.md"
    assert source_for(outside) == outside.as_posix()
    assert os.path.isabs(source_for(outside))


def test_supported_suffixes() -> None:
    assert {".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".jsonl", ".ndjson"} <= supported_suffixes()


# --- markdown ------------------------------------------------------------------------------------

MARKDOWN = """\
# Guide

Intro paragraph.

## Install

Run the installer.

```bash
# not a heading: inside a fence

pip install archivist
```

### Options
Some options:

- one
- two
  continued
* three

| flag | meaning |
|------|---------|
| -v   | verbose |

Setext Section
--------------

Under setext.

# Appendix

Last words.
"""


def test_markdown_headings_give_heading_paths() -> None:
    doc = load_one(write("guide.md", MARKDOWN))
    assert doc.title == "Guide"
    assert doc.media_type == "text/markdown"
    paths = {doc.text[b.start : b.end]: b.heading_path for b in doc.blocks}
    assert paths["# Guide"] == ("Guide",)
    assert paths["Intro paragraph."] == ("Guide",)
    assert paths["Run the installer."] == ("Guide", "Install")
    assert paths["Some options:"] == ("Guide", "Install", "Options")
    assert paths["Under setext."] == ("Guide", "Setext Section")
    assert paths["Last words."] == ("Appendix",)
    headings = block_texts(doc, "heading")
    assert headings == ["# Guide", "## Install", "### Options", "Setext Section\n--------------", "# Appendix"]


def test_markdown_code_fence_table_and_list_are_one_block_each() -> None:
    doc = load_one(write("guide.md", MARKDOWN))
    [code] = block_texts(doc, "code")
    assert code.startswith("```bash") and code.endswith("```")
    assert "# not a heading" in code and "pip install archivist" in code
    [table] = block_texts(doc, "table")
    assert table.splitlines() == ["| flag | meaning |", "|------|---------|", "| -v   | verbose |"]
    [listing] = block_texts(doc, "list")
    assert listing == "- one\n- two\n  continued\n* three"


def test_markdown_front_matter_sets_title_and_metadata() -> None:
    text = '---\ntitle: "Real Title"\nauthor: Ada\ntags:\n  - x\n  - y\n---\n# Heading\n\nBody.\n'
    doc = load_one(write("fm.md", text))
    assert doc.title == "Real Title"
    assert doc.metadata == {"author": "Ada", "tags": ["x", "y"]}
    assert "author" not in doc.text
    assert block_texts(doc) == ["# Heading", "Body."]


def test_markdown_without_h1_is_titled_by_file_stem() -> None:
    doc = load_one(write("release-notes.md", "## Changes\n\nFixed things.\n"))
    assert doc.title == "release-notes"


def test_markdown_unclosed_fence_runs_to_the_end() -> None:
    doc = load_one(write("u.md", "Text.\n\n~~~\ncode\n\n# still code\n"))
    assert block_texts(doc, "code") == ["~~~\ncode\n\n# still code"]
    assert block_texts(doc, "heading") == []


# --- plain text ----------------------------------------------------------------------------------


def test_text_paragraphs_and_title() -> None:
    doc = load_one(write("notes.txt", "Meeting notes\n\nFirst point\nspans lines.\n\n\n  Second point.  \n"))
    assert doc.title == "Meeting notes"
    assert doc.media_type == "text/plain"
    assert block_texts(doc) == ["Meeting notes", "First point\nspans lines.", "Second point."]
    assert all(b.kind == "paragraph" and b.heading_path == () for b in doc.blocks)


def test_text_with_long_first_line_is_titled_by_stem() -> None:
    doc = load_one(write("essay.txt", "word " * 40 + "\n\nmore"))
    assert doc.title == "essay"


def test_crlf_and_bom_are_normalised() -> None:
    doc = load_one(write("win.txt", b"\xef\xbb\xbfTitle\r\n\r\nBody line\r\nnext\r\n"))
    assert doc.text == "Title\n\nBody line\nnext\n"
    assert doc.title == "Title"


# --- HTML ----------------------------------------------------------------------------------------

HTML_PAGE = """<!doctype html>
<html><head><title>Widget Manual</title><style>.secret-style { color: red }</style>
<script>var secretScript = 1;</script></head>
<body>
<header class="site"><a href="/">SiteBanner</a> Login</header>
<nav><ul><li>NavHome</li><li>NavAbout</li></ul></nav>
<div role="navigation">RoleNavLinks</div>
<main>
  <article>
    <header><h1>Using   Widgets</h1></header>
    <p>Widgets   are
       <b>useful</b> things.</p>
    <h2>Setup</h2>
    <p>Plug it in.</p>
    <pre>def setup():
    return  True</pre>
    <table><tr><th>Name</th><th>Value</th></tr><tr><td>size</td><td>3</td></tr></table>
    <ul><li>first</li><li>second<ul><li>nested</li></ul></li></ul>
    <aside>AsideAdvert</aside>
    <form><label>FormLabel</label></form>
  </article>
</main>
<footer>FooterCopyright</footer>
<noscript>NoscriptText</noscript>
</body></html>
"""


def test_html_keeps_main_content_and_drops_chrome() -> None:
    doc = load_one(write("manual.html", HTML_PAGE))
    assert doc.title == "Widget Manual"
    assert doc.media_type == "text/html"
    for chrome in (
        "SiteBanner",
        "NavHome",
        "RoleNavLinks",
        "FooterCopyright",
        "secretScript",
        "secret-style",
        "AsideAdvert",
        "FormLabel",
        "NoscriptText",
    ):
        assert chrome not in doc.text
    assert "Widgets are useful things." in doc.text
    assert "Plug it in." in doc.text


def test_html_structure_becomes_blocks() -> None:
    doc = load_one(write("manual.htm", HTML_PAGE))
    kinds = [(b.kind, doc.text[b.start : b.end], b.heading_path) for b in doc.blocks]
    assert kinds == [
        ("heading", "Using Widgets", ("Using Widgets",)),
        ("paragraph", "Widgets are useful things.", ("Using Widgets",)),
        ("heading", "Setup", ("Using Widgets", "Setup")),
        ("paragraph", "Plug it in.", ("Using Widgets", "Setup")),
        ("code", "def setup():\n    return  True", ("Using Widgets", "Setup")),
        ("table", "Name | Value\nsize | 3", ("Using Widgets", "Setup")),
        ("list", "- first\n- second\n  - nested", ("Using Widgets", "Setup")),
    ]


def test_html_without_main_uses_body_and_mixed_div_text() -> None:
    page = "<html><body><nav>Menu</nav><div>Loose text <i>here</i><p>A paragraph.</p>tail</div></body></html>"
    doc = load_one(write("plain.html", page))
    assert block_texts(doc) == ["Loose text here", "A paragraph.", "tail"]
    assert doc.title == "plain"


def test_html_without_title_is_titled_by_its_first_content_h1() -> None:
    page = "<body><header><h1>Site Name</h1></header><article><h1>Post</h1><p>Body.</p></article></body>"
    assert load_one(write("post.html", page)).title == "Post"


def test_html_with_only_navigation_is_skipped() -> None:
    page = "<html><body><nav><a href='/'>Home</a></nav><footer>(c) 2024</footer></body></html>"
    assert skip_reason(write("empty.html", page)) == "no text found"


def test_html_declared_legacy_charset_is_honoured() -> None:
    page = '<html><head><meta charset="windows-1252"></head><body><p>Caf\xe9 cr\xe8me</p></body></html>'
    doc = load_one(write("legacy.html", page.encode("cp1252")))
    assert "Café crème" in doc.text


# --- PDF -----------------------------------------------------------------------------------------


def make_pdf(path: Path, pages: list[str], title: str | None = None) -> Path:
    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def test_pdf_blocks_keep_their_page_numbers() -> None:
    words = ["alpha", "bravo", "charlie"]
    pages = [f"Page {n} talks about {w}. " * 6 + f"\n\nClosing note on {w}." for n, w in enumerate(words, 1)]
    doc = load_one(make_pdf(Path("three.pdf"), pages, title="Three Pages"))
    assert doc.title == "Three Pages"
    assert doc.media_type == "application/pdf"
    assert {b.page for b in doc.blocks} == {1, 2, 3}
    for block in doc.blocks:
        text = doc.text[block.start : block.end]
        others = [w for n, w in enumerate(words, 1) if n != block.page]
        assert not any(other in text for other in others), "a block crosses a page"
    assert [b.page for b in doc.blocks] == sorted(b.page or 0 for b in doc.blocks)


def test_pdf_title_falls_back_to_first_line() -> None:
    doc = load_one(make_pdf(Path("report.pdf"), ["Quarterly Report\nNumbers went up."]))
    assert doc.title == "Quarterly Report"


def test_pdf_without_text_layer_is_skipped() -> None:
    assert skip_reason(make_pdf(Path("scan.pdf"), [""])) == "no extractable text (scanned PDF?)"


def test_corrupt_pdf_is_skipped() -> None:
    reason = skip_reason(write("broken.pdf", b"%PDF-1.4\nthis is not really a pdf\n"))
    assert reason.startswith("not a readable PDF")


def test_password_protected_pdf_is_skipped() -> None:
    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="secret", encryption_method=EncryptionMethod.RC4)
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(0, 10, "classified")
    pdf.output("locked.pdf")
    assert skip_reason(Path("locked.pdf")) == "encrypted PDF: a password is required"


def test_pdf_encrypted_with_empty_password_loads() -> None:
    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="", encryption_method=EncryptionMethod.RC4)
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(0, 10, "printable but not editable")
    pdf.output("restricted.pdf")
    assert "printable but not editable" in load_one(Path("restricted.pdf")).text


# --- JSONL ---------------------------------------------------------------------------------------


def jsonl(*lines: object) -> str:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


def test_jsonl_records_become_documents() -> None:
    path = write(
        "corpus.jsonl",
        jsonl(
            {"_id": "a1", "title": "First", "text": "Alpha text.", "year": 2020, "tags": ["x"]},
            {"id": 7, "text": "Para one.\n\nPara two."},
        ),
    )
    first, second = [d for d in iter_jsonl(path) if isinstance(d, Document)]
    assert first.source == "corpus.jsonl#a1"
    assert first.title == "First"
    assert first.metadata == {"year": 2020, "tags": ["x"]}
    assert first.media_type == "application/jsonl"
    assert second.source == "corpus.jsonl#7"
    assert second.title == "7", "an untitled record is shown by its id"
    assert block_texts(second) == ["Para one.", "Para two."]
    assert_valid_blocks(first)
    assert_valid_blocks(second)


def test_jsonl_prefers_underscore_id_and_keeps_the_other_as_metadata() -> None:
    path = write("c.ndjson", jsonl({"_id": "u", "id": "plain", "text": "t"}))
    [doc] = load_path(path, max_file_bytes=LIMIT).documents
    assert doc.source == "c.ndjson#u"
    assert doc.metadata == {"id": "plain"}


def test_jsonl_bad_lines_are_skipped_with_their_line_numbers() -> None:
    path = write(
        "mixed.jsonl",
        jsonl(
            {"_id": "1", "text": "good one"},
            '{"_id": "2", "text": "missing brace"',
            "",
            "[1, 2]",
            {"title": "no id", "text": "x"},
            {"_id": "6"},
            {"_id": "7", "text": 42},
            {"_id": "1", "text": "again"},
            {"_id": "9", "text": "good two"},
        ),
    )
    items = list(iter_jsonl(path))
    docs = [i for i in items if isinstance(i, Document)]
    skipped = {s.source: s.reason for s in items if isinstance(s, Skipped)}
    assert [d.source for d in docs] == ["mixed.jsonl#1", "mixed.jsonl#9"]
    assert skipped["mixed.jsonl:2"].startswith("line 2: invalid JSON (")
    assert "at column" in skipped["mixed.jsonl:2"]
    assert "mixed.jsonl:3" not in skipped, "blank lines are ignored"
    assert skipped["mixed.jsonl:4"] == "line 4: not a JSON object (got array)"
    assert skipped["mixed.jsonl:5"] == "line 5: missing 'id' (or '_id')"
    assert skipped["mixed.jsonl:6"] == "line 6: missing 'text'"
    assert skipped["mixed.jsonl:7"] == "line 7: 'text' is not a string (got number)"
    assert skipped["mixed.jsonl:8"] == "line 8: duplicate id 1, first seen on line 1"
    assert len(skipped) == 6


def test_jsonl_size_limit_applies_per_record() -> None:
    path = write("big.jsonl", jsonl({"_id": "s", "text": "small"}, {"_id": "b", "text": "x" * 5000}))
    result = load_path(path, max_file_bytes=1000)
    assert [d.source for d in result.documents] == ["big.jsonl#s"]
    assert [(s.source, s.reason) for s in result.skipped] == [
        ("big.jsonl:2", "line 2: record too large (over the 1000 bytes limit)")
    ]


def test_jsonl_record_at_the_limit_loads_and_line_numbers_stay_right() -> None:
    record = json.dumps({"_id": "edge", "text": "y"}).encode()
    path = write("edge.jsonl", record + b"\r\n" + b"{bad}\r\n")
    items = list(iter_jsonl(path, max_record_bytes=len(record)))
    assert isinstance(items[0], Document) and items[0].source == "edge.jsonl#edge"
    assert isinstance(items[1], Skipped) and items[1].source == "edge.jsonl:2"
    assert len(items) == 2


def test_jsonl_invalid_utf8_line_and_bom() -> None:
    good = json.dumps({"_id": "a", "text": "ok"}).encode()
    path = write("enc.jsonl", b"\xef\xbb\xbf" + good + b"\r\n" + b'{"_id": "b", "text": "\xff"}\n')
    items = list(iter_jsonl(path))
    assert isinstance(items[0], Document) and items[0].text == "ok"
    assert isinstance(items[1], Skipped)
    assert items[1].reason == "line 2: not valid UTF-8: byte 0xff at column 23"


def test_empty_jsonl_is_skipped() -> None:
    assert skip_reason(write("none.jsonl", "\n\n")) == "empty file"


# --- bad input -----------------------------------------------------------------------------------


def test_unsupported_extension() -> None:
    reason = skip_reason(write("data.xyz", "hello"))
    assert reason.startswith("unsupported file type '.xyz' (supported: ")
    assert ".md" in reason and ".pdf" in reason


def test_binary_text_file() -> None:
    assert skip_reason(write("blob.txt", b"abc\x00\x01\x02def")) == "binary content, not text"


def test_invalid_utf8() -> None:
    reason = skip_reason(write("latin.md", b"# Title\n\ncaf\xe9 au lait\n"))
    assert reason == "not valid UTF-8: byte 0xe9 at offset 12"


@pytest.mark.parametrize("content", [b"", b"   \n\t\n", b"\xef\xbb\xbf\n"])
def test_empty_files(content: bytes) -> None:
    assert skip_reason(write("blank.txt", content)) == "empty file"


def test_oversized_file_is_rejected_before_reading() -> None:
    path = Path("huge.txt")
    with path.open("wb") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: costs no disk
    assert skip_reason(path) == "too large: 200.0 MB exceeds the 50.0 MB limit (ARCHIVIST_MAX_FILE_MB)"


def test_unreadable_file(monkeypatch: pytest.MonkeyPatch) -> None:
    path = write("secret.md", "# Secret\n")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Root reads any file whatever its mode: make the OS refusal happen another way.
        def refuse(self: Path) -> bytes:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "read_bytes", refuse)
    path.chmod(0)
    try:
        assert skip_reason(path) == "cannot read: Permission denied"
    finally:
        path.chmod(0o600)


def test_missing_file_and_directory() -> None:
    assert skip_reason(Path("nowhere.md")) == "cannot read: No such file or directory"
    Path("folder.md").mkdir()
    assert skip_reason(Path("folder.md")) == "not a regular file"


def test_load_result_collects_every_jsonl_outcome() -> None:
    path = write("two.jsonl", jsonl({"_id": "a", "text": "x"}, "not json"))
    result = load_path(path, max_file_bytes=LIMIT)
    assert isinstance(result, LoadResult)
    assert len(result.documents) == 1 and len(result.skipped) == 1
