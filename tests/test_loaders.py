"""Loaders: what users get out of their files, and the one-line reasons when they get nothing."""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

import pytest
from fpdf import FPDF
from fpdf.enums import EncryptionMethod

from archivist.ingest.loaders import (
    MAX_HTML_DEPTH,
    MAX_ID_CHARS,
    MAX_TITLE_CHARS,
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


def test_markdown_front_matter_is_yaml_nested_mappings_and_flow_lists_kept() -> None:
    text = (
        "---\ntitle: Runbook\nowner:\n  team: platform\n  oncall: [ada, bob]\ntags: [security, ops]\n"
        "reviewed: 2024-05-01\nversion: 3\ndraft: false\n---\n# Runbook\n\nRotate the keys.\n"
    )
    doc = load_one(write("fm.md", text))
    assert doc.title == "Runbook"
    assert doc.metadata == {
        "owner": {"team": "platform", "oncall": ["ada", "bob"]},
        "tags": ["security", "ops"],
        "reviewed": "2024-05-01",  # scalars stay the text written: YAML 1.1 would make dates, numbers, booleans
        "version": "3",
        "draft": "false",
    }
    assert block_texts(doc) == ["# Runbook", "Rotate the keys."]
    assert "team" not in doc.text


def test_bad_front_matter_is_a_warning_on_the_document_and_the_body_is_still_ingested(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = "---\ntitle: Notes\ntags: [security, ops\n---\n# Notes\n\nThe body stays.\n"
    doc = load_one(write("bad.md", text))
    warning = doc.metadata.pop("front_matter_error")
    assert warning.startswith("front matter is not valid YAML, so it was left out: ")
    assert "line 4" in warning  # where the unclosed list runs into the end: a line of the file, not of the YAML
    assert doc.metadata == {}
    assert block_texts(doc) == ["# Notes", "The body stays."]
    assert doc.title == "Notes"  # from the heading: nothing of the bad front matter is trusted
    assert any("bad.md" in r.getMessage() and "not valid YAML" in r.getMessage() for r in caplog.records)


def test_a_thematic_break_then_prose_is_not_front_matter() -> None:
    text = "---\nJust a paragraph between rules.\n---\n\nMore text.\n"
    doc = load_one(write("rule.md", text))
    assert doc.metadata == {}
    assert "Just a paragraph between rules." in doc.text


def test_front_matter_whose_aliases_expand_past_the_limit_is_left_out() -> None:
    # A "billion laughs": nine levels of nine aliases each would be 387 million values once expanded.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    doc = load_one(write("laughs.md", "---\n" + "\n".join(lines) + "\n---\n\nBody.\n"))
    assert doc.metadata == {"front_matter_error": "front matter has more than 10000 values, so it was left out"}
    assert block_texts(doc) == ["Body."]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("country: NO\nversion: 1.10\nzip: 012345\nat: 12:30:00\non: yes\nscore: .nan", None),
        ("date: 2024-02-30", None),
        ("a: &a [*a]", "front matter is not valid YAML, so it was left out: found unconstructable recursive node"),
        ("deep: " + "[" * 5000 + "]" * 5000, "front matter nests too deeply, so it was left out"),
        ("- a\n- b", "front matter is a list, not a mapping of keys to values, so it was left out"),
    ],
    ids=["yaml-1.1-scalars", "impossible-date", "self-alias", "deep-nesting", "a-list"],
)
def test_front_matter_values_stay_as_written_and_no_front_matter_loses_the_body(
    header: str, expected: str | None
) -> None:
    doc = load_one(write("fm.md", f"---\n{header}\n---\n# Doc\n\nThe body stays.\n"))
    assert block_texts(doc) == ["# Doc", "The body stays."]
    if expected is not None:
        assert set(doc.metadata) == {"front_matter_error"} and doc.metadata["front_matter_error"].startswith(expected)
    elif header.startswith("country"):
        assert doc.metadata == {
            "country": "NO",
            "version": "1.10",
            "zip": "012345",
            "at": "12:30:00",
            "on": "yes",
            "score": ".nan",
        }
    else:
        assert "front_matter_error" not in doc.metadata and doc.metadata


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


