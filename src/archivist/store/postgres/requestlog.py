"""The request log in PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

from archivist.store.postgres.database import PostgresDatabase
from archivist.store.records import RequestLogRow

_ROW_SELECT = "request_id, at, key_id, method, route, status, latency_ms, tokens, cost_usd, outcome"


class PostgresRequestLog(PostgresDatabase):
    """The `RequestLogStore` of a PostgreSQL database."""

    def log_requests(self, rows: Sequence[RequestLogRow]) -> None:
        """Append served requests to the request log."""
        if not rows:
            return
        with self._transaction() as conn, conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO request_log ({_ROW_SELECT}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        r.request_id,
                        r.at,
                        r.key_id,
                        r.method,
                        r.route,
                        r.status,
                        r.latency_ms,
                        r.tokens,
                        r.cost_usd,
                        r.outcome,
                    )
                    for r in rows
                ],
            )

    def request_log(self, *, since: str, key_id: str | None = None) -> list[RequestLogRow]:
        """Return logged requests at or after `since` (UTC ISO time), of one key or all."""
        where, params = ("AND key_id = %s", [key_id]) if key_id else ("", [])
        rows = self._fetchall(
            f"SELECT {_ROW_SELECT} FROM request_log WHERE at >= %s {where} ORDER BY at, id", [since, *params]
        )
        return [RequestLogRow(*r) for r in rows]
