"""The `LLM` protocol and the records a model call exchanges."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's request to call a tool with JSON arguments."""

    id: str
    name: str
    arguments: dict[str, Any]
    #: the raw arguments text when it was not a JSON object (`arguments` is then empty): the caller tells the model
    #: instead of failing the whole completion
    invalid_arguments: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: a name, what it does, and its parameters as JSON Schema."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Everything a provider needs for one completion."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    temperature: float = 0.0
    max_tokens: int | None = None
    prompt_version: str | None = None
    #: JSON Schema the answer must match; providers with a native JSON mode enforce it while decoding
    response_schema: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call consumed."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class Completion:
    """A finished model answer with its cost in tokens and time."""

    text: str
    tool_calls: list[ToolCall]
    finish_reason: str
    usage: Usage
    provider: str
    model: str
    latency_s: float
    ttft_s: float | None = None
    attempts: list[str] = field(default_factory=list)
    cost_usd: float = 0.0
    cached: bool = False


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """A piece of streamed text."""

    text: str


@dataclass(frozen=True, slots=True)
class DoneEvent:
    """The end of a stream, with the whole completion."""

    completion: Completion


StreamEvent = TokenEvent | DoneEvent


class Cancellation:
    """Set when nobody waits for the work any more (the client hung up): calls under it stop, and the hooks
    that providers register for the duration of a call abort what is in flight (e.g. close its connection).

    Thread-safe: `cancel` comes from the thread serving the client, the calls run in others.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._aborts: dict[int, Callable[[], None]] = {}
        self._next_id = 0

    @property
    def cancelled(self) -> bool:
        """Return whether the work was cancelled."""
        return self._cancelled

    def cancel(self) -> None:
        """Cancel the work: run every registered abort hook once (later calls do nothing)."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            # Under the lock: a hook never runs after its call left `on_cancel`, when what it aborts may be gone.
            for abort in self._aborts.values():
                _run_abort(abort)
            self._aborts.clear()

    @contextmanager
    def on_cancel(self, abort: Callable[[], None]) -> Iterator[None]:
        """Run `abort` if the work is cancelled while the block runs (at once if it already was); return a
        context manager."""
        with self._lock:
            if self._cancelled:
                _run_abort(abort)
                hook_id = None
            else:
                hook_id = self._next_id
                self._next_id += 1
                self._aborts[hook_id] = abort
        try:
            yield
        finally:
            if hook_id is not None:
                with self._lock:
                    self._aborts.pop(hook_id, None)


def _run_abort(abort: Callable[[], None]) -> None:
    try:
        abort()
    except Exception:  # an abort is best effort: the call also stops at its next check of `cancelled`
        logging.getLogger(__name__).debug("abort hook failed", exc_info=True)


class Deadline:
    """An absolute point in monotonic time that every call under a request must finish by, and optionally the
    request's cancellation (the client went away: stop before the deadline)."""

    def __init__(self, at: float, cancellation: Cancellation | None = None) -> None:
        self.at = at
        self.cancellation = cancellation

    @classmethod
    def after(cls, seconds: float, cancellation: Cancellation | None = None) -> Deadline:
        """Return a deadline `seconds` from now."""
        return cls(time.monotonic() + seconds, cancellation)

    def remaining(self) -> float:
        """Return the seconds left (negative once passed)."""
        return self.at - time.monotonic()

    @property
    def cancelled(self) -> bool:
        """Return whether the work under this deadline was cancelled."""
        return self.cancellation is not None and self.cancellation.cancelled

    @contextmanager
    def on_cancel(self, abort: Callable[[], None]) -> Iterator[None]:
        """Return a context manager that runs `abort` if the work is cancelled while its block runs."""
        if self.cancellation is None:
            yield
            return
        with self.cancellation.on_cancel(abort):
            yield


@runtime_checkable
class LLM(Protocol):
    """A chat model behind one provider."""

    name: str
    model: str

    def chat(self, request: ChatRequest, deadline: Deadline) -> Completion:
        """Return the model's completion, or raise an LLMError."""
        ...

    def stream(self, request: ChatRequest, deadline: Deadline) -> Iterator[StreamEvent]:
        """Yield text as it is generated, then a DoneEvent; raise an LLMError on failure."""
        ...
