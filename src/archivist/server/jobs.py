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
import re
import shutil
import socket
import threading
import time
import unicodedata
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from archivist.app import Archivist
from archivist.ingest.pipeline import Progress
from archivist.store.base import JobRecord
from archivist.types import IngestReport, Skipped, document_id_for

log = logging.getLogger("archivist.jobs")
#: Longest stored file name, in UTF-8 bytes (file systems allow 255; room is left for a disambiguating hash).
MAX_NAME_BYTES = 200
_OUTCOMES = ("added", "updated", "unchanged")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def upload_name(name: str, fallback: str = "document.txt", *, is_path: bool = True) -> str:
    """Return the user's file name fit to be a source and a file name (see `_clean_name`); a name changed on the way
    gets a hash of the original, so two different names never become one."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1] if is_path else name
    cleaned = _clean_name(base)
    stem, suffix = _split_suffix(cleaned)
    if stem and cleaned == base and len(base.encode("utf-8")) <= MAX_NAME_BYTES and not _TAGGED.search(base):
        return base
    if not name:
        return fallback
    tag = "~" + hashlib.sha256((base or name).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    if not stem:
        stem, fallback_suffix = _split_suffix(fallback)
        suffix = suffix or fallback_suffix
    room = MAX_NAME_BYTES - len((tag + suffix).encode("utf-8"))
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip()
    return f"{stem}{tag}{suffix}"


#: A name that already looks like one `upload_name` tagged: tagged again, so nobody can forge another's result.
_TAGGED = re.compile(r"~[0-9a-f]{8}(\.[^.]*)?$")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,16}$")


def _clean_name(name: str) -> str:
    """Return a name without control, format, surrogate (undecodable bytes), private-use or unassigned characters,
    slashes, surrounding spaces or leading dots (its stem may end up empty: ".md")."""
    kept = "".join("_" if ch in "/\\" else ch for ch in name if unicodedata.category(ch)[0] != "C")
    stem, suffix = _split_suffix(kept.strip())
    return stem.strip().lstrip(".").strip() + suffix


def _split_suffix(name: str) -> tuple[str, str]:
    """Return (stem, extension with its dot), the extension empty when the name has none."""
    m = _SUFFIX.search(name)
    return (name[: m.start()], m.group()) if m else (name, "")


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
        #: how often an idle worker removes the uploads of jobs that ended
        self.sweep_every_s = 60.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._held: JobRecord | None = None

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
        """Spool an upload (`filename` as `upload_name` made it) and queue its ingestion under `source` (re-sending a
        source replaces it); return the job."""
        if filename != Path(filename).name or not filename or len(filename.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(f"not a safe upload file name (make it with upload_name): {filename!r}")
        job_id = uuid.uuid4().hex[:16]
        name = filename
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
        if self._thread is None:
            return
        self._thread.join(timeout_s)
        held = self._held
        if self._thread.is_alive() and held is not None:
            # Still inside one long step (a big document's embedding): give the job back now rather than let it
            # wait out its lease and use up an attempt. The step's own write is harmless: writes are incremental.
            self._give_back(held)

    def _loop(self) -> None:
        last_sweep = 0.0
        while not self._stop.is_set():
            try:
                job = self.store.claim_job(self.worker_id, lease_s=self.lease_s, max_attempts=self.max_attempts)
            except Exception:
                log.exception("could not read the job queue")
                job = None
            if job is None:
                if time.monotonic() - last_sweep > self.sweep_every_s:
                    last_sweep = time.monotonic()
                    self._sweep_spool()
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            lost = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(job, lost), name="archivist-lease", daemon=True)
            beat.start()
            self._held = job
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

    def _sweep_spool(self) -> None:
        """Remove the uploads of jobs that ended (a job failed by the queue after its worker died leaves its own)."""
        if not self.spool.is_dir():
            return
        for folder in self.spool.iterdir():
            try:
                job = self.store.get_job(folder.name)
            except Exception:
                log.exception("could not read job %s", folder.name)
                return
            if job is not None and job.status in ("succeeded", "failed"):
                shutil.rmtree(folder, ignore_errors=True)

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
            if not lost.is_set() and self._give_back(job, _merge(written, report)):
                log.info("job %s left queued for the next worker", job.id)
            return
        except Exception as exc:
            self._failed(job, folder, f"{type(exc).__name__}: {exc}", written, report)
            return
        if report.failed and job.attempts < self.max_attempts:
            # A document that failed to embed or store (a model server down, a locked store) may well go in on
            # the next attempt; what was written is not redone.
            self._failed(job, folder, _summary(report.failed), written, report)
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
