"""A provider for Anthropic's Messages API (`POST /v1/messages`), plain or streamed (SSE), with tool use."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from archivist.llm.base import (
    ChatRequest,
    Completion,
    Deadline,
    DoneEvent,
    Message,
    StreamEvent,
    TokenEvent,
    ToolCall,
    Usage,
)
from archivist.llm.errors import (
    BadResponse,
    LLMError,
    ProviderError,
)
from archivist.llm.http import aborter, call_timeout, error_for_status, raise_for_status, stream_error, transport_error

DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
#: Anthropic refuses a request without max_tokens, so one is always sent.
DEFAULT_MAX_TOKENS = 1024

_FINISH_REASONS = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length"}

#: The HTTP status Anthropic documents for each error type, so an `event: error` mid-stream maps like an HTTP error.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def finish_reason(stop_reason: str | None) -> str:
    """Return the OpenAI-style finish reason for an Anthropic stop_reason (unknown ones pass through)."""
    if not stop_reason:
        return "stop"
    return _FINISH_REASONS.get(stop_reason, stop_reason)


def messages_json(messages: Iterable[Message]) -> tuple[str, list[dict[str, Any]]]:
    """Return the top-level system prompt and the Anthropic `messages` list for a conversation."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            system.append(m.content)
        elif m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.content}
            last = out[-1] if out else None
            # Results of parallel tool calls must share one user turn, right after the assistant's tool_use turn.
            if last is not None and last["role"] == "user" and isinstance(last["content"], list):
                last["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif m.role == "assistant" and m.tool_calls:
            # Anthropic rejects empty text blocks, so a tool-only turn carries just its tool_use blocks.
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in m.tool_calls]
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": m.role, "content": m.content})
    return "\n\n".join(system), out


