"""Guard data in PostgreSQL: the chunks the injection detector flagged at ingest, their review, and collection
policies."""

from __future__ import annotations

import json
from collections.abc import Sequence

from archivist.store.filters import Filters
from archivist.store.postgres.database import PostgresDatabase
from archivist.store.postgres.docsql import CHUNK_SELECT, filter_sql, stored_chunk
from archivist.store.records import StoredChunk, check_policy
from archivist.store.rows import utc_now
from archivist.types import NotFoundError, UsageError


class PostgresGuards(PostgresDatabase):
    """The `GuardStore` of a PostgreSQL database."""

    def flagged_chunks(self, collections: Sequence[str] | None = None, limit: int = 100) -> list[StoredChunk]:
        """Return the flagged chunks no person has cleared, in `collections` (None: every collection), highest
        score first."""
        if limit < 1:
            raise UsageError(f"limit must be at least 1, got {limit}")
        where, params = filter_sql(Filters(scope=tuple(collections) if collections is not None else None))
        rows = self._fetchall(
            f"SELECT {CHUNK_SELECT} FROM chunks c JOIN documents d ON d.id = c.document_id"
            f" WHERE c.guard_flagged AND {where} ORDER BY c.guard_score DESC, c.id LIMIT %s",
            [*params, limit],
        )
        return [stored_chunk(r) for r in rows]

    def clear_chunk_flag(self, chunk_id: int, by: str, collections: Sequence[str] | None = None) -> bool:
        """Clear a chunk's flag, recording who and when; return False when no flagged chunk of that id is in
        `collections` (None: every collection)."""
        where, params = filter_sql(Filters(scope=tuple(collections) if collections is not None else None))
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE chunks c SET guard_flagged = false, guard_cleared_by = %s, guard_cleared_at = %s"
                " FROM documents d WHERE d.id = c.document_id AND c.id = %s AND c.guard_flagged"
                f" AND {where}",
                [by, utc_now(), int(chunk_id), *params],
            )
            return cur.rowcount > 0

    def set_collection_policy(self, name: str, policy: dict[str, str]) -> dict[str, str]:
        """Merge `policy` into a collection's guard policy and return the result; raise UsageError on a bad key or
        value, NotFoundError when there is no such collection."""
        check_policy(policy)
        with self._transaction() as conn:
            row = conn.execute("SELECT policy FROM collections WHERE name = %s FOR UPDATE", (name,)).fetchone()
            if row is None:
                raise NotFoundError(f"no collection {name!r}")
            merged: dict[str, str] = {**json.loads(row[0]), **policy}
            conn.execute(
                "UPDATE collections SET policy = %s WHERE name = %s", (json.dumps(merged, sort_keys=True), name)
            )
        return merged

    def collection_policy(self, name: str) -> dict[str, str]:
        """Return a collection's guard policy (empty when it sets none, or when there is no such collection)."""
        row = self._fetchone("SELECT policy FROM collections WHERE name = %s", (name,))
        return dict(json.loads(row[0])) if row else {}
