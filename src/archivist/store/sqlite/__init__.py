"""The embedded default store: one SQLite file in WAL mode; search runs on in-memory indexes.

The file holds documents, chunks, vectors (float32 blobs keyed by model and embedded-text hash) and each chunk's
BM25 term counts. Searches run over a dense matrix and BM25 posting lists built from the file and brought up to
date from the change feed when a write bumps the store's generation (see `index`). Filters select documents in
SQL and are applied as a mask inside both searches, never after top-k. One module per concern; `SQLiteStore` is
all of them over one file, and reports the driver's errors as our own `StoreError`.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from archivist.store.sqlite.agentruns import SQLiteAgentRuns
from archivist.store.sqlite.collections import SQLiteCollections
from archivist.store.sqlite.documents import SQLiteDocuments
from archivist.store.sqlite.evalruns import SQLiteEvalRuns
from archivist.store.sqlite.jobs import SQLiteJobs
from archivist.store.sqlite.keys import SQLiteKeys
from archivist.store.sqlite.llmdata import SQLiteLLMData
from archivist.store.sqlite.requestlog import SQLiteRequestLog
from archivist.store.sqlite.search import SQLiteSearch
from archivist.types import StoreError

__all__ = ["SQLiteStore"]

C = TypeVar("C", bound=type)


def _in_our_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            # A conflict a caller can act on is raised as ConflictError by the method that expects it.
            raise StoreError(f"store error: {exc}") from exc

    return wrapper


def _reporting_our_errors(cls: C) -> C:
    """Return the class with every public method raising our errors instead of sqlite3's (callers, and the
    contract suites a server backend also passes, never see a driver's exception)."""
    for name in dir(cls):
        member = getattr(cls, name)
        if not name.startswith("_") and callable(member) and not isinstance(member, type):
            setattr(cls, name, _in_our_errors(member))
    return cls


@_reporting_our_errors
class SQLiteStore(
    SQLiteDocuments,
    SQLiteSearch,
    SQLiteCollections,
    SQLiteKeys,
    SQLiteJobs,
    SQLiteEvalRuns,
    SQLiteRequestLog,
    SQLiteLLMData,
    SQLiteAgentRuns,
):
    """A `Store` in one SQLite file: every concern's store over one set of connections."""
