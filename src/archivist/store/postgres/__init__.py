"""The server store: PostgreSQL (psycopg 3 and its connection pool), with pgvector created by its first migration.

Built so far: the base (URLs, the pool, statement timeout, transactions, versioned migrations under an advisory
lock) and the record stores: collections, API keys, eval runs, the request log, the LLM response cache and spend
ledger, agent runs with their effect journal. Documents, search and the job queue raise a UsageError that says they
are not built yet (see `unbuilt`). One module per concern; `PostgresStore` is all of them over one pool, and
reports the driver's errors as our own `StoreError`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from archivist.store.postgres.agentruns import PostgresAgentRuns
from archivist.store.postgres.collections import PostgresCollections
from archivist.store.postgres.database import driver_message
from archivist.store.postgres.evalruns import PostgresEvalRuns
from archivist.store.postgres.keys import PostgresKeys
from archivist.store.postgres.llmdata import PostgresLLMData
from archivist.store.postgres.requestlog import PostgresRequestLog
from archivist.store.postgres.unbuilt import PostgresUnbuilt
from archivist.types import StoreError

__all__ = ["PostgresStore"]

C = TypeVar("C", bound=type)


def _in_our_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except psycopg.Error as exc:
            # A conflict a caller can act on is raised as ConflictError by the method that expects it.
            raise StoreError(f"store error: {driver_message(exc)}") from exc

    return wrapper


def _reporting_our_errors(cls: C) -> C:
    """Return the class with every public method raising our errors instead of psycopg's (callers, and the
    contract suites, never see a driver's exception)."""
    for name in dir(cls):
        member = getattr(cls, name)
        if not name.startswith("_") and callable(member) and not isinstance(member, type):
            setattr(cls, name, _in_our_errors(member))
    return cls


@_reporting_our_errors
class PostgresStore(
    PostgresCollections,
    PostgresKeys,
    PostgresEvalRuns,
    PostgresRequestLog,
    PostgresLLMData,
    PostgresAgentRuns,
    PostgresUnbuilt,
):
    """A `Store` in one PostgreSQL database: every concern's store over one connection pool."""
