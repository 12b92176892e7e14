"""The domain records shared by every component."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

BlockKind = Literal["heading", "paragraph", "code", "table", "list"]


def sha256_hex(text: str) -> str:
    """Return the hex SHA-256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: The collection documents belong to when none is named (the CLI's default, and every store before v5).
DEFAULT_COLLECTION = "default"
#: the largest row id (a chunk's) that either backend stores: a signed 64-bit integer
MAX_ROW_ID = 2**63 - 1


_COLLECTION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_collection_name(name: str) -> str:
    """Return the name if it is a valid collection name, else raise UsageError saying what is allowed."""
    if not _COLLECTION_NAME.match(name):
        raise UsageError(
            f"bad collection name {name!r}: use 1-63 lowercase letters, digits, '-' or '_', starting with a letter "
            "or digit"
        )
    return name


def document_id_for(source: str, collection: str = DEFAULT_COLLECTION) -> str:
    """Return the stable document id derived from a source URI and its collection."""
    # The default collection keeps the ids stores had before collections existed.
    key = source if collection == DEFAULT_COLLECTION else f"{collection}\x00{source}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Block:
    """A structural unit of a document's text: `text[start:end]` of the document."""

    kind: BlockKind
    start: int
    end: int
    heading_path: tuple[str, ...] = ()
    page: int | None = None


@dataclass(slots=True)
class Document:
    """A loaded document: its full text and the structure the loader found in it."""

    source: str
    title: str
    text: str
    media_type: str
    blocks: list[Block]
    metadata: dict[str, Any] = field(default_factory=dict)
    collection: str = DEFAULT_COLLECTION

    @property
    def id(self) -> str:
        """Return the document id (stable for a given source in a given collection)."""
        return document_id_for(self.source, self.collection)

    @property
    def content_hash(self) -> str:
        """Return the hash of everything stored for the document: title, text, type and metadata."""
        meta = json.dumps(self.metadata, sort_keys=True, ensure_ascii=False, default=str)
        return sha256_hex("\x00".join((self.title, self.media_type, meta, self.text)))


@dataclass(slots=True)
class Chunk:
    """A contiguous span of a document, sized for the embedding model."""

    document_id: str
    ordinal: int
    text: str
    start: int
    end: int
    heading_path: tuple[str, ...]
    token_count: int
    page: int | None = None
    page_end: int | None = None

    def embedding_text(self, title: str) -> str:
        """Return the text that is embedded: the chunk prefixed with its title and headings."""
        path = self.heading_path
        if path and path[0].strip().casefold() == title.strip().casefold():
            path = path[1:]  # a Markdown H1 usually is the title: don't say it twice
        context = " > ".join(p for p in (title, *path) if p)
        return f"{context}\n{self.text}" if context else self.text


@dataclass(slots=True)
class DocumentRecord:
    """A stored document, as the store returns it."""

    id: str
    source: str
    title: str
    media_type: str
    content_hash: str
    metadata: dict[str, Any]
    chunk_count: int
    char_count: int
    created_at: str
    updated_at: str
    version: int
    collection: str = DEFAULT_COLLECTION


@dataclass(slots=True)
class Hit:
    """A retrieved chunk with its fused score and each retriever's score and rank."""

    chunk_id: int
    document_id: str
    source: str
    title: str
    heading_path: tuple[str, ...]
    text: str
    start: int
    end: int
    page: int | None
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    dense_score: float | None = None
    dense_rank: int | None = None
    bm25_score: float | None = None
    bm25_rank: int | None = None
    collection: str = DEFAULT_COLLECTION
    #: the injection scan's score of the chunk at ingest (None: not scanned) and whether it stands flagged
    guard_score: float | None = None
    guard_flagged: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the hit."""
        return {
            "chunk_id": self.chunk_id,
            "document_id": self.document_id,
            "source": self.source,
            "title": self.title,
            "heading_path": list(self.heading_path),
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "page": self.page,
            "score": self.score,
            "metadata": self.metadata,
            "dense_score": self.dense_score,
            "dense_rank": self.dense_rank,
            "bm25_score": self.bm25_score,
            "bm25_rank": self.bm25_rank,
            "collection": self.collection,
            "guard_score": self.guard_score,
            "guard_flagged": self.guard_flagged,
        }


@dataclass(slots=True)
class Skipped:
    """An input that was not ingested, and why."""

    source: str
    reason: str


@dataclass(slots=True)
class IngestReport:
    """The outcome of one ingestion run."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    failed: list[Skipped] = field(default_factory=list)
    chunks_written: int = 0
    chunks_embedded: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """Return the per-outcome document counts."""
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "removed": len(self.removed),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
        }


class ArchivistError(Exception):
    """An error whose message is fit to show a user as is."""


class UsageError(ArchivistError):
    """The user asked for something malformed (exit code 2 in the CLI, 4xx in the API)."""


class NotFoundError(ArchivistError):
    """A named record does not exist."""


class ConflictError(ArchivistError):
    """A record with that name or id exists already."""


class StoreError(ArchivistError):
    """The store failed to read or write (the database driver's own error is its `__cause__`)."""
