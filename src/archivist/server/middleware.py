"""The outermost layer of every request: request id, body size limit, time limit, access log, metrics, usage."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from archivist.server.errors import error_body
from archivist.server.services import Services
from archivist.store.records import RequestLogRow

log = logging.getLogger("archivist.access")
#: the id of the request being served, for every log line written while serving it
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("archivist_request_id", default=None)
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: paths that are not API calls: kept out of the usage log (still counted in metrics)
_UNLOGGED = ("/healthz", "/readyz", "/metrics", "/static/", "/docs", "/openapi.json", "/favicon.ico")
#: the request log's outcome of a request whose client hung up before the response ended
CLIENT_DISCONNECTED = "client_disconnected"


class _TooLarge(StarletteHTTPException):
    """A body over the limit: an HTTP error, so the app answers 413 even if it is reading the body when it trips."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(413, f"request body over {limit_bytes / 1024 / 1024:g} MB")


class RequestMiddleware:
    """Pure ASGI middleware (no per-request task for the body, so streaming responses pass straight through)."""

    def __init__(self, app: ASGIApp, services: Services, *, max_body_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.services = services
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client_id = headers.get("x-request-id", "")
        request_id = client_id if _CLIENT_ID.match(client_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        response: dict[str, Any] = {"status": 500, "started": False, "timed": False, "ended": False}
        # One timeout scope around the whole request, lifted as soon as the response starts (no extra task).
        deadline = asyncio.timeout(self.timeout_s)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["started"] = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if response["timed"]:
                    deadline.reschedule(None)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Marked before it is sent: a client that hangs up once it has read the end did not leave early.
                response["ended"] = True
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.disconnect" and not response["ended"]:
                # Seen by whoever listens for it (Starlette, while it streams a response; an endpoint that stops
                # work for a departed client): the request log says the client left before the end.
                scope["state"].setdefault("outcome", CLIENT_DISCONNECTED)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _TooLarge(self.max_body_bytes)
            return message

        try:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise _TooLarge(self.max_body_bytes)
            async with deadline:
                response["timed"] = True
                try:
                    await self.app(scope, limited_receive, send_with_id)
                finally:
                    response["timed"] = False
        except TimeoutError:
            if not deadline.expired():
                raise
            if not response["started"]:
                await self._error(send_with_id, 504, "timeout", f"no response within {self.timeout_s:g}s", request_id)
        except _TooLarge as exc:
            if not response["started"]:
                await self._error(send_with_id, 413, "payload_too_large", str(exc.detail), request_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            logging.getLogger("archivist.server").exception("unhandled error")
            if not response["started"]:
                await self._error(
                    send_with_id, 500, "internal", "internal error; the server log has the details", request_id
                )
        finally:
            self._record(scope, headers, response["status"], started, request_id)
            request_id_var.reset(token)

    @staticmethod
    async def _error(send: Send, status: int, code: str, message: str, request_id: str) -> None:
        body = json.dumps(error_body(code, message, request_id)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, headers: dict[str, str], status: int, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        template = str(getattr(route, "path", "")) or "unmatched"
        method = str(scope.get("method", ""))
        path = str(scope.get("path", ""))
        state = scope.get("state", {})
        metrics = self.services.metrics
        metrics.requests.labels(method, template, str(status)).inc()
        metrics.latency.labels(template).observe(elapsed)
        key_id = state.get("key_id")
        outcome = str(state.get("outcome") or "completed")
        if outcome == CLIENT_DISCONNECTED:
            metrics.disconnects.labels(template).inc()
        if not path.startswith(_UNLOGGED) and path != "/":
            self.services.request_log.add(
                RequestLogRow(
                    request_id=request_id,
                    at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                    key_id=key_id,
                    method=method,
                    route=template,
                    status=status,
                    latency_ms=round(elapsed * 1000, 3),
                    tokens=int(state.get("tokens", 0)),
                    cost_usd=float(state.get("cost_usd", 0.0)),
                    outcome=outcome,
                )
            )
        log.info(
            "%s %s %d %.1fms%s",
            method,
            path,
            status,
            elapsed * 1000,
            "" if outcome == "completed" else f" ({outcome})",
            extra={
                "method": method,
                "path": path,
                "status": status,
                "latency_ms": round(elapsed * 1000, 2),
                "key_id": key_id,
                "user_agent": headers.get("user-agent"),
                "outcome": outcome,
            },
        )


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line, with the request id of the request being served."""

    _FIELDS = ("method", "path", "status", "latency_ms", "key_id", "user_agent", "outcome")

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON."""
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for name in self._FIELDS:
            if hasattr(record, name):
                data[name] = getattr(record, name)
        if record.exc_text:
            # Rendered already (and redacted, where PII redaction of logs is on).
            data["error"] = record.exc_text
        elif record.exc_info:
            data["error"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)
