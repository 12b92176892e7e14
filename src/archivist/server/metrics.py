"""Prometheus metrics of one app: its own registry, or the files every worker process of `serve --workers N` shares.

With `PROMETHEUS_MULTIPROC_DIR` set (by `serve --workers N`, before its worker processes start), prometheus_client
writes each process's counters and histograms to files in that folder, and a scrape, whichever process serves it,
reads them all (`MultiProcessCollector`): one scrape reports the whole server. Values read from the store (documents,
jobs) are the same from every process and are read at scrape; process metrics are read from /proc for every live
worker process, labelled by pid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from archivist import observe
from archivist.store.protocols import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The variable prometheus_client reads (once, at import) to write metrics to files shared by processes.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: From a 1 ms cached query embedding to a 60 s model answer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_JOB_STATUSES = ("queued", "running", "succeeded", "failed")
#: The gauge whose per-pid samples name the live worker processes (its files go when a process is marked dead).
_PROCESS_GAUGE = "archivist_server_process"


class Metrics:
    """HTTP, LLM, store, latency and process metrics, rendered in the Prometheus text format."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
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
        self.search_latency = Histogram(
            "archivist_search_duration_seconds",
            "Time of one search: expansion, retrieval, fusion and reranking (answers' searches included)",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.embed_latency = Histogram(
            "archivist_embed_duration_seconds",
            "Time of one embedding call: a query (cached or not) or a batch of document chunks",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.answer_latency = Histogram(
            "archivist_answer_duration_seconds",
            "Time of one whole answer (not streamed): search, refusal check, model call and citation checks",
            ["mode"],
            buckets=LATENCY_BUCKETS,
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
        # One sample per live process in multiprocess mode ("liveall": a process marked dead drops out).
        Gauge(
            _PROCESS_GAUGE,
            "1 for each live server process (labelled by pid with serve --workers N)",
            registry=self.registry,
            multiprocess_mode="liveall",
        ).set(1)
        self._store_collector = _StoreCollector(store)
        if self.multiprocess_dir is None:
            self.registry.register(self._store_collector)
            ProcessCollector(registry=self.registry)
        self._tracer: _LatencyTracer | None = None
        self._previous_tracer: observe.Tracer | None = None

    def start(self) -> None:
        """Time the spans of searches, embeddings and answers (passing every span on to a tracer installed before)."""
        if self._tracer is not None:
            return
        self._tracer = _LatencyTracer(self, None)
        self._tracer.inner = self._previous_tracer = observe.use_tracer(self._tracer)

    def stop(self) -> None:
        """Stop timing spans; in multiprocess mode, mark this process dead (its live-only samples go)."""
        if self._tracer is not None:
            current = observe.use_tracer(None)
            # Another app installed its tracer over ours (tests run several apps in one process): leave it.
            observe.use_tracer(self._previous_tracer if current is self._tracer else current)
            self._tracer = None
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]  # untyped upstream

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text exposition format (every worker process's, in multiprocess
        mode)."""
        if self.multiprocess_dir is None:
            return bytes(generate_latest(self.registry))
        # A registry per scrape, as prometheus_client's multiprocess mode asks: the files are the state.
        files = MultiProcessCollector(None, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        pids = []
        for pid in _live_pids(files):
            if _alive(pid):
                pids.append(pid)
            else:  # killed before it could say so: its counts stay in the totals, its live-only samples go
                mark_process_dead(pid, self.multiprocess_dir)  # type: ignore[no-untyped-call]
        registry = CollectorRegistry()
        registry.register(files)
        registry.register(self._store_collector)
        registry.register(_WorkerProcesses(pids))
        return bytes(generate_latest(registry))


def _live_pids(files: MultiProcessCollector) -> list[str]:
    """Return the pids of the worker processes that have not been marked dead, as their files name them."""
    return sorted(
        {
            sample.labels["pid"]
            for family in files.collect()  # type: ignore[no-untyped-call]
            if family.name == _PROCESS_GAUGE
            for sample in family.samples
        }
    )


def _alive(pid: str) -> bool:
    """Return whether a process of this id exists."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class _StoreCollector(Collector):
    """Documents stored and jobs by status: read from the store at scrape, the same from any process."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        """Return the store's gauges as they are now."""
        documents = GaugeMetricFamily("archivist_documents", "Documents stored", value=self.store.count_documents())
        jobs = GaugeMetricFamily("archivist_jobs", "Ingestion jobs by status", labels=["status"])
        counts = self.store.job_counts()
        for status in _JOB_STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        return [documents, jobs]


class _WorkerProcesses(Collector):
    """CPU, memory and open files of each worker process, labelled by pid (read from /proc at scrape)."""

    def __init__(self, pids: list[str]) -> None:
        self.pids = pids

    def collect(self) -> Iterable[Metric]:
        """Return one family per process metric, with a sample for each worker process."""
        merged: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for pid in self.pids:
            for family in _process_metrics(pid):
                out = merged.get(family.name)
                if out is None:
                    kind = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
                    out = merged[family.name] = kind(family.name, family.documentation, labels=["pid"])
                for sample in family.samples:
                    out.add_metric([pid], sample.value)
        return list(merged.values())


def _process_metrics(pid: str) -> Iterable[Metric]:
    """Return the process metrics of one process, read from /proc (none if it is gone)."""
    return ProcessCollector(pid=lambda: pid, registry=None).collect()


class _Timed:
    """A span that remembers the attributes set on it (the answer's mode is known only at its end)."""

    def __init__(self, attributes: dict[str, Any], inner: observe.Span | None) -> None:
        self.attributes = dict(attributes)
        self.inner = inner

    def set(self, **attributes: Any) -> None:
        """Keep the attributes and pass them on to the inner tracer's span."""
        self.attributes.update(attributes)
        if self.inner is not None:
            self.inner.set(**attributes)


class _LatencyTracer:
    """A `Tracer` that observes the durations of `search`, `embed` and `answer` spans into the metrics."""

    def __init__(self, metrics: Metrics, inner: observe.Tracer | None) -> None:
        self.metrics = metrics
        self.inner = inner

    def span(self, name: str, attributes: dict[str, Any]) -> AbstractContextManager[observe.Span]:
        """Return a context manager that times the span (and opens the inner tracer's, if any)."""
        return self._span(name, attributes)

    @contextmanager
    def _span(self, name: str, attributes: dict[str, Any]) -> Iterator[observe.Span]:
        histogram = {
            "search": self.metrics.search_latency,
            "embed": self.metrics.embed_latency,
            "answer": self.metrics.answer_latency,
        }.get(name)
        timed = _Timed(attributes, None)
        started = time.perf_counter()
        try:
            if self.inner is None:
                yield timed
            else:
                with self.inner.span(name, attributes) as opened:
                    timed.inner = opened
                    yield timed
        finally:
            if histogram is not None:
                label = "kind" if name == "embed" else "mode"
                value = str(timed.attributes.get(label) or timed.attributes.get(f"configured_{label}") or "unknown")
                histogram.labels(value).observe(time.perf_counter() - started)
