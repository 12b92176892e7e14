"""Guard data in SQLite: the chunks the injection detector flagged at ingest, their review, and collection policies."""

from __future__ import annotations

import json
from collections.abc import Sequence

from archivist.store.filters import Filters
from archivist.store.records import StoredChunk, check_policy
from archivist.store.rows import utc_now
from archivist.store.sqlite.database import SQLiteDatabase
from archivist.store.sqlite.sql import CHUNK_SELECT, filter_sql, stored_chunk
from archivist.types import NotFoundError, UsageError


class SQLiteGuards(SQLiteDatabase):
    """The `GuardStore` of an SQLite file."""

    def flagged_chunks(self, collections: Sequence[str] | None = None, limit: int = 100) -> list[StoredChunk]:
        """Return the flagged chunks no person has cleared, in `collections` (None: every collection), highest
        score first."""
        if limit < 1:
            raise UsageError(f"limit must be at least 1, got {limit}")
        where, params = filter_sql(Filters(scope=tuple(collections) if collections is not None else None))
        rows = self._conn().execute(
            f"SELECT {CHUNK_SELECT} FROM chunks c JOIN documents d ON d.id = c.document_id"
            f" WHERE c.guard_flagged = 1 AND {where} ORDER BY c.guard_score DESC, c.id LIMIT ?",
            [*params, limit],
        )
        return [stored_chunk(r) for r in rows]

    def clear_chunk_flag(self, chunk_id: int, by: str, collections: Sequence[str] | None = None) -> bool:
        """Clear a chunk's flag, recording who and when; return False when no flagged chunk of that id is in
        `collections` (None: every collection)."""
        where, params = filter_sql(Filters(scope=tuple(collections) if collections is not None else None))
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE chunks SET guard_flagged = 0, guard_cleared_by = ?, guard_cleared_at = ?"
                " WHERE id = ? AND guard_flagged = 1 AND document_id IN"
                f" (SELECT d.id FROM documents d WHERE {where})",
                [by, utc_now(), int(chunk_id), *params],
            )
            return cur.rowcount > 0

    def set_collection_policy(self, name: str, policy: dict[str, str]) -> dict[str, str]:
        """Merge `policy` into a collection's guard policy and return the result; raise UsageError on a bad key or
        value, NotFoundError when there is no such collection."""
        check_policy(policy)
        with self._transaction() as conn:
            row = conn.execute("SELECT policy FROM collections WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFoundError(f"no collection {name!r}")
            merged = {**json.loads(row[0]), **policy}
            conn.execute("UPDATE collections SET policy = ? WHERE name = ?", (json.dumps(merged, sort_keys=True), name))
        return merged

    def collection_policy(self, name: str) -> dict[str, str]:
        """Return a collection's guard policy (empty when it sets none, or when there is no such collection)."""
        row = self._conn().execute("SELECT policy FROM collections WHERE name = ?", (name,)).fetchone()
        return dict(json.loads(row[0])) if row else {}
