"""A real HTTP server on 127.0.0.1 standing in for Anthropic's Messages API, with fake_servers' scriptable faults."""

from __future__ import annotations

import json
import time
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any

from fake_servers import Fault, LoopbackServer, send_json

INPUT_TOKENS = 9

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_body(error_type: str, message: str) -> bytes:
    """Return an Anthropic-shaped error document."""
    return json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()


def _invalid(payload: dict[str, Any], headers: dict[str, str]) -> str | None:
    """Return why the real API would refuse this request with a 400, or None if it would accept it."""
    if "anthropic-version" not in headers:
        return "anthropic-version header is required"
    if not isinstance(payload.get("max_tokens"), int):
        return "max_tokens: Field required"
    tool_use_ids: set[str] = set()
    for m in payload.get("messages", []):
        if m.get("role") not in ("user", "assistant"):
            return f"messages: Unexpected role {m.get('role')!r}"
        blocks = m["content"] if isinstance(m["content"], list) else []
        for b in blocks:
            if b["type"] == "tool_use":
                tool_use_ids.add(b["id"])
            elif b["type"] == "tool_result" and b["tool_use_id"] not in tool_use_ids:
                return f"tool_result block(s) provided for unknown tool_use id {b['tool_use_id']!r}"
            elif b["type"] == "text" and not b["text"]:
                return "text content blocks must be non-empty"
    for t in payload.get("tools", []):
        if set(t) - {"name", "description", "input_schema"} or "input_schema" not in t:
            return f"tools: invalid tool {t!r}"
    return None


class AnthropicServer(LoopbackServer):
    """An Anthropic-style /v1/messages server (plain and SSE); queued faults are served before normal answers."""

    def __init__(self, reply: str = "pong from the fake claude") -> None:
        self.reply = reply
        #: {"name": ..., "input": {...}}: answered as a tool_use block whenever the request offers tools
        self.tool_use: dict[str, Any] | None = None
        self.stop_reason = "end_turn"
        #: scripted replies, served in order before anything else (plain requests): each a list of content blocks
        #: ({"type": "text", …} and {"type": "tool_use", "id", "name", "input"})
        self.scripted_messages: deque[list[dict[str, Any]]] = deque()
        #: streams only: at a Fault's cut_after, send an `event: error` of this type instead of just hanging up
        self.error_event: str | None = None
        self.faults: deque[Fault] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append(payload)
                server.headers.append(headers)
                fault = server.faults.popleft() if server.faults else Fault()
                time.sleep(fault.delay_s)
                try:
                    if self.path != "/v1/messages":
                        send_json(self, 404, error_body("not_found_error", f"no route {self.path}"))
                    elif fault.body is not None or fault.status != 200:
                        default = error_body(_ERROR_TYPES.get(fault.status, "api_error"), "scripted fault")
                        send_json(self, fault.status, fault.body if fault.body is not None else default, fault.headers)
                    elif (why := _invalid(payload, headers)) is not None:
                        send_json(self, 400, error_body("invalid_request_error", why))
                    elif payload.get("stream"):
                        self._stream(payload, fault)
                    else:
                        send_json(self, 200, json.dumps(server._message(payload)).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def _event(self, name: str, data: dict[str, Any]) -> None:
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

            def _stream(self, payload: dict[str, Any], fault: Fault) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                time.sleep(fault.stall_s)
                pieces = [w + " " for w in server.reply.split()]
                message = {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": payload["model"],
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
                }
                self._event("message_start", {"type": "message_start", "message": message})
                self._event("ping", {"type": "ping"})
                text_block = {"type": "text", "text": ""}
                self._event(
                    "content_block_start", {"type": "content_block_start", "index": 0, "content_block": text_block}
                )
                for i, piece in enumerate(pieces):
                    if fault.cut_after is not None and i >= fault.cut_after:
                        if server.error_event is not None:
                            error = {"type": server.error_event, "message": "scripted stream error"}
                            self._event("error", {"type": "error", "error": error})
                        return
                    delta = {"type": "text_delta", "text": piece}
                    self._event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
                self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
                stop_reason = server.stop_reason
                if payload.get("tools") and server.tool_use is not None:
                    block = {"type": "tool_use", "id": "toolu_1", "name": server.tool_use["name"], "input": {}}
                    self._event(
                        "content_block_start", {"type": "content_block_start", "index": 1, "content_block": block}
                    )
                    arguments = json.dumps(server.tool_use["input"])
                    # Real streams split the JSON arbitrarily, even mid-token.
                    for part in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                        delta = {"type": "input_json_delta", "partial_json": part}
                        self._event("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta})
                    self._event("content_block_stop", {"type": "content_block_stop", "index": 1})
                    stop_reason = "tool_use"
                self._event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                        "usage": {"output_tokens": len(pieces)},
                    },
                )
                self._event("message_stop", {"type": "message_stop"})

        self._listen(Handler, "")

    def _message(self, payload: dict[str, Any]) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": self.reply}]
        stop_reason = self.stop_reason
        if self.scripted_messages:
            content = self.scripted_messages.popleft()
            stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
        elif payload.get("tools") and self.tool_use is not None:
            content.append(
                {"type": "tool_use", "id": "toolu_1", "name": self.tool_use["name"], "input": self.tool_use["input"]}
            )
            stop_reason = "tool_use"
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": payload["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": INPUT_TOKENS,
                "output_tokens": sum(len(str(b.get("text", b.get("input", ""))).split()) for b in content),
            },
        }
