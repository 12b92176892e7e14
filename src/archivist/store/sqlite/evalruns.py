"""Stored eval runs in SQLite."""

from __future__ import annotations

import json
from typing import Any

from archivist.store.sqlite.database import SQLiteDatabase


class SQLiteEvalRuns(SQLiteDatabase):
    """The `EvalRunStore` of an SQLite file."""

    def save_eval_run(self, record: dict[str, Any]) -> None:
        """Store an eval run record (a JSON-ready dict with id, kind, dataset, split, tag, created_at)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO eval_runs (id, kind, dataset, split, tag, created_at, fingerprint_hash, record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        where, params = ("WHERE dataset = ?", [dataset]) if dataset else ("", [])
        rows = self._conn().execute(
            f"SELECT record FROM eval_runs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?", [*params, limit]
        )
        return [json.loads(r[0]) for r in rows]

    def get_eval_run(self, run_id: str) -> dict[str, Any] | None:
        """Return one eval run record by id or unique id prefix, or None."""
        rows = (
            self._conn()
            .execute(
                # A prefix compared as text, not a LIKE pattern: '_' and '%' in an id match only themselves.
                "SELECT record FROM eval_runs WHERE id = ? OR substr(id, 1, ?) = ? LIMIT 2",
                (run_id, len(run_id), run_id),
            )
            .fetchall()
        )
        if len(rows) != 1:
            exact = [r for r in rows if json.loads(r[0])["id"] == run_id]
            return json.loads(exact[0][0]) if exact else None
        return dict(json.loads(rows[0][0]))
