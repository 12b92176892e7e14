"""JSONL (`.jsonl`, `.ndjson`) in the BEIR corpus layout: one document per line, streamed, with a `Skipped` per
bad line."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from archivist.ingest.loaders.blocks import clip_title, paragraph_blocks
from archivist.ingest.loaders.decode import SNIFF_BYTES, UTF8_BOM, bad_byte, normalise_newlines, wide_encoding
from archivist.ingest.loaders.reasons import Rejected, human_size, one_line
from archivist.ingest.loaders.registry import register_loader
from archivist.ingest.loaders.source import SourceFile, source_for
from archivist.types import Document, Skipped

JSONL = "application/jsonl"


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
            head = handle.read(SNIFF_BYTES)
        except OSError as error:
            yield Skipped(source, f"cannot read: {error.strerror or error}")
            return
        wide = wide_encoding(head)
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
            reason = f"line {lineno}: record too large (over the {human_size(limit or 0)} limit)"
            yield Skipped(f"{source}:{lineno}", reason)
            continue
        if lineno == 1:
            raw = raw.removeprefix(UTF8_BOM)
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
            raise Rejected(f"duplicate id {record_id}, first seen on line {first_seen[record_id]}")
        document = _record_document(record, record_id, id_key, source)
    except Rejected as rejected:
        return Skipped(f"{source}:{lineno}", f"line {lineno}: {rejected}")
    first_seen[record_id] = lineno
    return document


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _parse_record(raw: bytes) -> dict[str, Any]:
    """Return the JSON object on a line, or reject it."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise Rejected(f"binary content, not text (NUL byte at column {nul + 1})")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected(f"not valid UTF-8: {bad_byte(error)} at column {error.start + 1}") from None
    try:
        record = json.loads(line, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise Rejected(f"invalid JSON ({error.msg} at column {error.colno})") from None
    except (ValueError, RecursionError) as error:
        raise Rejected(f"invalid JSON ({one_line(error)})") from None
    if not isinstance(record, dict):
        raise Rejected(f"not a JSON object (got {_json_type(record)})")
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
        raise Rejected(f"not valid Unicode: unpaired surrogate \\u{bad:04x}") from None
    except (ValueError, RecursionError) as error:
        raise Rejected(f"invalid JSON ({one_line(error)})") from None


def _record_id(record: dict[str, Any]) -> tuple[str, str]:
    """Return a record's id as a string and the field it came from."""
    id_key = "_id" if record.get("_id") is not None else "id"
    value = record.get(id_key)
    if value is None or value == "":
        raise Rejected("missing 'id' (or '_id')")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Rejected(f"'{id_key}' must be a string or an integer (got {_json_type(value)})")
    record_id = str(value)
    # The id is part of the source, repeated in every chunk's search hit.
    if len(record_id) > MAX_ID_CHARS:
        raise Rejected(f"'{id_key}' is too long ({len(record_id)} characters, at most {MAX_ID_CHARS})")
    return record_id, id_key


def _record_document(record: dict[str, Any], record_id: str, id_key: str, source: str) -> Document:
    """Return the document of a parsed JSONL record."""
    text = record.get("text")
    if text is None:
        raise Rejected("missing 'text'")
    if not isinstance(text, str):
        raise Rejected(f"'text' is not a string (got {_json_type(text)})")
    text = normalise_newlines(text)
    if not text.strip():
        raise Rejected("empty 'text'")
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        raise Rejected(f"'title' is not a string (got {_json_type(title)})")
    metadata = {k: v for k, v in record.items() if k not in (id_key, "title", "text")}
    return Document(
        source=f"{source}#{record_id}",
        title=clip_title((title or "").strip() or record_id),
        text=text,
        media_type=JSONL,
        blocks=paragraph_blocks(text),
        metadata=metadata,
    )


def load_jsonl(file: SourceFile) -> Iterator[Document | Skipped]:
    """Return the stream of a JSONL file's documents and skipped lines, each line held to the size limit."""
    return iter_jsonl(file.path, max_record_bytes=file.max_bytes)


register_loader((".jsonl", ".ndjson"), load_jsonl, media_type=JSONL)
