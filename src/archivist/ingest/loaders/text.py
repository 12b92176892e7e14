"""Plain text (`.txt`, `.text`, `.rst`): one paragraph block per blank-line-separated run."""

from __future__ import annotations

from archivist.ingest.loaders.blocks import paragraph_blocks, short_line_title
from archivist.ingest.loaders.registry import register_loader
from archivist.ingest.loaders.source import SourceFile
from archivist.types import Document

PLAIN = "text/plain"


def load_text(file: SourceFile) -> Document:
    """Return a plain-text document: one paragraph block per blank-line-separated run."""
    text = file.read_text()
    return Document(
        source=file.source,
        title=short_line_title(text, file.path.stem),
        text=text,
        media_type=file.media_type,
        blocks=paragraph_blocks(text),
    )


register_loader((".txt", ".text", ".rst"), load_text, media_type=PLAIN)
