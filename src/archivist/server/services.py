"""What the endpoints share: the app, key checks, rate limits, jobs, the request log, metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from archivist.answer.answerer import Answerer
from archivist.app import Archivist
from archivist.retrieve.search import SearchPipeline
from archivist.server.auth import Authenticator
from archivist.server.jobs import JobRunner
from archivist.server.metrics import Metrics
from archivist.server.ratelimit import RateLimiter
from archivist.server.usage import RequestLog


@dataclass
class Services:
    """Components built once per server process and shared by every request."""

    archivist: Archivist
    auth: Authenticator
    limiter: RateLimiter
    #: failed authentications per client address
    auth_failures: RateLimiter
    jobs: JobRunner
    request_log: RequestLog
    metrics: Metrics
    _searcher: SearchPipeline | None = None
    _answerer: Answerer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, archivist: Archivist, spool: Path) -> Services:
        """Return the services of one app over `archivist`, spooling uploads under `spool`."""
        store = archivist.store
        return cls(
            archivist=archivist,
            auth=Authenticator(store),
            limiter=RateLimiter(archivist.settings.rate_limit_per_minute),
            auth_failures=RateLimiter(archivist.settings.auth_failures_per_minute),
            jobs=JobRunner(archivist, spool),
            request_log=RequestLog(store),
            metrics=Metrics(store),
        )

    def searcher(self) -> SearchPipeline:
        """Return the search pipeline, built on first use."""
        with self._lock:
            if self._searcher is None:
                self._searcher = self.archivist.searcher()
            return self._searcher

    def answerer(self) -> Answerer:
        """Return the answerer, built on first use (it loads the embedding model)."""
        with self._lock:
            if self._answerer is None:
                self._answerer = Answerer.from_app(self.archivist, timeout_s=self.archivist.settings.llm_timeout_s)
            return self._answerer
