"""Storage backends behind the `Store` protocol, chosen by URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from archivist.store.base import Store
from archivist.types import UsageError


def _sqlite_path(url: str) -> Path | None:
    """Return the database file a `sqlite:` URL names (None for another scheme), or raise UsageError."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        return None
    if parsed.netloc:
        raise UsageError(f"bad store URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    raw = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
    if not raw:
        raise UsageError(f"bad store URL {url!r}: no database path after sqlite:///")
    return Path(raw)


def store_exists(url: str) -> bool:
    """Return whether the store a URL names exists already (a server store always counts as existing)."""
    path = _sqlite_path(url)
    return path is None or path.exists()


def open_store(url: str) -> Store:
    """Return the store a URL names: `sqlite:///relative.db`, `sqlite:////abs/path.db`."""
    path = _sqlite_path(url)
    parsed = urlparse(url)
    if path is not None:
        from archivist.store.sqlite import SQLiteStore

        return SQLiteStore(path, url=url)
    if parsed.scheme in ("postgresql", "postgres"):
        raise UsageError("the PostgreSQL store is not built yet: use sqlite:///path.db for now")
    scheme = parsed.scheme or "(none)"
    raise UsageError(
        f"unsupported store URL scheme {scheme!r} in {url!r}: use sqlite:///path.db (or postgresql://… once available)"
    )
