"""Collections in PostgreSQL."""

from __future__ import annotations

import json

import psycopg

from archivist.store.postgres.database import PostgresDatabase
from archivist.store.records import CollectionRecord, check_policy
from archivist.store.rows import utc_now
from archivist.types import ConflictError


class PostgresCollections(PostgresDatabase):
    """The `CollectionStore` of a PostgreSQL database."""

    def create_collection(
        self, name: str, description: str = "", policy: dict[str, str] | None = None
    ) -> CollectionRecord:
        """Create a collection with its guard policy and return it; raise ConflictError when the name is taken,
        UsageError on a bad policy key or value."""
        policy = check_policy(policy or {})
        created = utc_now()
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO collections (name, description, created_at, policy) VALUES (%s, %s, %s, %s)",
                    (name, description, created, json.dumps(policy, sort_keys=True)),
                )
        except psycopg.errors.UniqueViolation as exc:
            raise ConflictError(f"collection {name!r} exists already") from exc
        return CollectionRecord(name, description, created, 0, policy)

    def list_collections(self) -> list[CollectionRecord]:
        """Return every collection with its document count, by name."""
        rows = self._fetchall(
            "SELECT c.name, c.description, c.created_at,"
            " (SELECT count(*) FROM documents d WHERE d.collection = c.name), c.policy"
            " FROM collections c ORDER BY c.name"
        )
        return [CollectionRecord(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def has_collection(self, name: str) -> bool:
        """Return whether a collection exists (cheap: checked on every scoped request)."""
        return self._fetchone("SELECT 1 FROM collections WHERE name = %s", (name,)) is not None
