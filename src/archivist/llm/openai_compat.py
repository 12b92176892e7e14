"""A provider for any OpenAI-compatible chat completions API: OpenAI, vLLM, Ollama, llama.cpp's server, LM Studio."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
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
from archivist.llm.http import aborter, call_timeout, raise_for_status, stream_error, transport_error


def _message_json(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


class OpenAICompatible:
    """Chat completions over HTTP, plain or streamed (SSE), with tool calls."""

    def __init__(
        self,
        name: str,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        ttft_timeout_s: float = 20.0,
        transport: httpx.BaseTransport | None = None,
        native_json: bool = False,
    ) -> None:
        self.name = name
        # Off by default: servers without `response_format: json_schema` (older vLLM, some proxies) answer 400.
        self.native_json = native_json
        self.model = model
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._connect = connect_timeout_s
        self._read = read_timeout_s
        self._ttft = ttft_timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, transport=transport)

    def _payload(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [_message_json(m) for m in request.messages],
            "temperature": request.temperature,
            "stream": stream,
        }
        if request.max_tokens is not None:
            payload["max_tokens"] = request.max_tokens
        if request.tools:
            payload["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
        if request.response_schema is not None and self.native_json:
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.response_schema},
            }
        if stream:
            payload["stream_options"] = {"include_usage": True}
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
            choice = data["choices"][0]
            msg = choice["message"]
            calls = [self._tool_call(c) for c in msg.get("tool_calls") or []]
            usage = data.get("usage") or {}
            return Completion(
                text=msg.get("content") or "",
                tool_calls=calls,
                finish_reason=choice.get("finish_reason") or "stop",
                usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
                provider=self.name,
                model=self.model,
                latency_s=time.monotonic() - started,
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BadResponse(f"malformed completion: {exc!r}", provider=self.name) from exc

    def _tool_call(self, raw: dict[str, Any]) -> ToolCall:
        fn = raw["function"]
        args = fn.get("arguments") or "{}"
        try:
            parsed = json.loads(args) if isinstance(args, str) else dict(args)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            # The model's mistake, not the provider's: an agent answers it with an observation, not a retry.
            return ToolCall(str(raw.get("id", "")), str(fn["name"]), {}, invalid_arguments=str(args))
        return ToolCall(str(raw.get("id", "")), str(fn["name"]), parsed)

    def stream(self, request: ChatRequest, deadline: Deadline) -> Iterator[StreamEvent]:
        """Yield text as it is generated, then a DoneEvent; raise StreamBroken if it fails after text was sent."""
        started = time.monotonic()
        text: list[str] = []
        ttft: float | None = None
        finish = "stop"
        usage = Usage()
        # Until the first token, a stall is a time-to-first-token failure; after it, an idle gap.
        timeout = call_timeout(deadline, self._ttft, self._connect, self.name)
        try:
            with (
                self._client.stream("POST", self._url, json=self._payload(request, True), timeout=timeout) as resp,
                deadline.on_cancel(aborter(resp)),
            ):
                raise_for_status(resp, self.name)
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise BadResponse(f"malformed stream chunk {data[:80]!r}", provider=self.name) from exc
                    if chunk.get("usage"):
                        u = chunk["usage"]
                        usage = Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)))
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            if ttft is None:
                                ttft = time.monotonic() - started
                            text.append(piece)
                            yield TokenEvent(piece)
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                else:
                    raise ProviderError("stream ended without [DONE]", provider=self.name)
        except (LLMError, httpx.HTTPError) as exc:
            raise stream_error(exc, text, self.name) from exc
        yield DoneEvent(
            Completion(
                text="".join(text),
                tool_calls=[],
                finish_reason=finish,
                usage=usage,
                provider=self.name,
                model=self.model,
                latency_s=time.monotonic() - started,
                ttft_s=ttft,
            )
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
