"""API key records in SQLite."""

from __future__ import annotations

import json

from archivist.store.records import ApiKeyRecord, check_policy
from archivist.store.rows import json_tuple, reader
from archivist.store.sqlite.database import SQLiteDatabase

_KEY_SELECT = (
    "id, name, secret_hash, scopes, collections, created_at, budget_tokens, budget_usd, budget_period,"
    " rate_per_minute, revoked_at, last_used_at, policy"
)


class SQLiteKeys(SQLiteDatabase):
    """The `KeyStore` of an SQLite file."""

    def save_api_key(self, key: ApiKeyRecord) -> None:
        """Store a new API key record."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO api_keys (id, name, secret_hash, scopes, collections, budget_tokens, budget_usd,"
                " budget_period, rate_per_minute, created_at, revoked_at, last_used_at, policy)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.name,
                    key.secret_hash,
                    json.dumps(list(key.scopes)),
                    json.dumps(list(key.collections)) if key.collections is not None else None,
                    key.budget_tokens,
                    key.budget_usd,
                    key.budget_period,
                    key.rate_per_minute,
                    key.created_at,
                    key.revoked_at,
                    key.last_used_at,
                    json.dumps(check_policy(key.policy), sort_keys=True),
                ),
            )

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """Return an API key record by id (revoked ones included), or None."""
        row = self._conn().execute(f"SELECT {_KEY_SELECT} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return _key_record(row) if row else None

    def list_api_keys(self) -> list[ApiKeyRecord]:
        """Return every API key record, oldest first."""
        rows = self._conn().execute(f"SELECT {_KEY_SELECT} FROM api_keys ORDER BY created_at, id")
        return [_key_record(r) for r in rows]

    def revoke_api_key(self, key_id: str, now: str) -> bool:
        """Mark a key revoked; return whether an active key of that id existed."""
        with self._transaction() as conn:
            cur = conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id))
            return cur.rowcount > 0

    def touch_api_key(self, key_id: str, now: str) -> None:
        """Record that a key was just used."""
        with self._transaction() as conn:
            conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key_id))


_key_record = reader(ApiKeyRecord, _KEY_SELECT, scopes=json_tuple, collections=json_tuple, policy=json.loads)
