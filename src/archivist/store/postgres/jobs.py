"""The job queue in PostgreSQL: jobs claimed with `FOR UPDATE SKIP LOCKED` under a lease, and workers woken by
`LISTEN/NOTIFY` when a job is queued (polling stays the fallback).

Leases are measured on the server's clock (`statement_timestamp()`), so workers on hosts whose clocks disagree
still agree on when a lease ran out. A worker writes to a job only while it is the job's holder (`locked_by`, an id
unique to each runner) and the job is running: once another worker has taken it over, the first one's writes,
progress and result alike, change nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from archivist.store.postgres.database import Connection, PostgresDatabase, driver_message
from archivist.store.records import JobRecord
from archivist.store.rows import job_update_values, json_or_none, reader, utc_now

log = logging.getLogger("archivist.jobs")

#: the channel a queued job is announced on (its id is the payload)
CHANNEL = "archivist_jobs"
_COLUMNS = (
    "id, kind, collection, status, payload, created_at, updated_at, done, total, result, error, key_id, attempts,"
    " locked_until, locked_by"
)
_JOB_SELECT = ", ".join(f"jobs.{c.strip()}" for c in _COLUMNS.split(","))
#: the server's time in epoch seconds, fixed for the statement (a lease's start and its check agree)
_NOW = "extract(epoch FROM statement_timestamp())::double precision"
_OPEN = "status IN ('queued', 'running')"
#: ended jobs deleted per enqueue at most: a backlog of old jobs is cleared over a few enqueues, none waits long
_ROTATE_BATCH = 200


class PostgresJobs(PostgresDatabase):
    """The `JobQueue` of a PostgreSQL database, with `on_job_queued` to wake idle workers at once."""

    _job_listener: JobListener | None = None

    def create_job(self, job: JobRecord, data: bytes | None = None) -> None:
        """Store a new job, with its input bytes if it has some (dropped when the job ends). An upload equal to the
        newest job not yet ended for the same source (same bytes, payload, collection and key) is not queued
        again: `job` is filled in with that job instead (its id, status and attempts)."""
        source = job.payload.get("source")
        key = _upload_key(job, data) if data is not None and isinstance(source, str) else None
        with self._transaction() as conn:
            self._rotate_jobs(conn)
            if key is not None:
                # One enqueue of a source at a time: the newest open job of it is then known while this one is added.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(job.collection, str(source)),))
                newest = conn.execute(
                    f"SELECT {_JOB_SELECT}, upload_key FROM jobs WHERE collection = %s AND source = %s AND {_OPEN}"
                    " ORDER BY seq DESC LIMIT 1",
                    (job.collection, source),
                ).fetchone()
                if newest is not None and newest[-1] == key:
                    existing = _job_record(newest[:-1])
                    for field in dataclasses.fields(JobRecord):
                        setattr(job, field.name, getattr(existing, field.name))
                    return
                # An equal upload queued before a different one of the same source: this one must run after that
                # one (the last upload wins), so it is a new job, and the older one's key passes to it.
                conn.execute(f"UPDATE jobs SET upload_key = NULL WHERE upload_key = %s AND {_OPEN}", (key,))
            conn.execute(
                f"INSERT INTO jobs ({_COLUMNS}, source, upload_key)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    job.id,
                    job.kind,
                    job.collection,
                    job.status,
                    json.dumps(job.payload, ensure_ascii=False),
                    job.created_at,
                    job.updated_at,
                    job.done,
                    job.total,
                    json.dumps(job.result) if job.result is not None else None,
                    job.error,
                    job.key_id,
                    job.attempts,
                    job.locked_until,
                    job.locked_by,
                    source if isinstance(source, str) else None,
                    key,
                ),
            )
            if data is not None:
                conn.execute("INSERT INTO job_inputs (job_id, data) VALUES (%s, %s)", (job.id, data))
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, job.id))  # delivered when this commits

    def _rotate_jobs(self, conn: Connection) -> None:
        """Delete the oldest ended jobs past the retention (their inputs went when they ended)."""
        cutoff = (datetime.now(UTC) - timedelta(days=self._target.job_retention_days)).isoformat(timespec="seconds")
        conn.execute(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE status IN ('succeeded', 'failed')"
            " AND updated_at < %s ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED)",
            (cutoff, _ROTATE_BATCH),
        )

    def job_input(self, job_id: str) -> bytes | None:
        """Return the input bytes of a job that has not ended, or None."""
        row = self._fetchone("SELECT data FROM job_inputs WHERE job_id = %s", (job_id,))
        return bytes(row[0]) if row else None

    def update_job(self, job_id: str, *, worker: str | None = None, **fields: Any) -> bool:
        """Set a job's status, done, total, result, error, payload, attempts or lease (and its updated_at); with
        `worker`, only while that worker holds the job. Return whether the job was updated."""
        values = job_update_values(fields)
        sets = ", ".join(f"{k} = %s" for k in values)  # names from JOB_FIELDS only
        where, params = "id = %s", [job_id]
        if worker is not None:
            where, params = where + " AND locked_by = %s AND status = 'running'", [job_id, worker]
        with self._transaction() as conn:
            updated = conn.execute(f"UPDATE jobs SET {sets} WHERE {where}", [*values.values(), *params]).rowcount > 0
            if updated and fields.get("status") == "queued" and fields.get("locked_until") is None:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, job_id))  # given back: ready for another worker
            return updated

    def get_job(self, job_id: str) -> JobRecord | None:
        """Return one job, or None."""
        row = self._fetchone(f"SELECT {_JOB_SELECT} FROM jobs WHERE id = %s", (job_id,))
        return _job_record(row) if row else None

    def list_jobs(self, *, collections: Sequence[str] | None = None, limit: int = 50) -> list[JobRecord]:
        """Return jobs of these collections (None: all), newest first."""
        where, params = "", []
        if collections is not None:
            where, params = "WHERE collection = ANY(%s)", [list(collections)]
        rows = self._fetchall(
            f"SELECT {_JOB_SELECT} FROM jobs {where} ORDER BY created_at DESC, seq DESC LIMIT %s", [*params, limit]
        )
        return [_job_record(r) for r in rows]

    def claim_job(self, worker: str, *, lease_s: float, max_attempts: int) -> JobRecord | None:
        """Take the oldest job that is queued (past any retry delay) or whose worker's lease ran out, and hold it
        for `lease_s` seconds (None when there is none). A job whose lease ran out on its last attempt ends
        failed instead."""
        with self._transaction() as conn:
            # Rows another worker is claiming or ending are skipped, never waited for: each takes a different job.
            conn.execute(
                "UPDATE jobs SET status = 'failed', locked_by = NULL, locked_until = NULL, updated_at = %s,"
                " error = 'gave up after ' || attempts || ' attempts: the worker running it stopped before"
                " finishing' || COALESCE('; last error: ' || error, '')"
                f" WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND locked_until < {_NOW}"
                " AND attempts >= %s FOR UPDATE SKIP LOCKED)",
                (utc_now(), max_attempts),
            )
            # Uploads of one source run in the order they came: a job waits while an older one of its source is
            # open (queued, in its retry delay, or running), so an older upload never lands after a newer one.
            row = conn.execute(
                f"WITH next AS (SELECT id FROM jobs WHERE {_OPEN} AND ("
                f"(status = 'queued' AND COALESCE(locked_until, 0) <= {_NOW})"
                f" OR (status = 'running' AND COALESCE(locked_until, 0) < {_NOW} AND attempts < %s))"
                " AND (source IS NULL OR NOT EXISTS (SELECT 1 FROM jobs o WHERE o.collection = jobs.collection"
                " AND o.source = jobs.source AND o.status IN ('queued', 'running')"
                " AND (o.created_at, o.seq) < (jobs.created_at, jobs.seq)))"
                " ORDER BY created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
                f" UPDATE jobs SET status = 'running', attempts = jobs.attempts + 1, locked_until = {_NOW} + %s,"
                f" locked_by = %s, updated_at = %s FROM next WHERE jobs.id = next.id RETURNING {_JOB_SELECT}",
                (max_attempts, lease_s, worker, utc_now()),
            ).fetchone()
        return _job_record(row) if row else None

    def renew_job(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend the lease of a job the worker holds; return False when it holds it no longer."""
        with self._transaction() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET locked_until = {_NOW} + %s WHERE id = %s AND locked_by = %s AND status = 'running'",
                (lease_s, job_id, worker),
            )
            return cur.rowcount > 0

    def job_counts(self) -> dict[str, int]:
        """Return how many jobs are in each status."""
        return {
            str(status): int(n) for status, n in self._fetchall("SELECT status, count(*) FROM jobs GROUP BY status")
        }

    def on_job_queued(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (on a listener thread) each time a job is queued or given back, from any process, until
        the returned function is called; return that function. Returns once the listener listens."""
        if self._job_listener is None:
            # The pool's own connection settings (autocommit, no prepared statements, connect timeout), given once.
            conninfo, kwargs = self._pool.conninfo, self._pool.kwargs
            assert isinstance(conninfo, str) and isinstance(kwargs, dict), "the pool is built from fixed settings"
            self._job_listener = JobListener(conninfo, kwargs)
        return self._job_listener.subscribe(callback)

    def close(self) -> None:
        """Release connections (and stop the listener, if one was started)."""
        if self._job_listener is not None:
            self._job_listener.stop()
            self._job_listener = None
        super().close()


class JobListener:
    """One connection of its own that LISTENs on the queue's channel, and a thread calling the subscribers on each
    notification. A lost connection is opened again; meanwhile workers find jobs by polling."""

    def __init__(self, conninfo: str, kwargs: dict[str, Any]) -> None:
        self._conninfo, self._kwargs = conninfo, kwargs
        self._subscribers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="archivist-job-listener", daemon=True)
        self._thread.start()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Add a subscriber; return the function that removes it (waits up to 10 s for the listener first)."""
        with self._lock:
            self._subscribers.append(callback)
        self._listening.wait(10.0)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def stop(self) -> None:
        """Stop listening (within about half a second) and close the connection."""
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, **self._kwargs) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    self._notify()  # jobs queued while no connection listened
                    while not self._stop.is_set():
                        # Returns after the timeout without a notification, so a stop is seen.
                        for _ in conn.notifies(timeout=0.5):
                            self._notify()
            except psycopg.Error as exc:
                log.warning("job notifications lost (%s); workers poll until they are back", driver_message(exc))
                self._stop.wait(1.0)

    def _notify(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback()
            except Exception:
                log.exception("a job notification's subscriber failed")


def _upload_key(job: JobRecord, data: bytes) -> str:
    """Return what names an upload: its kind, collection, key, payload and bytes, hashed."""
    head = json.dumps([job.kind, job.collection, job.key_id, job.payload], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(head.encode() + b"\0" + hashlib.sha256(data).digest()).hexdigest()


def _lock_id(collection: str, source: str) -> int:
    """Return the advisory lock number of one source in one collection (64 bits of a hash)."""
    digest = hashlib.sha256(f"archivist-job\0{collection}\0{source}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_job_record = reader(JobRecord, _JOB_SELECT, payload=json.loads, result=json_or_none)
