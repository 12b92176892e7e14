"""The ingest pipeline's per-document filter hook, with real filters, the real model and a real SQLite file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.ingest.document_filter import DocumentFilter, TextEdit, edit_text
from archivist.ingest.pipeline import IngestPipeline
from archivist.store.filters import Filters
from archivist.types import Block, Document, Skipped, document_id_for
from conftest import write_files

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def redact_emails(doc: Document) -> Document:
    """A PII filter: every e-mail address becomes [EMAIL], and the count is flagged in the metadata."""
    edits = [TextEdit(m.start(), m.end(), "[EMAIL]") for m in EMAIL.finditer(doc.text)]
    if not edits:
        return doc
    redacted = edit_text(doc, edits)
    redacted.metadata["pii_redacted"] = len(edits)
    return redacted


class SkipWord:
    """A scanning filter: documents containing a word are left out, with the reason."""

    def __init__(self, word: str) -> None:
        self.word = word

    def __call__(self, doc: Document) -> Document | Skipped:
        if self.word in doc.text:
            return Skipped(doc.source, f"contains {self.word!r}")
        return doc


def broken(doc: Document) -> Document:
    raise RuntimeError("scanner unavailable")


def doc_with_blocks(text: str) -> Document:
    """Return a document whose blocks are its paragraphs."""
    blocks, pos = [], 0
    for para in text.split("\n\n"):
        blocks.append(Block("paragraph", pos, pos + len(para)))
        pos += len(para) + 2
    return Document("a.txt", "A", text, "text/plain", blocks)


def test_edit_text_moves_every_block_with_the_edits() -> None:
    text = "Mail ann@example.com now.\n\nOr bob@example.org.\n\nThe end."
    doc = doc_with_blocks(text)
    out = redact_emails(doc)
    assert out.text == "Mail [EMAIL] now.\n\nOr [EMAIL].\n\nThe end."
    assert [out.text[b.start : b.end] for b in out.blocks] == ["Mail [EMAIL] now.", "Or [EMAIL].", "The end."]
    assert out.metadata == {"pii_redacted": 2} and doc.metadata == {} and doc.text == text  # the input is kept


def test_edit_text_boundaries_inside_and_at_an_edit() -> None:
    doc = Document("a.txt", "A", "0123456789", "text/plain", [Block("paragraph", 0, 4), Block("paragraph", 4, 10)])
    # Blocks meet at 4, inside the edited span [2, 6): each keeps covering the replacement.
    out = edit_text(doc, [TextEdit(2, 6, "xy")])
    assert out.text == "01xy6789" and [(b.start, b.end) for b in out.blocks] == [(0, 4), (2, 8)]
    # An edit that ends where a block starts, and an insertion there: both stay in front of the block.
    out = edit_text(doc, [TextEdit(0, 4, ""), TextEdit(4, 4, "++")])
    assert out.text == "++456789" and [(b.start, b.end) for b in out.blocks] == [(0, 0), (0, 8)]
    with pytest.raises(ValueError, match="overlap"):
        edit_text(doc, [TextEdit(1, 5, "a"), TextEdit(4, 6, "b")])
    with pytest.raises(ValueError, match="outside"):
        edit_text(doc, [TextEdit(8, 11, "a")])


@pytest.fixture
def app(tmp_path: Path, embedder: MiniLMEmbedder) -> Iterator[Archivist]:
    settings = load_settings(store=f"sqlite:///{tmp_path / 'store.db'}")
    with Archivist(settings, Archivist.from_settings(settings).store, embedder) as a:
        yield a


def pipeline(app: Archivist, filters: list[DocumentFilter]) -> IngestPipeline:
    return IngestPipeline(app.store, app.embedder, app.chunker(), max_file_bytes=1 << 20, filters=filters)


def test_filters_redact_and_skip_documents_before_they_are_stored(app: Archivist, tmp_path: Path) -> None:
    docs = write_files(
        tmp_path / "docs",
        {
            "contacts.md": "# Support\n\nWrite to help.desk@example.com for refunds.\n\n## Escalation\n\n"
            "The duty manager is reached at oncall@example.org at any hour.\n",
            "secret.txt": "CONFIDENTIAL: the merger closes in May.\n",
            "plain.txt": "Refunds are paid within five days.\n",
        },
    )
    report = pipeline(app, [redact_emails, SkipWord("CONFIDENTIAL")]).run([docs])
    assert sorted(Path(s).name for s in report.added) == ["contacts.md", "plain.txt"]
    assert [(Path(s.source).name, s.reason) for s in report.skipped] == [("secret.txt", "contains 'CONFIDENTIAL'")]
    assert not report.failed
    # Stored: the redacted text, with chunks that are exact spans of it under the right headings, and the flag.
    stored = {Path(r.source).name: r for r in app.store.list_documents()}
    assert set(stored) == {"contacts.md", "plain.txt"}
    contacts = stored["contacts.md"]
    assert contacts.metadata["pii_redacted"] == 2
    chunks = app.store.document_chunks(contacts.id)
    text = " ".join(c.text for c in chunks)
    assert "[EMAIL]" in text and "@" not in text
    assert any(c.heading_path[-1:] == ("Escalation",) and "oncall" not in c.text for c in chunks)
    assert app.store.bm25_search("oncall example org", 5, Filters()) == []
    assert app.store.list_documents(filters=Filters.parse(["pii_redacted=2"]))[0].id == contacts.id
    # Filtered content is what is hashed: the same files and filters are unchanged on the next run.
    again = pipeline(app, [redact_emails, SkipWord("CONFIDENTIAL")]).run([docs])
    assert not again.added and not again.updated and len(again.unchanged) == 2 and len(again.skipped) == 1


def test_a_failing_or_careless_filter_fails_only_its_document(app: Archivist, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Backups run every night at two.\n")
    (docs / "b.txt").write_text("Restores are tested every month.\n")

    def only_a_breaks(doc: Document) -> Document:
        return broken(doc) if doc.source.endswith("a.txt") else doc

    def cuts_text_keeps_blocks(doc: Document) -> Document:
        doc.text = doc.text[:5]  # blocks still point past the new end
        return doc

    report = pipeline(app, [only_a_breaks]).run([docs])
    assert [Path(s).name for s in report.added] == ["b.txt"]
    assert [(Path(f.source).name, f.reason) for f in report.failed] == [
        ("a.txt", "document filter failed: scanner unavailable")
    ]
    report = pipeline(app, [cuts_text_keeps_blocks]).run([docs / "a.txt"])
    assert not report.added and "blocks outside the document's text" in report.failed[0].reason
    assert app.store.get_document(document_id_for(report.failed[0].source)) is None
