"""Background ingestion: uploads are spooled to disk and queued as jobs in the store; a worker thread runs them.

Jobs are leased: a worker holds a job while it renews the lease (a heartbeat every third of it) and any process's
worker takes a job whose lease ran out, so a process that dies mid-job hands its job on, and a process that starts
never takes a job a live sibling is running. A job ends failed after `job_max_attempts` takes. Ingestion is
incremental, so a retried job does not repeat work already written, and its result covers every attempt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import threading
import time
import unicodedata
import uuid
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from archivist.app import Archivist
from archivist.ingest.pipeline import Progress
from archivist.store.base import JobRecord
from archivist.types import IngestReport, document_id_for

log = logging.getLogger("archivist.jobs")
#: Longest stored file name, in UTF-8 bytes (file systems allow 255; room is left for a disambiguating hash).
MAX_NAME_BYTES = 200
_OUTCOMES = ("added", "updated", "unchanged")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def upload_name(name: str, fallback: str = "document.txt", *, is_path: bool = True) -> str:
    """Return the user's file name fit to be a source and a file name: folders removed (or, for a name that is not
    a path, slashes replaced), control characters dropped, capped at MAX_NAME_BYTES keeping its extension. A name
    changed on the way gets a hash of the original, so two different names never become one."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1] if is_path else name
    # Category C: control, format, surrogate (undecodable bytes), private-use and unassigned characters.
    kept = "".join("_" if ch in "/\\" else ch for ch in base if unicodedata.category(ch)[0] != "C")
    cleaned = kept.strip().lstrip(".").strip()
    if cleaned and cleaned == base and len(base.encode("utf-8")) <= MAX_NAME_BYTES:
        return base
    if not base:
        return fallback
    tag = "~" + hashlib.sha256(base.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    path = PurePosixPath(cleaned or fallback)
    suffix = path.suffix if len(path.suffix) <= 16 else ""
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    room = MAX_NAME_BYTES - len((tag + suffix).encode("utf-8"))
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip()
    return f"{stem}{tag}{suffix}"


class _Stopping(Exception):
    """The process is shutting down or lost the job's lease: leave the job to the next worker."""


class JobRunner:
    """Queues ingestion jobs and runs them one at a time on a worker thread, each under a renewed lease."""

    def __init__(self, archivist: Archivist, spool: Path, poll_s: float = 0.5) -> None:
        self.archivist = archivist
        self.store = archivist.store
        self.spool = spool
        self.poll_s = poll_s
        self.lease_s = archivist.settings.job_lease_s
        self.max_attempts = archivist.settings.job_max_attempts
        #: who holds a job: host, process and this runner
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- queueing -----------------------------------------------------------------------------------

    def submit(
        self,
        collection: str,
        filename: str,
        data: bytes,
        *,
        source: str,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        key_id: str | None = None,
    ) -> JobRecord:
        """Spool an upload and queue its ingestion under `source` (re-sending a source replaces it); return the job."""
        job_id = uuid.uuid4().hex[:16]
        name = upload_name(filename)
        folder = self.spool / job_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        now = _now()
        job = JobRecord(
            id=job_id,
            kind="ingest",
            collection=collection,
            status="queued",
            payload={"file": name, "source": source, "title": title, "metadata": metadata or {}},
            created_at=now,
            updated_at=now,
            total=1,
            key_id=key_id,
        )
        self.store.create_job(job)
        self._wake.set()
        return job

    # -- running ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (it takes queued jobs and jobs whose worker's lease ran out)."""
        self._thread = threading.Thread(target=self._loop, name="archivist-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current document batch; an unfinished job goes back to the queue."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim_job(self.worker_id, lease_s=self.lease_s, max_attempts=self.max_attempts)
            except Exception:
                log.exception("could not read the job queue")
                job = None
            if job is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            lost = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(job, lost), name="archivist-lease", daemon=True)
            beat.start()
            try:
                self._run(job, lost)
            finally:
                lost.set()  # ends the heartbeat
                beat.join()

    def _heartbeat(self, job: JobRecord, done: threading.Event) -> None:
        """Renew the job's lease until `done` is set; set it when the lease is lost (another worker has the job)."""
        while not done.wait(self.lease_s / 3):
            try:
                held = self.store.renew_job(job.id, self.worker_id, self.lease_s)
            except Exception:
                log.exception("could not renew the lease of job %s", job.id)
                continue
            if not held:
                log.warning("job %s: lease lost to another worker; stopping", job.id)
                done.set()

    def _run(self, job: JobRecord, lost: threading.Event) -> None:
        folder = self.spool / job.id
        path = folder / str(job.payload["file"])
        source = str(job.payload["source"])
        # What earlier attempts wrote: a document they added shows as unchanged to this attempt.
        written: dict[str, str] = dict(job.payload.get("written") or {})
        report = IngestReport()
        last, checkpointed = 0.0, 0

        def progress(p: Progress) -> None:
            nonlocal last, checkpointed
            if self._stop.is_set() or lost.is_set():
                raise _Stopping
            outcomes = len(report.added) + len(report.updated) + len(report.unchanged)
            now = time.monotonic()
            if outcomes != checkpointed:
                # Each write is checkpointed, so a later attempt reports it as this job's work.
                checkpointed, last = outcomes, now
                payload = {**job.payload, "written": _merge(written, report)}
                self.store.update_job(
                    job.id, worker=self.worker_id, done=p.done, total=max(p.total, 1), payload=payload
                )
            elif now - last >= 0.25:
                last = now
                self.store.update_job(job.id, worker=self.worker_id, done=p.done, total=max(p.total, 1))

        try:
            if not path.is_file():
                raise FileNotFoundError(f"the upload of job {job.id} is gone from {folder}")
            self.archivist.pipeline().run(
                [path],
                progress=progress,
                collection=job.collection,
                source_name=lambda _: source,
                metadata=dict(job.payload.get("metadata") or {}),
                title=job.payload.get("title"),
                report=report,
            )
        except _Stopping:
            if not lost.is_set():
                # A clean shutdown is not a failed attempt: give the job back as it was taken.
                payload = {**job.payload, "written": _merge(written, report)}
                self.store.update_job(
                    job.id,
                    worker=self.worker_id,
                    status="queued",
                    attempts=job.attempts - 1,
                    locked_until=None,
                    locked_by=None,
                    payload=payload,
                )
                log.info("job %s left queued for the next worker", job.id)
            return
        except Exception as exc:
            self._failed(job, folder, f"{type(exc).__name__}: {exc}", written, report)
            return
        outcomes = _merge(written, report)
        result = {
            **report.counts(),
            **{name: sum(1 for o in outcomes.values() if o == name) for name in _OUTCOMES},
            "chunks_written": report.chunks_written,
            "documents": [
                {"source": s, "id": document_id_for(s, job.collection), "outcome": o} for s, o in outcomes.items()
            ],
            "skipped_items": [{"source": s.source, "reason": s.reason} for s in report.skipped],
            "failed_items": [{"source": s.source, "reason": s.reason} for s in report.failed],
            "seconds": round(report.seconds, 3),
            "attempts": job.attempts,
        }
        ok = bool(outcomes)
        error = None if ok else "; ".join(s.reason for s in report.skipped + report.failed) or "nothing ingested"
        if self.store.update_job(
            job.id,
            worker=self.worker_id,
            status="succeeded" if ok else "failed",
            done=1 if ok else 0,
            total=1,
            result=result,
            error=error,
            locked_until=None,
        ):
            shutil.rmtree(folder, ignore_errors=True)
        else:
            log.warning("job %s finished after its lease was lost; the worker now holding it reports it", job.id)

    def _failed(self, job: JobRecord, folder: Path, error: str, written: dict[str, str], report: IngestReport) -> None:
        """Queue the job again after a delay, or end it failed once it has used its attempts."""
        payload = {**job.payload, "written": _merge(written, report)}
        if job.attempts < self.max_attempts:
            delay = min(2.0**job.attempts, self.lease_s)
            log.warning("job %s attempt %d failed (%s); retrying in %.0fs", job.id, job.attempts, error, delay)
            self.store.update_job(
                job.id,
                worker=self.worker_id,
                status="queued",
                error=error,
                payload=payload,
                locked_until=time.time() + delay,
                locked_by=None,
            )
            return
        log.error("job %s failed after %d attempts: %s", job.id, job.attempts, error)
        if self.store.update_job(
            job.id, worker=self.worker_id, status="failed", error=error, payload=payload, locked_until=None
        ):
            shutil.rmtree(folder, ignore_errors=True)


def _merge(written: dict[str, str], report: IngestReport) -> dict[str, str]:
    """Return {source: outcome} over all attempts: what an earlier attempt wrote keeps that outcome."""
    merged = dict(written)
    for outcome in _OUTCOMES:
        for source in getattr(report, outcome):
            if merged.get(source, "unchanged") == "unchanged":
                merged[source] = outcome
    return merged
