"""Agent runs driven by the server: a bounded pool of drivers, the steps of a run fed to an SSE response as they
are journaled, and the model usage of every step charged to the API key that owns the run."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from archivist.llm.accounting import KeyBudget
from archivist.llm.errors import BudgetExceeded
from archivist.server.errors import ApiError
from archivist.server.metrics import Metrics
from archivist.store.records import AgentRunRecord, AgentStepRecord
from archivist.types import ArchivistError

log = logging.getLogger("archivist.server")
#: how long a resume or approval waits to hear that its drive took the run: a run driven elsewhere fails within
#: milliseconds, but a loaded store can take seconds; a drive's first step or its end ends the wait sooner
SETTLE_S = 5.0
#: how long a retry is advised to wait when every driver is busy
RETRY_AFTER_S = 5


@dataclass
class StepFeed:
    """What one drive tells whoever watches it (an SSE response, a request waiting to hear it took the run): each
    journaled step, then the run or the error it ended with. Safe to use from the driving thread and the server's."""

    _items: queue.SimpleQueue[tuple[str, Any]] = field(default_factory=queue.SimpleQueue)
    #: set at the first step, or once the drive ended (either way: it took the run, or failed to)
    settled: threading.Event = field(default_factory=threading.Event)
    #: set when the watcher left: nothing more is queued for it (the drive goes on)
    closed: threading.Event = field(default_factory=threading.Event)

    def step(self, step: AgentStepRecord) -> None:
        """Queue a journaled step for the watcher."""
        self.settled.set()
        if not self.closed.is_set():
            self._items.put(("step", step.public()))

    def end(self, run: AgentRunRecord | None, error: BaseException | None) -> None:
        """Queue how the drive ended: the run, or the error that stopped it."""
        self.settled.set()
        self._items.put(("error", error) if error is not None else ("done", run))

    def next(self) -> tuple[str, Any]:
        """Return the next item, waiting for it ("closed" once the watcher left)."""
        return self._items.get()

    def close(self) -> None:
        """Stop feeding the watcher and wake a wait for the next item."""
        self.closed.set()
        self._items.put(("closed", None))


class KeyCharge:
    """Counts what each step of a drive used (its model turns, and a tool's own model calls) for the request log and
    the metrics. The key's budget is charged by the run itself: its budget's parent is the key's, so every model call
    is reserved against what the key has left, however many of its runs go on at once."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.tokens = 0
        self.cost_usd = 0.0
        self._lock = threading.Lock()

    def __call__(self, step: AgentStepRecord) -> None:
        """Count one journaled step's tokens and cost."""
        if not step.tokens and not step.cost_usd:
            return
        with self._lock:
            self.tokens += step.tokens
            self.cost_usd += step.cost_usd
        if step.tokens:
            self.metrics.llm_tokens.inc(step.tokens)
        if step.cost_usd:
            self.metrics.llm_cost.inc(step.cost_usd)


def on_step(charge: KeyCharge, feed: StepFeed) -> Callable[[AgentStepRecord], None]:
    """Return the step hook of one drive: each journaled step is charged to the key, then fed to the watcher."""

    def hook(step: AgentStepRecord) -> None:
        charge(step)
        feed.step(step)

    return hook


def allowance(budget: KeyBudget | None) -> tuple[int | None, float | None]:
    """Return the tokens and dollars a key has left this period (None: no limit); raise BudgetExceeded when it has
    nothing left, so a run is refused before it starts."""
    if budget is None:
        return None, None
    # A reservation of nothing reads what the key has spent (from the store) without holding anything back; it is
    # refused only when the key has already spent past a limit.
    with suppress(BudgetExceeded):
        budget.settle(budget.reserve(0, 0.0), 0, 0.0)
    tokens = None if budget.max_tokens is None else budget.max_tokens - budget.spent_tokens
    cost = None if budget.max_cost_usd is None else budget.max_cost_usd - budget.spent_cost_usd
    if (tokens is not None and tokens <= 0) or (cost is not None and cost <= 0):
        raise BudgetExceeded(
            f"the key's budget for this {budget.period} is spent ({budget.spent_tokens} tokens, "
            f"${budget.spent_cost_usd:.4f}): no agent run can start"
        )
    return tokens, cost