# --- input that once broke a whole file or run ---------------------------------------------------


def test_a_jsonl_line_with_a_nul_byte_is_skipped_alone() -> None:
    path = write(
        "nul.jsonl",
        jsonl({"_id": "a", "text": "alpha"}).encode()
        + b"\x00\x00\x00\n"
        + b'{"_id": "b", "text": "be\x00ta"}\n'
        + jsonl({"_id": "c", "text": "gamma"}).encode(),
    )
    result = load_path(path, max_file_bytes=LIMIT)
    assert [d.source for d in result.documents] == ["nul.jsonl#a", "nul.jsonl#c"]
    assert [(s.source, s.reason) for s in result.skipped] == [
        ("nul.jsonl:2", "line 2: binary content, not text (NUL byte at column 1)"),
        ("nul.jsonl:3", "line 3: binary content, not text (NUL byte at column 25)"),
    ]


def test_a_utf16_jsonl_file_is_one_skip_saying_so() -> None:
    records = jsonl({"_id": "a", "text": "alpha"}, {"_id": "b", "text": "beta"})
    assert skip_reason(write("wide.jsonl", records.encode("utf-16"))) == "UTF-16 text: JSONL must be UTF-8"
    # Without a byte order mark, NUL bytes on every line: binary, one skip rather than one per line.
    assert skip_reason(write("bare.jsonl", records.encode("utf-16-le"))) == "binary content, not text"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_text_in_utf16_or_utf32_with_a_byte_order_mark_loads(encoding: str) -> None:
    content = "# Notes\r\n\r\nSaved by a Windows editor, café.\r\n"
    data = content.encode(encoding)
    if encoding == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    doc = load_one(write("wide.md", data))
    assert doc.title == "Notes"
    assert doc.text == "# Notes\n\nSaved by a Windows editor, café.\n"


def test_a_jsonl_record_with_an_unpaired_surrogate_escape_is_skipped_alone() -> None:
    path = write(
        "esc.jsonl",
        '{"_id": "bad", "text": "broken \\ud800 text"}\n'
        '{"_id": "pair", "text": "emoji \\ud83d\\ude00 ok"}\n'
        '{"_id": "meta", "text": "fine", "note": ["\\udc00"]}\n',
    )
    result = load_path(path, max_file_bytes=LIMIT)
    assert [(d.source, d.text) for d in result.documents] == [("esc.jsonl#pair", "emoji \U0001f600 ok")]
    assert [(s.source, s.reason) for s in result.skipped] == [
        ("esc.jsonl:1", "line 1: not valid Unicode: unpaired surrogate \\ud800"),
        ("esc.jsonl:3", "line 3: not valid Unicode: unpaired surrogate \\udc00"),
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.timeout(30)
def test_a_fifo_is_skipped_without_waiting_for_a_writer() -> None:
    for name in ("pipe.jsonl", "pipe.md"):
        os.mkfifo(name)
        assert skip_reason(Path(name)) == "not a regular file"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "content", "text"),
    [
        # Each of these once took minutes to hours: a pattern retried at every character of a long run.
        ("blank.txt", "First.\n" + " " * 300_000 + "\nLast.", "First.\n"),
        ("blank.jsonl", json.dumps({"_id": 1, "text": "First.\n" + " " * 300_000 + "\nLast."}) + "\n", "First."),
        ("heading.md", "# Title" + " " * 300_000 + "x\n\nBody.\n", "# Title"),
        ("front.md", "---\ntitle: T" + " " * 300_000 + "x\n---\n\nBody.\n", "\nBody."),
        ("item.md", "---\ntags:\n  - a" + " " * 300_000 + "b\n---\n\nBody.\n", "\nBody."),
    ],
)
def test_long_runs_of_spaces_load(name: str, content: str, text: str) -> None:
    result = load_path(write(name, content), max_file_bytes=LIMIT)
    assert not result.skipped
    [doc] = result.documents
    assert_valid_blocks(doc)
    assert text in doc.text and doc.text.rstrip().endswith(("Last.", "Body."))


