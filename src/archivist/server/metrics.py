"""Prometheus metrics of one app, in its own registry (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from archivist.store.protocols import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """HTTP, LLM and store metrics, rendered in the Prometheus text format."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "archivist_http_requests", "HTTP requests served", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "archivist_http_request_duration_seconds",
            "Time to the end of the response",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.llm_tokens = Counter("archivist_llm_tokens", "LLM tokens used by answers", registry=self.registry)
        self.llm_cost = Counter("archivist_llm_cost_usd", "LLM cost of answers in dollars", registry=self.registry)
        self.disconnects = Counter(
            "archivist_client_disconnects",
            "Requests whose client hung up before the response ended",
            ["route"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "archivist_rate_limited", "Requests refused by a key's rate limit", registry=self.registry
        )
        documents = Gauge("archivist_documents", "Documents stored", registry=self.registry)
        documents.set_function(lambda: float(store.count_documents()))
        self.jobs = Gauge("archivist_jobs", "Ingestion jobs by status", ["status"], registry=self.registry)
        self.store = store

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text exposition format."""
        counts = self.store.job_counts()
        for status in ("queued", "running", "succeeded", "failed"):
            self.jobs.labels(status).set(counts.get(status, 0))
        return bytes(generate_latest(self.registry))
