"""`Client`: the Archivist API over a blocking httpx client."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
from httpx_sse import ServerSentEvent, connect_sse

import archivist.client.calls as api
from archivist.client.calls import E, M
from archivist.client.errors import AgentRunTimeoutError, JobTimeoutError, status_error
from archivist.client.models import (
    AgentEvent,
    AgentRun,
    AgentRunDetail,
    AgentRunList,
    Answer,
    AnswerEvent,
    Collection,
    CollectionList,
    Deleted,
    Document,
    DocumentList,
    Job,
    JobAccepted,
    JobList,
    Me,
    SearchResult,
)


class Client:
    """A typed client of an Archivist server; use it as a context manager, or `close()` it.

    `base_url` defaults to $ARCHIVIST_URL (else http://127.0.0.1:8000), `api_key` to $ARCHIVIST_API_KEY. Every
    error is an `archivist.client.APIError`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(transport=transport, **api.client_options(base_url, api_key, timeout, headers))

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _get(self, call: api.Call, model: type[M]) -> M:
        try:
            response = self._http.request(call.method, call.path, **call.options())
        except httpx.TransportError as exc:
            raise api.transport_error(exc) from exc
        return api.parsed(response, model)

    # -- search and answers ------------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        collection: str | None = None,
        collections: list[str] | None = None,
        filters: Mapping[str, str] | None = None,
        k: int = 10,
        mode: api.Mode = "hybrid",
    ) -> SearchResult:
        """Return the best chunks for a query, within the collections the key may see (or those named)."""
        return self._get(api.search_call(query, k, mode, api.scoped(collection, collections, filters)), SearchResult)

    def answer(
        self,
        question: str,
        *,
        collection: str | None = None,
        collections: list[str] | None = None,
        filters: Mapping[str, str] | None = None,
        k: int | None = None,
        history: Sequence[api.Turn] | None = None,
    ) -> Answer:
        """Return a grounded answer with checked citations (or a refusal: `answer.refused`); `history` holds the
        conversation's earlier turns ({"role": "user" | "assistant", "content": …}, oldest first) for a follow-up."""
        return self._get(api.answer_call(question, k, api.scoped(collection, collections, filters), history), Answer)

    def stream_answer(
        self,
        question: str,
        *,
        collection: str | None = None,
        collections: list[str] | None = None,
        filters: Mapping[str, str] | None = None,
        k: int | None = None,
        history: Sequence[api.Turn] | None = None,
    ) -> Generator[AnswerEvent, None, None]:
        """Return the events of a streamed answer, as they come: retrieval, tokens, citations, done (closing the
        iterator early hangs up, which cancels the answer on the server)."""
        call = api.answer_call(question, k, api.scoped(collection, collections, filters), history)
        return self._events(call, api.answer_event)

    def _events(self, call: api.Call, parse: Callable[[ServerSentEvent], E | None]) -> Generator[E, None, None]:
        """Yield a stream's events that `parse` knows, typed, as they come (closing it early hangs up)."""
        try:
            with connect_sse(self._http, call.method, call.path, **call.options()) as source:
                if source.response.is_error:
                    source.response.read()
                    raise status_error(source.response)
                for sse in source.iter_sse():
                    if (event := parse(sse)) is not None:
                        yield event
        except httpx.TransportError as exc:
            raise api.transport_error(exc) from exc

    # -- agent runs --------------------------------------------------------------------------------------------

    def start_agent_run(
        self, task: str, *, collection: str | None = None, limits: Mapping[str, Any] | None = None
    ) -> AgentRun:
        """Start an agent run, driven on the server in the background; return it as it starts (`limits`:
        max_steps, max_tokens, max_cost_usd, max_wall_s)."""
        return self._get(api.agent_run_call(task, collection, limits), AgentRun)

    def stream_agent_run(
        self, task: str, *, collection: str | None = None, limits: Mapping[str, Any] | None = None
    ) -> Generator[AgentEvent, None, None]:
        """Return the events of a new run, as they come: the run, each step as it is journaled, then the run as it
        ended (closing the iterator early leaves the run going on the server: `get_agent_run` reads it)."""
        return self._events(api.agent_run_call(task, collection, limits), api.agent_event)

    def get_agent_run(self, run_id: str) -> AgentRunDetail:
        """Return an agent run with its journal (steps, side effects, approvals), by its whole id."""
        return self._get(api.Call("GET", api.agent_run_path(run_id)), AgentRunDetail)

    def list_agent_runs(self, *, limit: int = 50) -> list[AgentRun]:
        """Return the key's agent runs (everyone's for an admin key), the most recently updated first."""
        return (self._get(api.Call("GET", "/v1/agent/runs", params={"limit": limit}), AgentRunList)).runs

    def approve_agent_run(self, run_id: str, step: int, *, approved: bool = True) -> AgentRun:
        """Decide a paused step (`approved=False` rejects its call) and have the server drive the run on; return
        the run as it stands."""
        call = api.Call("POST", api.agent_run_path(run_id, "approve"), json={"step": step, "approved": approved})
        return self._get(call, AgentRun)

    def resume_agent_run(self, run_id: str) -> AgentRun:
        """Have the server drive on a paused run, or one whose process died; return the run as it stands."""
        return self._get(api.Call("POST", api.agent_run_path(run_id, "resume")), AgentRun)

    def wait_for_agent_run(self, run_id: str, *, timeout: float = 600.0, poll_interval: float = 0.25) -> AgentRunDetail:
        """Return a run once it has succeeded, failed or paused (check `run.status`); raise `AgentRunTimeoutError`
        past `timeout` seconds (the run goes on)."""
        deadline = time.monotonic() + timeout
        while not (run := self.get_agent_run(run_id)).ended:
            if time.monotonic() >= deadline:
                raise AgentRunTimeoutError(
                    f"agent run {run_id} still running after {timeout:g}s", code="agent_run_timeout"
                )
            time.sleep(poll_interval)
        return run

    # -- documents ---------------------------------------------------------------------------------------------

    def upload_file(
        self,
        collection: str,
        file: str | os.PathLike[str] | bytes,
        *,
        filename: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> JobAccepted:
        """Queue a file for ingestion (a path, or bytes with a `filename`); return its job."""
        if isinstance(file, bytes):
            if not filename:
                raise ValueError("uploading bytes needs a filename (its suffix says the format)")
            data = file
        else:
            data, filename = Path(file).read_bytes(), filename or Path(file).name
        return self._get(api.upload_file_call(collection, filename, data, metadata), JobAccepted)

    def upload_text(
        self,
        collection: str,
        title: str,
        text: str,
        *,
        source: str | None = None,
        media_type: Literal["text/markdown", "text/plain"] = "text/markdown",
        metadata: Mapping[str, Any] | None = None,
    ) -> JobAccepted:
        """Queue a text document for ingestion (re-sending a `source` replaces that document); return its job."""
        return self._get(api.upload_text_call(collection, title, text, source, media_type, metadata), JobAccepted)

    def list_documents(
        self, collection: str, *, limit: int = 100, offset: int = 0, sort: api.DocumentOrder = "source"
    ) -> DocumentList:
        """Return a page of a collection's documents, by source or newest first."""
        return self._get(api.list_documents_call(collection, limit, offset, sort), DocumentList)

    def get_document(self, collection: str, document_id: str) -> Document:
        """Return a document with its text and chunks."""
        return self._get(api.document_call("GET", collection, document_id), Document)

    def delete_document(self, collection: str, document_id: str) -> str:
        """Delete a document and its chunks; return its id."""
        return self._get(api.document_call("DELETE", collection, document_id), Deleted).deleted

    # -- jobs, collections, the key ----------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job:
        """Return an ingestion job's status, progress and result."""
        return self._get(api.job_call(job_id), Job)

    def list_jobs(self, *, collection: str | None = None, limit: int = 50) -> list[Job]:
        """Return recent jobs, newest first."""
        return self._get(api.list_jobs_call(collection, limit), JobList).jobs

    def wait_for_job(self, job_id: str, *, timeout: float = 300.0, poll_interval: float = 0.25) -> Job:
        """Return a job once it has succeeded or failed (check `job.status`); raise `JobTimeoutError` past
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (job := self.get_job(job_id)).finished:
            if time.monotonic() >= deadline:
                raise JobTimeoutError(f"job {job_id} still {job.status} after {timeout:g}s", code="job_timeout")
            time.sleep(poll_interval)
        return job

    def list_collections(self) -> list[Collection]:
        """Return the collections the key may see."""
        return self._get(api.Call("GET", "/v1/collections"), CollectionList).collections

    def create_collection(self, name: str, description: str = "", policy: dict[str, str] | None = None) -> Collection:
        """Create a collection (an admin key's right) with its guard policy ("injection": off, flag or block;
        "pii": off or redact; unset keys take the server's defaults); return it."""
        body: dict[str, Any] = {"name": name, "description": description}
        if policy:
            body["policy"] = policy
        return self._get(api.Call("POST", "/v1/collections", json=body), Collection)

    def me(self) -> Me:
        """Return the calling key and what it may do."""
        return self._get(api.Call("GET", "/v1/me"), Me)
