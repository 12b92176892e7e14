"""Storage backends, chosen by the scheme of a store URL: `sqlite:` built in, others registered.

`register_store(scheme, opener)` adds a backend (imported lazily inside its opener, so an unused backend's driver
is never imported); the registry is this module's one state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from archivist.store.protocols import Store
from archivist.types import UsageError


@dataclass(frozen=True, slots=True)
class StoreBackend:
    """How to open a store URL of one scheme, and whether one exists there already (None: always)."""

    open: Callable[[str], Store]
    exists: Callable[[str], bool] | None = None


_BACKENDS: dict[str, StoreBackend] = {}


def register_store(
    scheme: str, opener: Callable[[str], Store], *, exists: Callable[[str], bool] | None = None, replace: bool = False
) -> None:
    """Make URLs of `scheme` open with `opener` (given the whole URL); a scheme that is taken raises unless
    `replace`. `exists` says whether a store is there already (read-only commands refuse to create one)."""
    if scheme in _BACKENDS and not replace:
        raise ValueError(f"store scheme {scheme!r} is registered already (pass replace=True to replace it)")
    _BACKENDS[scheme] = StoreBackend(opener, exists)


def _backend(url: str) -> StoreBackend:
    """Return the backend of a URL's scheme, or raise UsageError naming the schemes there are."""
    try:
        scheme = urlparse(url).scheme
    except ValueError as exc:  # e.g. an unclosed [ of an IPv6 host: not shown, it may hold a password
        raise UsageError(f"bad store URL: {exc} (e.g. sqlite:///path.db or postgresql://user@host/db)") from exc
    backend = _BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(f"{s}:" for s in sorted(_BACKENDS))
        raise UsageError(
            f"unsupported store URL scheme {scheme or '(none)'!r} in {url!r}: use one of {known} "
            "(e.g. sqlite:///path.db)"
        )
    return backend


def store_exists(url: str) -> bool:
    """Return whether the store a URL names exists already (a server store always counts as existing)."""
    backend = _backend(url)
    return backend.exists is None or backend.exists(url)


def open_store(url: str) -> Store:
    """Return the store a URL names: `sqlite:///relative.db`, `sqlite:////abs/path.db`, or a registered scheme."""
    return _backend(url).open(url)


def _sqlite_path(url: str) -> Path:
    """Return the database file a `sqlite:` URL names, or raise UsageError."""
    parsed = urlparse(url)
    if parsed.netloc:
        raise UsageError(f"bad store URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    raw = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
    if not raw:
        raise UsageError(f"bad store URL {url!r}: no database path after sqlite:///")
    return Path(raw)


def _open_sqlite(url: str) -> Store:
    from archivist.store.sqlite import SQLiteStore

    return SQLiteStore(_sqlite_path(url), url=url)


def _open_postgres(url: str) -> Store:
    try:
        from archivist.store.postgres import PostgresStore
    except ImportError as exc:  # the driver is an extra: say which
        raise UsageError(
            f"a postgresql:// store needs the PostgreSQL driver: pip install 'archivist[postgres]' ({exc})"
        ) from exc
    return PostgresStore(url)


register_store("sqlite", _open_sqlite, exists=lambda url: _sqlite_path(url).exists())
register_store("postgresql", _open_postgres)
register_store("postgres", _open_postgres)
