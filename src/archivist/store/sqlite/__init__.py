"""The embedded default store: one SQLite file in WAL mode; search runs on in-memory indexes.

The file holds documents, chunks, vectors (float32 blobs keyed by model and embedded-text hash) and each chunk's
BM25 term counts. Searches run over a dense matrix and BM25 posting lists built from the file and brought up to
date from the change feed when a write bumps the store's generation (see `index`). Filters select documents in
SQL and are applied as a mask inside both searches, never after top-k. One module per concern; `SQLiteStore` is
all of them over one file, and reports the driver's errors as our own `StoreError`.
"""

from __future__ import annotations

import sqlite3

from archivist.store.rows import reporting_our_errors
from archivist.store.sqlite.agentruns import SQLiteAgentRuns
from archivist.store.sqlite.collections import SQLiteCollections
from archivist.store.sqlite.documents import SQLiteDocuments
from archivist.store.sqlite.evalruns import SQLiteEvalRuns
from archivist.store.sqlite.guards import SQLiteGuards
from archivist.store.sqlite.jobs import SQLiteJobs
from archivist.store.sqlite.keys import SQLiteKeys
from archivist.store.sqlite.llmdata import SQLiteLLMData
from archivist.store.sqlite.requestlog import SQLiteRequestLog
from archivist.store.sqlite.search import SQLiteSearch

__all__ = ["SQLiteStore"]


@reporting_our_errors(sqlite3.Error)
class SQLiteStore(
    SQLiteDocuments,
    SQLiteSearch,
    SQLiteCollections,
    SQLiteGuards,
    SQLiteKeys,
    SQLiteJobs,
    SQLiteEvalRuns,
    SQLiteRequestLog,
    SQLiteLLMData,
    SQLiteAgentRuns,
):
    """A `Store` in one SQLite file: every concern's store over one set of connections."""
