"""Stored eval runs in PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from archivist.store.postgres.database import PostgresDatabase


class PostgresEvalRuns(PostgresDatabase):
    """The `EvalRunStore` of a PostgreSQL database."""

    def save_eval_run(self, record: dict[str, Any]) -> None:
        """Store an eval run record (a JSON-ready dict with id, kind, dataset, split, tag, created_at)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO eval_runs (id, kind, dataset, split, tag, created_at, fingerprint_hash, record)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    record["id"],
                    record["kind"],
                    record["dataset"],
                    record["split"],
                    record.get("tag"),
                    record["created_at"],
                    record["fingerprint_hash"],
                    json.dumps(record, ensure_ascii=False),
                ),
            )

    def list_eval_runs(self, *, dataset: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Return stored eval run records, newest first."""
        where, params = ("WHERE dataset = %s", [dataset]) if dataset else ("", [])
        rows = self._fetchall(
            f"SELECT record FROM eval_runs {where} ORDER BY created_at DESC, seq DESC LIMIT %s", [*params, limit]
        )
        return [json.loads(r[0]) for r in rows]

    def get_eval_run(self, run_id: str) -> dict[str, Any] | None:
        """Return one eval run record by id or unique id prefix, or None."""
        # starts_with compares text, unlike LIKE: '_' and '%' in an id match only themselves.
        rows = self._fetchall(
            "SELECT id, record FROM eval_runs WHERE id = %s OR starts_with(id, %s) ORDER BY id = %s DESC LIMIT 2",
            (run_id, run_id, run_id),
        )
        exact = [r for r in rows if r[0] == run_id]
        if exact:
            return dict(json.loads(exact[0][1]))
        return dict(json.loads(rows[0][1])) if len(rows) == 1 else None
