"""The request log (buffered, written in batches) and the usage report built from it."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from archivist.store.protocols import Store
from archivist.store.records import RequestLogRow

log = logging.getLogger("archivist.server")


class RequestLog:
    """Collects served requests and writes them to the store in batches, off the request path."""

    def __init__(self, store: Store, flush_every_s: float = 1.0, max_buffer: int = 10_000) -> None:
        self.store = store
        self.flush_every_s = flush_every_s
        self.max_buffer = max_buffer
        self._rows: list[RequestLogRow] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, row: RequestLogRow) -> None:
        """Queue one row (dropped, with a warning, if the store has fallen far behind)."""
        with self._lock:
            if len(self._rows) >= self.max_buffer:
                log.warning("request log buffer full: dropping a row")
                return
            self._rows.append(row)

    def flush(self) -> None:
        """Write the queued rows now."""
        with self._lock:
            rows, self._rows = self._rows, []
        if rows:
            try:
                self.store.log_requests(rows)
            except Exception:
                log.exception("could not write %d request log rows", len(rows))

    def start(self) -> None:
        """Start flushing in the background."""
        self._thread = threading.Thread(target=self._loop, name="archivist-request-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background flush and write what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            self.flush()


def usage_report(
    rows: Sequence[RequestLogRow], key_names: dict[str, str], *, days: int, now: datetime | None = None
) -> dict[str, Any]:
    """Return requests, errors, client disconnects, tokens, cost and latency percentiles per key and UTC day."""
    groups: dict[tuple[str, str], list[RequestLogRow]] = defaultdict(list)
    for r in rows:
        groups[(r.key_id or "", r.at[:10])].append(r)
    out = []
    for (key_id, day), group in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]), reverse=True):
        latencies = np.asarray([r.latency_ms for r in group], dtype=np.float64)
        p50, p95, p99 = (float(x) for x in np.percentile(latencies, [50, 95, 99]))
        out.append(
            {
                "key_id": key_id or None,
                "key_name": key_names.get(key_id),
                "day": day,
                "requests": len(group),
                "errors": sum(1 for r in group if r.status >= 400),
                "server_errors": sum(1 for r in group if r.status >= 500),
                "client_disconnected": sum(1 for r in group if r.outcome == "client_disconnected"),
                "tokens": sum(r.tokens for r in group),
                "cost_usd": round(sum(r.cost_usd for r in group), 6),
                "latency_ms": {"p50": round(p50, 2), "p95": round(p95, 2), "p99": round(p99, 2)},
            }
        )
    since = usage_since(days, now)
    return {"since": since, "days": days, "rows": out}


def usage_since(days: int, now: datetime | None = None) -> str:
    """Return the UTC ISO time `days` whole days back from today's start (days=1: today only)."""
    today = (now or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today - timedelta(days=days - 1)).isoformat(timespec="seconds")
