"""The `LLM` protocol and the records a model call exchanges."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's request to call a tool with JSON arguments."""

    id: str
    name: str
    arguments: dict[str, Any]


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


class Deadline:
    """An absolute point in monotonic time that every call under a request must finish by."""

    def __init__(self, at: float) -> None:
        self.at = at

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """Return a deadline `seconds` from now."""
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        """Return the seconds left (negative once passed)."""
        return self.at - time.monotonic()


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
