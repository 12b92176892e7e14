"""What a loader is given (a `SourceFile`: the path, its source name, the size limit) and what loading yields."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from archivist.ingest.loaders.decode import decode_text
from archivist.ingest.loaders.reasons import Rejected, too_large_reason
from archivist.types import Document, Skipped


def source_for(path: Path) -> str:
    """Return the stable source URI of a file: relative to the cwd when under it, else absolute."""
    absolute = os.path.abspath(path)
    try:
        relative = os.path.relpath(absolute, os.getcwd())
    except (ValueError, OSError):
        # Different drive on Windows, or the cwd no longer exists.
        return Path(absolute).as_posix()
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return Path(absolute).as_posix()
    return Path(relative).as_posix()


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file handed to a loader: where it is, the source its documents are stored under, the media type it was
    registered with, and the size limit its reads must keep."""

    path: Path
    source: str
    media_type: str
    max_bytes: int

    def read_bytes(self) -> bytes:
        """Return the file's bytes, or raise `Rejected` if it is missing, unreadable, not regular, too large or
        empty."""
        try:
            info = self.path.stat()
        except OSError as error:
            raise Rejected(f"cannot read: {error.strerror or error}") from None
        if not stat.S_ISREG(info.st_mode):
            raise Rejected("not a regular file")
        # Checked before reading so a huge file never reaches memory.
        if info.st_size > self.max_bytes:
            raise Rejected(too_large_reason(info.st_size, self.max_bytes))
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise Rejected(f"cannot read: {error.strerror or error}") from None
        if not data.strip():
            raise Rejected("empty file")
        return data

    def read_text(self) -> str:
        """Return the file's text as `decode_text` reads it, or raise `Rejected`."""
        return decode_text(self.read_bytes())


@dataclass
class LoadResult:
    """What loading one path yields: the documents found and the inputs skipped."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