def _sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Yield (event name, data) for each server-sent event in a stream of lines."""
    event = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    if data:
        yield event, "\n".join(data)


@dataclass
class _StreamState:
    """What a stream has said so far: the text, tool calls being assembled, stop reason and usage."""

    provider: str
    text: list[str] = field(default_factory=list)
    tools: dict[int, tuple[str, str, list[str]]] = field(default_factory=dict)
    stop_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    stopped: bool = False

    def feed(self, event: str, data: str) -> str | None:
        """Apply one SSE event; return its text delta if it carried one (raises on an error event or bad data)."""
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise BadResponse(f"malformed stream event {data[:80]!r}", provider=self.provider) from exc
        try:
            return self._apply(str(chunk.get("type") or event), chunk)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise BadResponse(f"malformed {event or 'stream'} event: {exc!r}", provider=self.provider) from exc

    def _apply(self, kind: str, chunk: dict[str, Any]) -> str | None:
        if kind == "message_start":
            usage = chunk["message"].get("usage") or {}
            self.input_tokens = int(usage.get("input_tokens", 0))
            self.output_tokens = int(usage.get("output_tokens", 0))
        elif kind == "content_block_start":
            block = chunk["content_block"]
            if block["type"] == "tool_use":
                self.tools[int(chunk["index"])] = (str(block["id"]), str(block["name"]), [])
        elif kind == "content_block_delta":
            delta = chunk["delta"]
            if delta["type"] == "text_delta" and delta.get("text"):
                self.text.append(str(delta["text"]))
                return str(delta["text"])
            if delta["type"] == "input_json_delta":
                self.tools[int(chunk["index"])][2].append(str(delta.get("partial_json") or ""))
        elif kind == "message_delta":
            self.stop_reason = chunk["delta"].get("stop_reason") or self.stop_reason
            usage = chunk.get("usage") or {}
            # message_delta's counts are cumulative, so they replace message_start's.
            self.output_tokens = int(usage.get("output_tokens", self.output_tokens))
            self.input_tokens = int(usage.get("input_tokens") or self.input_tokens)
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            err = chunk.get("error") or {}
            status = _ERROR_STATUS.get(str(err.get("type")), 500)
            raise error_for_status(
                status, f"stream error {err.get('type')}: {err.get('message')!r}", provider=self.provider
            )
        # Anything else (ping, content_block_stop, event types added later) carries nothing we need.
        return None

    def tool_calls(self) -> list[ToolCall]:
        """Return the tool calls the stream assembled, in block order."""
        calls = []
        for _, (id_, name, parts) in sorted(self.tools.items()):
            try:
                arguments = json.loads("".join(parts) or "{}")
            except ValueError as exc:
                raise BadResponse(f"tool_use {name!r} streamed invalid JSON input", provider=self.provider) from exc
            if not isinstance(arguments, dict):
                raise BadResponse(f"tool_use {name!r} input is not an object", provider=self.provider)
            calls.append(ToolCall(id_, name, arguments))
        return calls


class AnthropicMessages:
    """Anthropic's Messages API over HTTP, plain or streamed (SSE), with tool use."""

    def __init__(
        self,
        name: str,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        ttft_timeout_s: float = 20.0,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self.model = model
        root = (base_url or DEFAULT_BASE_URL).rstrip("/")
        # Accept a base URL given with or without /v1, as configs written for OpenAI-style servers include it.
        self._url = root + ("/messages" if root.endswith("/v1") else "/v1/messages")
        self._connect = connect_timeout_s
        self._read = read_timeout_s
        self._ttft = ttft_timeout_s
        self._max_tokens = default_max_tokens
        headers = {"anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
        if api_key:
            headers["x-api-key"] = api_key
        self._client = httpx.Client(headers=headers, transport=transport)

    def _payload(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        system, messages = messages_json(request.messages)
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_tokens if request.max_tokens is not None else self._max_tokens,
            "temperature": request.temperature,
            "stream": stream,
        }
        if system:
            payload["system"] = system
        if request.tools:
            payload["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools
            ]
        return payload

    def chat(self, request: ChatRequest, deadline: Deadline) -> Completion:
        """Return the model's completion, or raise an LLMError."""
        started = time.monotonic()
        try:
            resp = self._client.post(
                self._url,
                json=self._payload(request, False),
                timeout=call_timeout(deadline, self._read, self._connect, self.name),
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.name) from exc
        raise_for_status(resp, self.name)
        try:
            data = resp.json()
            text: list[str] = []
            calls: list[ToolCall] = []
            for block in data["content"]:
                if block["type"] == "text":
                    text.append(str(block["text"]))
                elif block["type"] == "tool_use":
                    raw_input = block.get("input") or {}
                    if not isinstance(raw_input, dict):
                        raise TypeError(f"tool_use {block.get('name')!r} input is not an object")
                    calls.append(ToolCall(str(block["id"]), str(block["name"]), raw_input))
            usage = data.get("usage") or {}
            return Completion(
                text="".join(text),
                tool_calls=calls,
                finish_reason=finish_reason(data.get("stop_reason")),
                usage=Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))),
                provider=self.name,
                model=self.model,
                latency_s=time.monotonic() - started,
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BadResponse(f"malformed message: {exc!r}", provider=self.name) from exc

    def stream(self, request: ChatRequest, deadline: Deadline) -> Iterator[StreamEvent]:
        """Yield text as it is generated, then a DoneEvent; raise StreamBroken if it fails after text was sent."""
        started = time.monotonic()
        state = _StreamState(self.name)
        ttft: float | None = None
        # Until the first token, a stall is a time-to-first-token failure; after it, an idle gap.
        timeout = call_timeout(deadline, self._ttft, self._connect, self.name)
        try:
            with (
                self._client.stream("POST", self._url, json=self._payload(request, True), timeout=timeout) as resp,
                deadline.on_cancel(aborter(resp)),
            ):
                raise_for_status(resp, self.name)
                for event, data in _sse(resp.iter_lines()):
                    piece = state.feed(event, data)
                    if piece:
                        if ttft is None:
                            ttft = time.monotonic() - started
                        yield TokenEvent(piece)
                    if state.stopped:
                        break
                else:
                    raise ProviderError("stream ended without message_stop", provider=self.name)
            calls = state.tool_calls()
        except (LLMError, httpx.HTTPError) as exc:
            raise stream_error(exc, state.text, self.name) from exc
        yield DoneEvent(
            Completion(
                text="".join(state.text),
                tool_calls=calls,
                finish_reason=finish_reason(state.stop_reason),
                usage=Usage(state.input_tokens, state.output_tokens),
                provider=self.name,
                model=self.model,
                latency_s=time.monotonic() - started,
                ttft_s=ttft,
            )
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
