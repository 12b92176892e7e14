"""The request log in SQLite."""

from __future__ import annotations

from collections.abc import Sequence

from archivist.store.records import (
    RequestLogRow,
)
from archivist.store.sqlite.database import SQLiteDatabase


class SQLiteRequestLog(SQLiteDatabase):
    """The `RequestLogStore` of an SQLite file."""

    def log_requests(self, rows: Sequence[RequestLogRow]) -> None:
        """Append served requests to the request log."""
        if not rows:
            return
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO request_log (request_id, at, key_id, method, route, status, latency_ms, tokens,"
                " cost_usd, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        where, params = ("AND key_id = ?", [key_id]) if key_id else ("", [])
        rows = self._conn().execute(
            "SELECT request_id, at, key_id, method, route, status, latency_ms, tokens, cost_usd, outcome"
            " FROM request_log"
            f" WHERE at >= ? {where} ORDER BY at",
            [since, *params],
        )
        return [RequestLogRow(*r) for r in rows]
