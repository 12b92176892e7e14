"""The job queue in SQLite: leases taken and renewed under the file's write lock."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from archivist.store.records import (
    JobRecord,
)
from archivist.store.rows import job_update_values, json_or_none, reader, utc_now
from archivist.store.sqlite.database import SQLiteDatabase

_JOB_SELECT = (
    "id, kind, collection, status, payload, created_at, updated_at, done, total, result, error, key_id, attempts,"
    " locked_until, locked_by"
)


class SQLiteJobs(SQLiteDatabase):
    """The `JobQueue` of an SQLite file."""

    def create_job(self, job: JobRecord, data: bytes | None = None) -> None:
        """Store a new job, with its input bytes if it has some (dropped when the job ends)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, kind, collection, status, payload, done, total, result, error, key_id,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.kind,
                    job.collection,
                    job.status,
                    json.dumps(job.payload, ensure_ascii=False),
                    job.done,
                    job.total,
                    json.dumps(job.result) if job.result is not None else None,
                    job.error,
                    job.key_id,
                    job.created_at,
                    job.updated_at,
                ),
            )
            if data is not None:
                conn.execute("INSERT INTO job_inputs (job_id, data) VALUES (?, ?)", (job.id, data))

    def job_input(self, job_id: str) -> bytes | None:
        """Return the input bytes of a job that has not ended, or None."""
        row = self._conn().execute("SELECT data FROM job_inputs WHERE job_id = ?", (job_id,)).fetchone()
        return bytes(row[0]) if row else None

    def update_job(self, job_id: str, *, worker: str | None = None, **fields: Any) -> bool:
        """Set a job's status, done, total, result, error, payload, attempts or lease (and its updated_at); with
        `worker`, only while that worker holds the job. Return whether the job was updated."""
        values = job_update_values(fields)
        sets = ", ".join(f"{k} = ?" for k in values)
        where, params = "id = ?", [job_id]
        if worker is not None:
            where, params = where + " AND locked_by = ? AND status = 'running'", [job_id, worker]
        with self._transaction() as conn:
            return conn.execute(f"UPDATE jobs SET {sets} WHERE {where}", [*values.values(), *params]).rowcount > 0

    def get_job(self, job_id: str) -> JobRecord | None:
        """Return one job, or None."""
        row = self._conn().execute(f"SELECT {_JOB_SELECT} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_record(row) if row else None

    def list_jobs(self, *, collections: Sequence[str] | None = None, limit: int = 50) -> list[JobRecord]:
        """Return jobs of these collections (None: all), newest first."""
        where, params = "", list(collections or ())
        if collections is not None:
            where = f"WHERE collection IN ({','.join('?' * len(params))})" if params else "WHERE 0"
        rows = self._conn().execute(
            f"SELECT {_JOB_SELECT} FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?", [*params, limit]
        )
        return [_job_record(r) for r in rows]

    def claim_job(self, worker: str, *, lease_s: float, max_attempts: int) -> JobRecord | None:
        """Take the oldest job that is queued (past any retry delay) or whose worker's lease ran out, and hold it
        for `lease_s` seconds (None when there is none). A job whose lease ran out on its last attempt ends
        failed instead."""
        now = time.time()
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'failed', locked_by = NULL, locked_until = NULL, updated_at = ?,"
                " error = 'gave up after ' || attempts || ' attempts: the worker running it stopped before"
                " finishing' || COALESCE('; last error: ' || error, '')"
                " WHERE status = 'running' AND locked_until < ? AND attempts >= ?",
                (utc_now(), now, max_attempts),
            )
            # Uploads of one source run in the order they came: a job waits while an older one of its source is
            # open (queued, in its retry delay, or running), so an older upload never lands after a newer one.
            row = conn.execute(
                f"SELECT {_JOB_SELECT} FROM jobs WHERE ((status = 'queued' AND COALESCE(locked_until, 0) <= ?)"
                " OR (status = 'running' AND COALESCE(locked_until, 0) < ?))"
                " AND (json_extract(payload, '$.source') IS NULL OR NOT EXISTS (SELECT 1 FROM jobs o"
                " WHERE o.collection = jobs.collection AND o.status IN ('queued', 'running')"
                " AND json_extract(o.payload, '$.source') = json_extract(jobs.payload, '$.source')"
                " AND (o.created_at, o.rowid) < (jobs.created_at, jobs.rowid)))"
                " ORDER BY created_at, rowid LIMIT 1",
                (now, now),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_until = ?, locked_by = ?,"
                " updated_at = ? WHERE id = ?",
                (now + lease_s, worker, utc_now(), row[0]),
            )
        job = _job_record(row)
        job.status, job.attempts, job.locked_until, job.locked_by = "running", job.attempts + 1, now + lease_s, worker
        return job

    def renew_job(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend the lease of a job the worker holds; return False when it holds it no longer."""
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET locked_until = ? WHERE id = ? AND locked_by = ? AND status = 'running'",
                (time.time() + lease_s, job_id, worker),
            )
            return cur.rowcount > 0

    def job_counts(self) -> dict[str, int]:
        """Return how many jobs are in each status."""
        rows = self._conn().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        return {str(status): int(n) for status, n in rows}


_job_record = reader(JobRecord, _JOB_SELECT, payload=json.loads, result=json_or_none)
