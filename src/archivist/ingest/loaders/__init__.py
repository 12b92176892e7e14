"""Loaders that turn files of each supported media type into `Document` records, one module per format.

Every loader reports bad input as a `Skipped` with a one-line reason instead of raising: one unreadable file must
never stop the ingestion of a corpus. Importing this package registers the built-in formats; `register_loader`
adds another (see docs/ingestion.md, "Adding a format").
"""

from __future__ import annotations

# Each built-in format registers itself when its module is imported.
from archivist.ingest.loaders import html, jsonl, markdown, pdf, text  # noqa: F401
from archivist.ingest.loaders.blocks import MAX_TITLE_CHARS, clip_title, paragraph_blocks, paragraph_spans
from archivist.ingest.loaders.decode import decode_text, normalise_newlines
from archivist.ingest.loaders.html import MAX_HTML_DEPTH
from archivist.ingest.loaders.jsonl import MAX_ID_CHARS, iter_jsonl
from archivist.ingest.loaders.reasons import Rejected, missing_library
from archivist.ingest.loaders.registry import Loader, load_path, register_loader, supported_suffixes
from archivist.ingest.loaders.source import LoadResult, SourceFile, source_for

__all__ = [
    "MAX_HTML_DEPTH",
    "MAX_ID_CHARS",
    "MAX_TITLE_CHARS",
    "LoadResult",
    "Loader",
    "Rejected",
    "SourceFile",
    "clip_title",
    "decode_text",
    "iter_jsonl",
    "load_path",
    "missing_library",
    "normalise_newlines",
    "paragraph_blocks",
    "paragraph_spans",
    "register_loader",
    "source_for",
    "supported_suffixes",
]
