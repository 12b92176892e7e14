"""Background ingestion: uploads are spooled to disk and queued as jobs in the store; one worker thread runs them.

Jobs survive restarts: a job queued (or cut short by shutdown) is run by the next process that starts, and
ingestion is incremental, so work already written is not repeated.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from archivist.app import Archivist
from archivist.ingest.pipeline import Progress
from archivist.store.base import JobRecord
from archivist.types import document_id_for

log = logging.getLogger("archivist.jobs")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def safe_filename(name: str, fallback: str = "document.txt") -> str:
    """Return a file name without folders or odd characters, keeping its suffix."""
    base = Path(name.replace("\\", "/")).name
    cleaned = _UNSAFE.sub("_", base).strip("._")
    return cleaned[:120] or fallback


class _Stopping(Exception):
    """The server is shutting down: leave the job for the next start."""


class JobRunner:
    """Queues ingestion jobs and runs them one at a time on a worker thread."""

    def __init__(self, archivist: Archivist, spool: Path, poll_s: float = 0.5) -> None:
        self.archivist = archivist
        self.store = archivist.store
        self.spool = spool
        self.poll_s = poll_s
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
        name = safe_filename(filename)
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
        """Requeue jobs a stopped process left running, then start the worker."""
        requeued = self.store.requeue_jobs()
        if requeued:
            log.info("resuming %d ingestion job(s) left by the previous run", requeued)
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
                job = self.store.claim_job()
            except Exception:
                log.exception("could not read the job queue")
                job = None
            if job is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: JobRecord) -> None:
        folder = self.spool / job.id
        path = folder / str(job.payload["file"])
        source = str(job.payload["source"])
        last = 0.0

        def progress(p: Progress) -> None:
            nonlocal last
            if self._stop.is_set():
                raise _Stopping
            now = time.monotonic()
            if now - last >= 0.25:
                last = now
                self.store.update_job(job.id, done=p.done, total=max(p.total, 1))

        try:
            if not path.is_file():
                raise FileNotFoundError(f"the upload of job {job.id} is gone from {folder}")
            report = self.archivist.pipeline().run(
                [path],
                progress=progress,
                collection=job.collection,
                source_name=lambda _: source,
                metadata=dict(job.payload.get("metadata") or {}),
                title=job.payload.get("title"),
            )
        except _Stopping:
            self.store.update_job(job.id, status="queued")
            log.info("job %s left queued for the next start", job.id)
            return
        except Exception as exc:
            log.exception("job %s failed", job.id)
            self.store.update_job(job.id, status="failed", error=f"{type(exc).__name__}: {exc}")
            shutil.rmtree(folder, ignore_errors=True)
            return
        result = {
            **report.counts(),
            "chunks_written": report.chunks_written,
            "documents": [
                {"source": s, "id": document_id_for(s, job.collection)} for s in report.added + report.updated
            ],
            "skipped_items": [{"source": s.source, "reason": s.reason} for s in report.skipped],
            "failed_items": [{"source": s.source, "reason": s.reason} for s in report.failed],
            "seconds": round(report.seconds, 3),
        }
        ok = bool(report.added or report.updated or report.unchanged)
        error = None if ok else "; ".join(s.reason for s in report.skipped + report.failed) or "nothing ingested"
        self.store.update_job(
            job.id,
            status="succeeded" if ok else "failed",
            done=1 if ok else 0,
            total=1,
            result=json.loads(json.dumps(result)),
            error=error,
        )
        shutil.rmtree(folder, ignore_errors=True)
