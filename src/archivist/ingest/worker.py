"""The ingestion worker: takes jobs from the store's queue and runs them, in `archivist worker` or inside `serve`.

Jobs are leased: a worker holds a job while it renews the lease (a heartbeat every third of it) and any process's
worker takes a job whose lease ran out, so a process that dies mid-job hands its job on, and a process that starts
never takes a job a live sibling is running. A job ends failed after `max_attempts` takes. Ingestion is
incremental, so a retried job does not repeat work already written, and its result covers every attempt. A job's
input (an upload's bytes) is read from the store, so workers may run on any host that reaches it.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archivist.ingest.pipeline import IngestPipeline, Progress
from archivist.store.protocols import JobNotifier, JobQueue
from archivist.store.records import JobRecord
from archivist.types import IngestReport, Skipped, document_id_for

log = logging.getLogger("archivist.jobs")
_OUTCOMES = ("added", "updated", "unchanged")


class _Stopping(Exception):
    """The process is shutting down or lost the job's lease: leave the job to the next worker."""


class JobRunner:
    """Runs the queue's ingestion jobs one at a time on a worker thread, each under a renewed lease."""

    def __init__(
        self,
        queue: JobQueue,
        pipeline: Callable[[], IngestPipeline],
        *,
        lease_s: float = 60.0,
        max_attempts: int = 3,
        poll_s: float = 0.5,
    ) -> None:
        self.store = queue
        self._pipeline = pipeline
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        #: who holds a job: host, process and this runner
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        #: jobs this runner finished (succeeded or failed for good)
        self.finished = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._held: JobRecord | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def wake(self) -> None:
        """Look at the queue now instead of at the next poll (a job was just queued in this process)."""
        self._wake.set()

    # -- running ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (it takes queued jobs and jobs whose worker's lease ran out)."""
        if isinstance(self.store, JobNotifier):
            # A queue that announces new jobs wakes this worker at once; polling still finds the rest.
            try:
                self._unsubscribe = self.store.on_job_queued(self.wake)
            except Exception:
                log.exception("could not listen for queued jobs; polling every %.1fs", self.poll_s)
        self._thread = threading.Thread(target=self._loop, name="archivist-jobs", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Take no further job and leave the current one after its document batch (`stop` waits for that)."""
        self._stop.set()
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current document batch; an unfinished job goes back to the queue."""
        self.request_stop()
        if self._thread is None:
            return
        self._thread.join(timeout_s)
        held = self._held
        if self._thread.is_alive() and held is not None:
            # Still inside one long step (a big document's embedding): give the job back now rather than let it
            # wait out its lease and use up an attempt. The step's own write is harmless: writes are incremental.
            self._give_back(held)

    def join(self) -> None:
        """Wait until the worker thread ends (after `stop`)."""
        if self._thread is not None:
            self._thread.join()

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
            self._held = job
            log.info("job %s: ingesting %s (attempt %d)", job.id, job.payload.get("source"), job.attempts)
            try:
                self._run(job, lost)
            finally:
                self._held = None
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

    def _give_back(self, job: JobRecord, written: dict[str, str] | None = None) -> bool:
        """Put a held job back in the queue as it was taken (a shutdown is not a failed attempt)."""
        fields: dict[str, Any] = {"payload": {**job.payload, "written": written}} if written is not None else {}
        return self.store.update_job(
            job.id,
            worker=self.worker_id,
            status="queued",
            attempts=job.attempts - 1,
            locked_until=None,
            locked_by=None,
            **fields,
        )

    def _run(self, job: JobRecord, lost: threading.Event) -> None:
        # The upload's bytes come from the store; the file the loaders read is this worker's own scratch copy.
        with tempfile.TemporaryDirectory(prefix=f"archivist-job-{job.id}-") as scratch:
            self._run_in(job, lost, Path(scratch))

    def _run_in(self, job: JobRecord, lost: threading.Event, scratch: Path) -> None:
        path = scratch / str(job.payload["file"])
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
            fields: dict[str, Any] = {"done": p.done, "total": max(p.total, 1)}
            if outcomes != checkpointed:
                # Each write is checkpointed, so a later attempt reports it as this job's work.
                checkpointed = outcomes
                fields["payload"] = {**job.payload, "written": _merge(written, report)}
            elif now - last < 0.25:
                return
            last = now
            if not self.store.update_job(job.id, worker=self.worker_id, **fields):
                lost.set()  # another worker took the job (or it was given back): stop writing for it
                raise _Stopping

        data = self.store.job_input(job.id)
        if data is None:
            # No attempt can bring it back: a job queued by an Archivist that kept uploads on the API server's disk
            # (before jobs carried their input), or one whose input was deleted.
            missing = "its upload is not in the store (queued by an older Archivist, or deleted): upload it again"
            self._failed(job, missing, written, report, retry=False)
            return
        try:
            path.write_bytes(data)
            self._pipeline().run(
                [path],
                progress=progress,
                collection=job.collection,
                source_name=lambda _: source,
                metadata=dict(job.payload.get("metadata") or {}),
                title=job.payload.get("title"),
                report=report,
            )
        except _Stopping:
            if not lost.is_set() and self._give_back(job, _merge(written, report)):
                log.info("job %s left queued for the next worker", job.id)
            return
        except Exception as exc:
            self._failed(job, f"{type(exc).__name__}: {exc}", written, report)
            return
        if report.failed and job.attempts < self.max_attempts:
            # A document that failed to embed or store (a model server down, a locked store) may well go in on
            # the next attempt; what was written is not redone.
            self._failed(job, _summary(report.failed), written, report)
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
            "worker": self.worker_id,
        }
        ok = bool(outcomes)
        error = None if ok else _summary(report.skipped + report.failed) or "nothing ingested"
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
            self.finished += 1
            log.info("job %s %s: %s", job.id, "succeeded" if ok else "failed", report.counts())
        else:
            log.warning("job %s finished after its lease was lost; the worker now holding it reports it", job.id)

    def _failed(
        self, job: JobRecord, error: str, written: dict[str, str], report: IngestReport, *, retry: bool = True
    ) -> None:
        """Queue the job again after a delay, or end it failed once it has used its attempts (or cannot succeed)."""
        payload = {**job.payload, "written": _merge(written, report)}
        if retry and job.attempts < self.max_attempts:
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
            self.finished += 1


def _summary(items: list[Skipped], limit: int = 500) -> str:
    """Return the distinct reasons of skipped or failed documents, counted, in at most about `limit` characters."""
    reasons = Counter(s.reason for s in items)
    parts: list[str] = []
    used = 0
    for reason, n in reasons.most_common():
        part = f"{reason} ({n} documents)" if n > 1 else reason
        if parts and used + len(part) > limit:
            parts.append(f"and {len(reasons) - len(parts)} other reasons")
            break
        parts.append(part[:limit])
        used += len(part) + 2
    return "; ".join(parts)


def _merge(written: dict[str, str], report: IngestReport) -> dict[str, str]:
    """Return {source: outcome} over all attempts: what an earlier attempt wrote keeps that outcome."""
    merged = dict(written)
    for outcome in _OUTCOMES:
        for source in getattr(report, outcome):
            if merged.get(source, "unchanged") == "unchanged":
                merged[source] = outcome
    return merged
