"""The calls of the API as requests to send and the parsing of what comes back, shared by both clients."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent
from pydantic import BaseModel

from archivist.client.errors import APIConnectionError, APIError, APITimeoutError, StreamError, status_error
from archivist.client.models import (
    AgentDoneEvent,
    AgentEvent,
    AgentRunEvent,
    AgentStepEvent,
    AnswerEvent,
    CitationsEvent,
    DoneEvent,
    RetrievalEvent,
    TokenEvent,
)

M = TypeVar("M", bound=BaseModel)
#: a typed event of a stream
E = TypeVar("E", bound=BaseModel)
#: the environment variables a client reads when it is given no URL or key
URL_VARIABLE, KEY_VARIABLE = "ARCHIVIST_URL", "ARCHIVIST_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
Mode = Literal["hybrid", "dense", "bm25"]
DocumentOrder = Literal["source", "newest"]


@dataclass(frozen=True, slots=True)
class Call:
    """One request of the API: method, path, and what it sends."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """Return the keyword arguments of httpx's `request` / `stream` for this call."""
        sent = {"params": self.params, "json": self.json, "files": self.files, "data": self.data}
        return {"headers": self.headers, **{k: v for k, v in sent.items() if v is not None}}


def client_options(
    base_url: str | None, api_key: str | None, timeout: float, headers: Mapping[str, str] | None
) -> dict[str, Any]:
    """Return the options of the httpx client under an Archivist client (the key as a bearer token)."""
    key = api_key if api_key is not None else os.environ.get(KEY_VARIABLE)
    sent = {"User-Agent": "archivist-client", **(headers or {})}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    return {"base_url": base_url or os.environ.get(URL_VARIABLE) or DEFAULT_URL, "headers": sent, "timeout": timeout}


def scoped(collection: str | None, collections: list[str] | None, filters: Mapping[str, str] | None) -> dict[str, Any]:
    """Return the collection scope and filters of a query body (only what is set)."""
    body: dict[str, Any] = {}
    if collection is not None:
        body["collection"] = collection
    if collections is not None:
        body["collections"] = list(collections)
    if filters:
        body["filters"] = dict(filters)
    return body


def search_call(query: str, k: int, mode: Mode, scope: dict[str, Any]) -> Call:
    """Return the request of a search."""
    return Call("POST", "/v1/search", json={"query": query, "k": k, "mode": mode, **scope})


#: an earlier turn of a conversation: {"role": "user" | "assistant", "content": text}
Turn = Mapping[str, str]


def answer_call(question: str, k: int | None, scope: dict[str, Any], history: Sequence[Turn] | None = None) -> Call:
    """Return the request of an answer (the same for a streamed one); `history`: the earlier turns, oldest first."""
    body: dict[str, Any] = {"question": question, **scope}
    if k is not None:
        body["k"] = k
    if history:
        body["history"] = [{"role": t["role"], "content": t["content"]} for t in history]
    return Call("POST", "/v1/answer", json=body)


def upload_file_call(collection: str, filename: str, data: bytes, metadata: Mapping[str, Any] | None) -> Call:
    """Return the request of a file upload (multipart)."""
    form = {"metadata": json.dumps(dict(metadata))} if metadata else None
    return Call("POST", _documents(collection), files={"file": (filename, data)}, data=form)


def upload_text_call(
    collection: str,
    title: str,
    text: str,
    source: str | None,
    media_type: Literal["text/markdown", "text/plain"],
    metadata: Mapping[str, Any] | None,
) -> Call:
    """Return the request of a text document."""
    body: dict[str, Any] = {"title": title, "text": text, "media_type": media_type, "metadata": dict(metadata or {})}
    if source is not None:
        body["source"] = source
    return Call("POST", _documents(collection), json=body)


def list_documents_call(collection: str, limit: int, offset: int, sort: DocumentOrder) -> Call:
    """Return the request of a page of a collection's documents."""
    return Call("GET", _documents(collection), params={"limit": limit, "offset": offset, "sort": sort})


def document_call(method: Literal["GET", "DELETE"], collection: str, document_id: str) -> Call:
    """Return the request that reads or deletes one document."""
    return Call(method, f"{_documents(collection)}/{path_segment(document_id)}")


def list_jobs_call(collection: str | None, limit: int) -> Call:
    """Return the request of the recent jobs (of one collection, or every one the key may see)."""
    params: dict[str, Any] = {"limit": limit}
    if collection is not None:
        params["collection"] = collection
    return Call("GET", "/v1/jobs", params=params)


def job_call(job_id: str) -> Call:
    """Return the request of one job's status."""
    return Call("GET", f"/v1/jobs/{path_segment(job_id)}")


def _documents(collection: str) -> str:
    return f"/v1/collections/{path_segment(collection)}/documents"


def path_segment(value: str) -> str:
    """Return a value as one path segment: a `/` or `?` in it cannot reach another route."""
    if not value:
        raise ValueError("a collection name or id must not be empty")
    return quote(value, safe="")


def parsed(response: httpx.Response, model: type[M]) -> M:
    """Return a response's body as `model`, or raise the API's error for an error status."""
    if response.is_error:
        raise status_error(response)
    return model.model_validate_json(response.content)


def answer_event(sse: ServerSentEvent) -> AnswerEvent | None:
    """Return a streamed answer's event as a typed one (None for an event this client does not know); raise
    `StreamError` for an `error` event."""
    data = json.loads(sse.data) if sse.data else {}
    if sse.event == "retrieval":
        return RetrievalEvent.model_validate(data)
    if sse.event == "token":
        return TokenEvent.model_validate(data)
    if sse.event == "citations":
        return CitationsEvent.model_validate(data)
    if sse.event == "done":
        return DoneEvent.model_validate({"answer": data})
    if sse.event == "error":
        raise stream_error(data)
    return None


def stream_error(data: dict[str, Any]) -> StreamError:
    """Return the client's error for a stream's `error` event."""
    error = data.get("error", {})
    return StreamError(
        str(error.get("message", "the stream failed")),
        code=str(error.get("code", "error")),
        request_id=error.get("request_id"),
    )


def agent_run_call(task: str, collection: str | None, limits: Mapping[str, Any] | None) -> Call:
    """Return the request that starts an agent run (the same for a streamed one)."""
    body: dict[str, Any] = {"task": task}
    if collection is not None:
        body["collection"] = collection
    if limits:
        body["limits"] = dict(limits)
    return Call("POST", "/v1/agent/runs", json=body)


def agent_run_path(run_id: str, action: Literal["", "approve", "resume"] = "") -> str:
    """Return the path of a run (or of an action on it)."""
    return f"/v1/agent/runs/{path_segment(run_id)}" + (f"/{action}" if action else "")


def agent_event(sse: ServerSentEvent) -> AgentEvent | None:
    """Return a streamed run's event as a typed one (None for an event this client does not know); raise
    `StreamError` for an `error` event."""
    data = json.loads(sse.data) if sse.data else {}
    if sse.event == "run":
        return AgentRunEvent.model_validate({"run": data})
    if sse.event == "step":
        return AgentStepEvent.model_validate({"step": data})
    if sse.event == "done":
        return AgentDoneEvent.model_validate({"run": data})
    if sse.event == "error":
        raise stream_error(data)
    return None


def transport_error(exc: httpx.TransportError) -> APIError:
    """Return the client's error for a connection that failed or timed out."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"no answer from the server in time: {exc}")
    return APIConnectionError(f"could not reach the server: {exc}")
