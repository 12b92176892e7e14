"""PDF (`.pdf`): the text layer, one paragraph block per page paragraph, each with its page number. The parser,
pypdf, is imported only when a PDF is read."""

from __future__ import annotations

import io
from typing import Any

from archivist.ingest.loaders.blocks import (
    TextBuilder,
    clip_title,
    collapse,
    line_spans,
    paragraph_spans,
    short_line_title,
)
from archivist.ingest.loaders.decode import normalise_newlines
from archivist.ingest.loaders.reasons import Rejected, missing_library, one_line
from archivist.ingest.loaders.registry import register_loader
from archivist.ingest.loaders.source import SourceFile
from archivist.types import Document

PDF = "application/pdf"


def _open_pdf(data: bytes) -> Any:
    """Return a pypdf reader for the bytes, decrypted if it has an empty user password."""
    try:
        from pypdf import PdfReader
    except ImportError as error:
        raise missing_library("pypdf", "PDF files") from error

    try:
        reader = PdfReader(io.BytesIO(data))
    except Exception as error:
        raise Rejected(f"not a readable PDF: {one_line(error)}") from None
    if reader.is_encrypted:
        try:
            # Many PDFs are encrypted only to restrict printing, with an empty user password.
            decrypted = reader.decrypt("")
        except Exception as error:
            raise Rejected(f"encrypted PDF, cannot decrypt: {one_line(error)}") from None
        if not decrypted:
            raise Rejected("encrypted PDF: a password is required")
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
    return paragraphs if len(paragraphs) > 1 else line_spans(page_text)


def _pdf_title(reader: Any, text: str, stem: str) -> str:
    """Return the PDF's metadata title, else its first line if short, else the file stem."""
    try:
        declared = reader.metadata.title if reader.metadata is not None else None
    except Exception:
        declared = None
    if declared is not None and str(declared).strip():
        return clip_title(collapse(str(declared)))
    return short_line_title(text, stem)


def load_pdf(file: SourceFile) -> Document:
    """Return a PDF's text layer, one paragraph block per page paragraph, with page numbers."""
    reader = _open_pdf(file.read_bytes())
    builder = TextBuilder()
    try:
        pages = list(reader.pages)
    except Exception as error:
        raise Rejected(f"not a readable PDF: {one_line(error)}") from None
    for number, page in enumerate(pages, start=1):
        page_text = _page_text(page)
        if page_text:
            builder.add_page(page_text, _page_spans(page_text), number)
    if not builder.blocks:
        raise Rejected("no extractable text (scanned PDF?)")
    text = builder.text
    return Document(
        source=file.source,
        title=_pdf_title(reader, text, file.path.stem),
        text=text,
        media_type=file.media_type,
        blocks=builder.blocks,
    )


register_loader(".pdf", load_pdf, media_type=PDF)
