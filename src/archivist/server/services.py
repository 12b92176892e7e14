"""What the endpoints share: the app, key checks, rate limits, jobs, the request log, metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from archivist.answer.answerer import Answerer
from archivist.app import Archivist
from archivist.guard.pii import PiiDetector
from archivist.ingest.uploads import enqueue_upload
from archivist.ingest.worker import JobRunner
from archivist.retrieve.search import SearchPipeline
from archivist.server.agent_runs import AgentDrivers
from archivist.server.auth import Authenticator
from archivist.server.metrics import Metrics
from archivist.server.ratelimit import RateLimiter
from archivist.server.usage import RequestLog
from archivist.store.records import JobRecord


@dataclass
class Services:
    """Components built once per server process and shared by every request."""

    archivist: Archivist
    auth: Authenticator
    limiter: RateLimiter
    #: failed authentications per client address
    auth_failures: RateLimiter
    #: ingestion workers run in this process (none: `archivist worker` processes run the queue)
    workers: list[JobRunner]
    request_log: RequestLog
    metrics: Metrics
    #: the threads that drive agent runs for the HTTP API (bounded: a full pool refuses a run)
    agent_drivers: AgentDrivers
    _searcher: SearchPipeline | None = None
    _answerer: Answerer | None = None
    _pii: PiiDetector | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, archivist: Archivist, workers: int) -> Services:
        """Return the services of one app over `archivist`, with `workers` ingestion workers of its own."""
        store = archivist.store
        return cls(
            archivist=archivist,
            auth=Authenticator(store),
            limiter=RateLimiter(archivist.settings.rate_limit_per_minute),
            auth_failures=RateLimiter(archivist.settings.auth_failures_per_minute),
            workers=[archivist.job_runner() for _ in range(workers)],
            request_log=RequestLog(store),
            metrics=Metrics(store),
            agent_drivers=AgentDrivers(archivist.settings.agent_concurrency),
        )

    def enqueue(
        self,
        collection: str,
        filename: str,
        data: bytes,
        *,
        source: str,
        title: str | None,
        metadata: dict[str, Any],
        key_id: str | None,
    ) -> JobRecord:
        """Queue an upload's ingestion (its bytes in the store) and wake this process's workers; return the job."""
        job = enqueue_upload(
            self.archivist.store,
            collection,
            filename,
            data,
            source=source,
            title=title,
            metadata=metadata,
            key_id=key_id,
        )
        for worker in self.workers:
            worker.wake()
        return job

    def searcher(self) -> SearchPipeline:
        """Return the search pipeline, built on first use."""
        with self._lock:
            if self._searcher is None:
                self._searcher = self.archivist.searcher()
            return self._searcher

    def pii(self) -> PiiDetector:
        """Return the PII detector uploads to `pii=redact` collections are redacted with, built on first use."""
        with self._lock:
            if self._pii is None:
                self._pii = PiiDetector()
            return self._pii

    def answerer(self) -> Answerer:
        """Return the answerer, built on first use (it loads the embedding model)."""
        with self._lock:
            if self._answerer is None:
                self._answerer = self.archivist.answerer(timeout_s=self.archivist.settings.llm_timeout_s)
            return self._answerer
