"""Real HTTP servers on 127.0.0.1 standing in for model providers, with scriptable faults."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    """One scripted answer: a status with headers and a raw body, optionally after a delay."""

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def fake_vector(text: str, dim: int) -> list[float]:
    """Return a deterministic pseudo-embedding of a text."""
    digest = hashlib.sha256(text.encode()).digest() * (dim // 32 + 1)
    return [(b - 127.5) / 127.5 for b in digest[:dim]]


class EmbeddingServer:
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
                        self._send(fault.status, fault.body or b"{}", fault.headers)
                        return
                data = [
                    {"object": "embedding", "index": i, "embedding": fake_vector(t, server.dim)}
                    for i, t in enumerate(payload["input"])
                ]
                data.reverse()  # servers may answer out of order; clients must sort by index
                self._send(200, json.dumps({"object": "list", "data": data, "model": payload["model"]}).encode())

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @contextmanager
    def running(self) -> Iterator[EmbeddingServer]:
        """Serve in a background thread for the duration of the block."""
        thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
