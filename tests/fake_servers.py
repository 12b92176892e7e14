"""Real HTTP servers on 127.0.0.1 standing in for model providers, with scriptable faults."""

from __future__ import annotations

import hashlib
import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


def send_json(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """Send a complete JSON answer; a client that already gave up (timeout tests) is not an error."""
    try:
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass


class LoopbackServer:
    """A threaded HTTP server on a free 127.0.0.1 port; subclasses build a handler and call `_listen`."""

    url: str

    def _listen(self, handler: type[BaseHTTPRequestHandler], path: str) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    @contextmanager
    def running(self) -> Iterator[Self]:
        """Serve in a background thread for the duration of the block."""
        # A short poll interval makes the per-test shutdown fast.
        thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()


@dataclass
class Fault:
    """One scripted answer: a status with headers and a raw body, optionally after a delay."""

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    #: streams only: send this many pieces, then drop the connection without [DONE]
    cut_after: int | None = None
    #: streams only: send headers, then wait this long before the first piece
    stall_s: float = 0.0


def fake_vector(text: str, dim: int) -> list[float]:
    """Return a deterministic pseudo-embedding of a text."""
    digest = hashlib.sha256(text.encode()).digest() * (dim // 32 + 1)
    return [(b - 127.5) / 127.5 for b in digest[:dim]]


class EmbeddingServer(LoopbackServer):
    """An OpenAI-compatible /v1/embeddings server; queued faults are served before normal answers."""

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim
        self.faults: deque[Fault] = deque()
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                server.auth_headers.append(self.headers.get("authorization"))
                payload = json.loads(body)
                server.requests.append(payload)
                fault = server.faults.popleft() if server.faults else None
                if fault is not None:
                    time.sleep(fault.delay_s)
                    if fault.body is not None or fault.status != 200:
                        send_json(self, fault.status, fault.body or b"{}", fault.headers)
                        return
                data = [
                    {"object": "embedding", "index": i, "embedding": fake_vector(t, server.dim)}
                    for i, t in enumerate(payload["input"])
                ]
                data.reverse()  # servers may answer out of order; clients must sort by index
                send_json(self, 200, json.dumps({"object": "list", "data": data, "model": payload["model"]}).encode())

        self._listen(Handler, "/v1")

    def env(self) -> dict[str, str]:
        """Return the settings (environment variables) that point a process's embedder at this server."""
        return {"ARCHIVIST_EMBEDDER": "openai", "ARCHIVIST_EMBED_URL": self.url, "ARCHIVIST_EMBED_MODEL": "fake"}


@dataclass
class StreamLog:
    """What one streamed answer did on the server's side: pieces sent, and how and when it ended."""

    #: the whole reply, in pieces
    pieces: int
    #: time.monotonic() when the request arrived
    started: float
    sent: int = 0
    #: time.monotonic() when the stream ended: completed, or the client's hang-up seen
    ended: float | None = None
    #: "completed", or "client_closed" when the client hung up before the end (generation stopped there)
    outcome: str | None = None


def peer_closed(connection: socket.socket, wait_s: float) -> bool:
    """Wait up to `wait_s` seconds; return True as soon as the peer has closed (or reset) the connection."""
    deadline = time.monotonic() + wait_s
    while True:
        left = deadline - time.monotonic()
        readable, _, _ = select.select([connection], [], [], max(0.0, left))
        if readable:
            try:
                if connection.recv(1, socket.MSG_PEEK) == b"":
                    return True
            except OSError:
                return True
            time.sleep(max(0.0, deadline - time.monotonic()))  # bytes waiting (not ours to read): just wait
            return False
        if left <= 0:
            return False


class ChatServer(LoopbackServer):
    """An OpenAI-compatible /v1/chat/completions server (plain and SSE), with scripted faults."""

    def __init__(self, reply: str = "pong from the fake model") -> None:
        self.reply = reply
        #: slow-stream mode: seconds between streamed pieces (a model generating at that pace); 0 sends at once
        self.piece_interval_s = 0.0
        #: every streamed answer, in arrival order: what was sent and whether the client hung up first
        self.streams: list[StreamLog] = []
        #: when set, computes each answer's text from the request payload instead of `reply`
        self.responder: Callable[[dict[str, Any]], str] | None = None
        self.tool_call: dict[str, Any] | None = None
        #: scripted answers, served in order before anything else: each an assistant message in OpenAI's shape
        #: (content and/or tool_calls, arguments as the raw JSON text the model wrote), with an optional "usage"
        self.scripted_messages: deque[dict[str, Any]] = deque()
        self.faults: deque[Fault] = deque()
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                server.requests.append(payload)
                fault = server.faults.popleft() if server.faults else Fault()
                time.sleep(fault.delay_s)
                try:
                    if fault.body is not None or fault.status != 200:
                        send_json(self, fault.status, fault.body or b"{}", fault.headers)
                    elif payload.get("stream"):
                        self._stream(fault, payload)
                    else:
                        send_json(self, 200, json.dumps(server._completion(payload)).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _stream(self, fault: Fault, payload: dict[str, Any]) -> None:
                pieces = [w + " " for w in server.reply_for(payload).split()]
                log = StreamLog(pieces=len(pieces), started=time.monotonic())
                server.streams.append(log)
                self.close_connection = True
                try:
                    self._stream_pieces(fault, pieces, log)
                except (BrokenPipeError, ConnectionResetError):
                    log.outcome, log.ended = "client_closed", time.monotonic()
                    raise

            def _wait(self, seconds: float, log: StreamLog) -> bool:
                """Wait like a model generating; return False (and log it) if the client hung up meanwhile."""
                if seconds > 0 and peer_closed(self.connection, seconds):
                    log.outcome, log.ended = "client_closed", time.monotonic()
                    return False
                return True

            def _stream_pieces(self, fault: Fault, pieces: list[str], log: StreamLog) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.flush()
                if not self._wait(fault.stall_s, log):
                    return
                for i, piece in enumerate(pieces):
                    if fault.cut_after is not None and i >= fault.cut_after:
                        self.wfile.flush()
                        return
                    if i and not self._wait(server.piece_interval_s, log):
                        return
                    chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    log.sent += 1
                done = {
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": len(pieces)},
                }
                self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                log.outcome, log.ended = "completed", time.monotonic()

        self._listen(Handler, "/v1")

    def reply_for(self, payload: dict[str, Any]) -> str:
        """Return the answer text for a request: the responder's, else the fixed reply."""
        return self.responder(payload) if self.responder is not None else self.reply

    def _completion(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.scripted_messages:
            scripted = dict(self.scripted_messages.popleft())
            usage = scripted.pop("usage", {"prompt_tokens": 7, "completion_tokens": 5})
            return {
                "id": "cmpl-1",
                "object": "chat.completion",
                "model": payload["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": None, **scripted},
                        "finish_reason": "tool_calls" if scripted.get("tool_calls") else "stop",
                    }
                ],
                "usage": usage,
            }
        text = self.reply_for(payload)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = "stop"
        if payload.get("tools") and self.tool_call is not None:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": self.tool_call["name"],
                            "arguments": json.dumps(self.tool_call["arguments"]),
                        },
                    }
                ],
            }
            finish = "tool_calls"
        return {
            "id": "cmpl-1",
            "object": "chat.completion",
            "model": payload["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 7, "completion_tokens": len(text.split())},
        }
