"""The server store: PostgreSQL (psycopg 3 and its connection pool), with pgvector created by its first migration.

The base (URLs, the pool, statement timeout, transactions, versioned migrations under an advisory lock), the
record stores (collections, API keys, eval runs, the request log, the LLM response cache and spend ledger, agent
runs with their effect journal), the job queue, and documents with their search (pgvector's HNSW, BM25 in SQL). One
module per concern; `PostgresStore` is all of them over one pool, and reports the driver's errors as our own
`StoreError`.
"""

from __future__ import annotations

import psycopg

from archivist.store.postgres.agentruns import PostgresAgentRuns
from archivist.store.postgres.collections import PostgresCollections
from archivist.store.postgres.database import driver_message
from archivist.store.postgres.documents import PostgresDocuments
from archivist.store.postgres.evalruns import PostgresEvalRuns
from archivist.store.postgres.guards import PostgresGuards
from archivist.store.postgres.jobs import PostgresJobs
from archivist.store.postgres.keys import PostgresKeys
from archivist.store.postgres.llmdata import PostgresLLMData
from archivist.store.postgres.requestlog import PostgresRequestLog
from archivist.store.postgres.search import PostgresSearch
from archivist.store.rows import reporting_our_errors

__all__ = ["PostgresStore"]


@reporting_our_errors(psycopg.Error, driver_message)
class PostgresStore(
    PostgresCollections,
    PostgresGuards,
    PostgresKeys,
    PostgresEvalRuns,
    PostgresRequestLog,
    PostgresLLMData,
    PostgresAgentRuns,
    PostgresJobs,
    PostgresSearch,
    PostgresDocuments,
):
    """A `Store` in one PostgreSQL database: every concern's store over one connection pool."""