def within(limit: float | None, left: float | None) -> float | None:
    """Return the tighter of a run's limit and what the key has left (None: neither limits it)."""
    if left is None:
        return limit
    return left if limit is None else min(limit, left)


class AgentDrivers:
    """A bounded pool of threads that drive agent runs for one server process: at most `size` at once, and one
    drive per run. A slot is reserved before anything is written (a new run, a person's decision), so a full pool
    refuses a request (429) before it changes anything, rather than queueing it behind runs of minutes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="agent-run")
        self._lock = threading.Lock()
        self._reserved = 0
        self._driving: set[str] = set()
        self._closed = False

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        """Reserve a driver for the block (429 when every one is busy, 503 while shutting down); a slot the block
        did not `start` a drive in is given back at its end, with the run it claimed."""
        with self._lock:
            if self._closed:
                raise ApiError(503, "the server is shutting down: no agent run can be driven")
            if self._reserved >= self.size:
                raise ApiError(
                    429,
                    f"all {self.size} agent drivers of this server are busy: retry in a few seconds",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            self._reserved += 1
        slot = Slot(self)
        try:
            yield slot
        finally:
            if not slot.started:
                self._free(slot.run_id)

    def _claim(self, run_id: str) -> None:
        with self._lock:
            if run_id in self._driving:
                raise ApiError(409, f"agent run {run_id} is being driven by this server now")
            self._driving.add(run_id)

    def _start(self, run_id: str, drive: Callable[[], AgentRunRecord], feed: StepFeed) -> Future[AgentRunRecord]:
        def run() -> AgentRunRecord:
            try:
                result = drive()
            except BaseException as exc:
                feed.end(None, exc)
                if isinstance(exc, ArchivistError):  # another process drives it, its tools changed…: said to the client
                    log.warning("agent run %s not driven: %s", run_id, exc)
                else:
                    log.exception("agent run %s failed", run_id)
                raise
            finally:
                self._free(run_id)
            feed.end(result, None)
            return result

        return self._pool.submit(run)

    def _free(self, run_id: str | None) -> None:
        with self._lock:
            self._reserved -= 1
            if run_id is not None:
                self._driving.discard(run_id)

    def driving(self) -> int:
        """Return how many runs are being driven now."""
        with self._lock:
            return len(self._driving)

    def close(self, wait_s: float = 10.0) -> None:
        """Refuse new drives and wait up to `wait_s` for those in flight (a run cut off here is durable: resume
        it after the restart)."""
        with self._lock:
            self._closed = True
        done = threading.Event()

        def join() -> None:
            self._pool.shutdown(wait=True)
            done.set()

        threading.Thread(target=join, name="agent-run-shutdown", daemon=True).start()
        if not done.wait(wait_s):
            log.warning("agent runs still driven at shutdown: %d (resume them after the restart)", self.driving())


@dataclass(eq=False)
class Slot:
    """A driver reserved for one request: it claims the run (one drive per run in this process), then `start`s
    the request's drive."""

    drivers: AgentDrivers
    run_id: str | None = None
    started: bool = False

    def claim(self, run_id: str) -> None:
        """Claim the run for this slot's drive; raise 409 when this process drives it already."""
        self.drivers._claim(run_id)
        self.run_id = run_id

    def start(self, drive: Callable[[], AgentRunRecord], feed: StepFeed) -> Future[AgentRunRecord]:
        """Drive the claimed run in this slot, telling `feed` how it ends."""
        if self.run_id is None:
            raise RuntimeError("claim a run before starting its drive")
        self.started = True
        return self.drivers._start(self.run_id, drive, feed)