def test_a_jsonl_id_too_long_to_be_a_source_is_skipped() -> None:
    path = write("ids.jsonl", jsonl({"_id": "x" * (MAX_ID_CHARS + 1), "text": "t"}, {"_id": "ok", "text": "t"}))
    result = load_path(path, max_file_bytes=LIMIT)
    assert [d.source for d in result.documents] == ["ids.jsonl#ok"]
    assert [s.reason for s in result.skipped] == [
        f"line 1: '_id' is too long (1001 characters, at most {MAX_ID_CHARS})"
    ]


def test_a_huge_heading_is_clipped_in_titles_and_heading_paths_not_in_the_text() -> None:
    heading = "Word " * 100_000
    doc = load_one(write("h.md", f"# {heading}\n\nBody text.\n"))
    assert len(doc.title) <= MAX_TITLE_CHARS and doc.title.endswith("…")
    assert heading.strip() in doc.text
    assert all(len(part) <= MAX_TITLE_CHARS for b in doc.blocks for part in b.heading_path)
    html = load_one(write("h.html", f"<title>{heading}</title><h2>{heading}</h2><p>Body.</p>"))
    assert len(html.title) <= MAX_TITLE_CHARS
    assert all(len(part) <= MAX_TITLE_CHARS for b in html.blocks for part in b.heading_path)
    [record] = load_path(
        write("h.jsonl", jsonl({"_id": 1, "title": heading, "text": "t"})), max_file_bytes=LIMIT
    ).documents
    assert len(record.title) <= MAX_TITLE_CHARS


def test_deeply_nested_html_is_skipped_with_a_reason() -> None:
    depth = MAX_HTML_DEPTH + 50
    path = write("deep.html", "<div>" * depth + "text" + "</div>" * depth)
    assert skip_reason(path) == f"HTML nested too deeply (over {MAX_HTML_DEPTH} levels of elements)"


@pytest.mark.parametrize("tag", ["div", "blockquote", "span", "section"])
def test_html_nested_as_deep_as_allowed_still_loads(tag: str) -> None:
    depth = MAX_HTML_DEPTH - 10
    page = f"<title>Deep</title>{f'<{tag}>' * depth}<h2>Deep heading</h2><p>deep text</p>{f'</{tag}>' * depth}"
    doc = load_one(write("deep.html", page))
    assert doc.text == "Deep heading\n\ndeep text"
    assert [b.heading_path for b in doc.blocks] == [("Deep heading",), ("Deep heading",)]


def test_deeply_nested_html_lists_load_with_every_item() -> None:
    levels = MAX_HTML_DEPTH - 10
    page = "<ul>" + "".join(f"<li>item {i}<ul>" for i in range(levels)) + "<li>innermost" + "</ul>" * (levels + 1)
    doc = load_one(write("lists.html", page))
    [listing] = block_texts(doc, "list")
    lines = listing.split("\n")
    assert lines[0] == "- item 0" and lines[-1].strip() == "- innermost" and len(lines) == levels + 1


def test_html_markup_that_is_not_nesting_does_not_count_as_deep() -> None:
    # Thousands of unclosed <p>, <li> and <a>, self-closed SVG shapes and void elements: a flat page.
    page = (
        "<title>Flat</title>"
        + "<p>para<br><img src=x>" * 3000
        + "<ul>"
        + "<li><a href=#>item" * 3000
        + "</ul><svg>"
        + "<path d='M0 0'/>" * 3000
        + "</svg>"
    )
    doc = load_one(write("flat.html", page))
    assert doc.text.count("para") == 3000 and "item" in doc.text


def test_html_nested_table_rows_are_not_repeated() -> None:
    page = "<table><tr><td>outer <table><tr><td>inner</td></tr></table></td></tr><tr><td>last</td></tr></table>"
    doc = load_one(write("t.html", page))
    assert doc.text.count("inner") == 1
    assert block_texts(doc, "table") == ["outer inner\nlast"]
