"""Why a file is skipped: the `Rejected` signal a loader raises, and the wording of the one-line reasons."""

from __future__ import annotations

_MB = 1024 * 1024


class Rejected(Exception):
    """Raised by a loader to skip its file (or record); the message is the one-line reason users see."""


def one_line(error: BaseException) -> str:
    """Return an exception as one short line."""
    message = " ".join(str(error).split()) or type(error).__name__
    return message[:200]


def human_size(size: int) -> str:
    """Return a byte count the way a person reads it: "50.0 MB", "2.0 KB", "10 bytes"."""
    if size >= _MB:
        return f"{size / _MB:.1f} MB"
    return f"{size / 1024:.1f} KB" if size >= 1024 else f"{size} bytes"


def too_large_reason(size: int, limit: int) -> str:
    """Return the skip reason for input over the size limit."""
    return f"too large: {human_size(size)} exceeds the {human_size(limit)} limit (ARCHIVIST_MAX_FILE_MB)"


def missing_library(package: str, files: str) -> Rejected:
    """Return the rejection for files whose parser library is not installed, naming the package to install."""
    # Archivist depends on these parsers, but a trimmed install (or a plugin's loader) may lack one: every such
    # file then says what to install instead of "No module named ...".
    return Rejected(f"reading {files} needs the '{package}' package, which is not installed: pip install {package}")
