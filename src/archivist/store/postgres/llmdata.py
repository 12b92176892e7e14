"""The LLM layer's response cache and spend ledger in PostgreSQL."""

from __future__ import annotations

from archivist.store.postgres.database import PostgresDatabase


class PostgresLLMData(PostgresDatabase):
    """The response cache and the spend ledger of a PostgreSQL database."""

    def cache_get(self, key: str, now: float) -> str | None:
        """Return a cached value that has not expired at `now` (epoch seconds), or None."""
        row = self._fetchone("SELECT value FROM llm_cache WHERE key = %s AND expires_at > %s", (key, now))
        return str(row[0]) if row else None

    def cache_put(self, key: str, value: str, now: float, ttl_s: float) -> None:
        """Store a value under a key until `now + ttl_s`, dropping expired entries as it goes."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM llm_cache WHERE expires_at <= %s", (now,))
            conn.execute(
                "INSERT INTO llm_cache (key, value, created_at, expires_at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, created_at = excluded.created_at,"
                " expires_at = excluded.expires_at",
                (key, value, now, now + ttl_s),
            )

    def spend_get(self, key: str, period: str) -> tuple[int, float]:
        """Return the tokens and dollars recorded against a budget key in a period (0, 0.0 if none)."""
        row = self._fetchone("SELECT tokens, cost_usd FROM llm_spend WHERE key = %s AND period = %s", (key, period))
        return (int(row[0]), float(row[1])) if row else (0, 0.0)

    def spend_add(self, key: str, period: str, tokens: int, cost_usd: float) -> None:
        """Add tokens and dollars to a budget key's total for a period."""
        with self._transaction() as conn:
            # One statement: concurrent writers (threads, processes, hosts) add up instead of overwriting.
            conn.execute(
                "INSERT INTO llm_spend (key, period, tokens, cost_usd) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (key, period) DO UPDATE SET tokens = llm_spend.tokens + excluded.tokens,"
                " cost_usd = llm_spend.cost_usd + excluded.cost_usd",
                (key, period, tokens, cost_usd),
            )
