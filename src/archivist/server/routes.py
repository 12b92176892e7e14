"""The `/v1` endpoints: collections, documents, jobs, search, answers (JSON or SSE), eval runs, usage."""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, Generator
from pathlib import PurePath
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from archivist.answer.answerer import Answer, AnswerDone, Answerer, RetrievalDone
from archivist.llm.accounting import Budget, KeyBudget
from archivist.llm.base import Cancellation, TokenEvent
from archivist.llm.errors import Cancelled
from archivist.server.auth import Principal
from archivist.server.errors import ApiError, error_body, request_id_of
from archivist.server.jobs import upload_name
from archivist.server.middleware import CLIENT_DISCONNECTED
from archivist.server.services import Services
from archivist.server.usage import usage_report, usage_since
from archivist.store.base import Filters, check_filter_keys
from archivist.types import ArchivistError, DocumentRecord, UsageError, check_collection_name

log = logging.getLogger("archivist.server")
router = APIRouter(prefix="/v1")

_bearer = HTTPBearer(auto_error=False, description="An Archivist API key: `Authorization: Bearer ak_…`")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key, in X-API-Key")


def services(request: Request) -> Services:
    """Return the app's services (built once by create_app)."""
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(services)]


async def principal(
    request: Request,
    svc: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header_key)],
) -> Principal:
    """Return the calling key (401 without a valid one, 429 past its rate limit or its address's failures)."""
    try:
        who = svc.auth.authenticate(bearer.credentials if bearer else header_key)
    except ApiError as exc:
        # Failures are throttled per client address; a valid key is authenticated first, so it is never slowed by
        # someone else's failures, even behind the same address.
        address = _client_address(request)
        wait = svc.auth_failures.acquire(address) if exc.status == 401 else 0.0
        if wait:
            svc.metrics.rate_limited.inc()
            raise ApiError(
                429,
                f"too many failed authentications from {address}: retry in {wait:.1f}s",
                headers={"Retry-After": svc.auth_failures.retry_after(wait), "WWW-Authenticate": "Bearer"},
            ) from exc
        raise
    request.state.key_id = who.id
    wait = svc.limiter.acquire(who.id, who.key.rate_per_minute)
    if wait:
        svc.metrics.rate_limited.inc()
        raise ApiError(
            429,
            f"rate limit of key {who.id} reached: retry in {wait:.1f}s",
            headers={"Retry-After": svc.limiter.retry_after(wait)},
        )
    return who


Caller = Annotated[Principal, Depends(principal)]


def _client_address(request: Request) -> str:
    """Return who a request comes from, for throttling: its address, or the /64 network of an IPv6 one (a host
    owns a whole /64, so single addresses would give it unlimited buckets)."""
    host = request.client.host if request.client else "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ip.ipv4_mapped or ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# -- request and response bodies ------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CollectionIn(_Body):
    name: str = Field(min_length=1, max_length=63, description="lowercase letters, digits, '-' and '_'")
    description: str = Field(default="", max_length=2000)


class Collection(BaseModel):
    name: str
    description: str
    created_at: str
    documents: int


class CollectionList(BaseModel):
    collections: list[Collection]


class TextDocumentIn(_Body):
    title: str = Field(min_length=1, max_length=500)
    text: str = Field(min_length=1)
    source: str | None = Field(default=None, max_length=500, description="a stable name; re-posting it replaces")
    media_type: Literal["text/markdown", "text/plain"] = "text/markdown"
    metadata: dict[str, Any] = Field(default_factory=dict)


class JobAccepted(BaseModel):
    job_id: str
    status: str
    collection: str


class Progress(BaseModel):
    done: int
    total: int


class Job(BaseModel):
    id: str
    kind: str
    collection: str
    status: str
    progress: Progress
    result: dict[str, Any] | None
    error: str | None
    attempts: int = Field(description="times a worker has taken the job (a retry or a dead worker's takeover adds one)")
    created_at: str
    updated_at: str


class JobList(BaseModel):
    jobs: list[Job]


class _Scoped(_Body):
    collection: str | None = Field(default=None, description="one collection (default: every one the key may see)")
    collections: list[str] | None = Field(default=None, max_length=100)
    filters: dict[str, str] = Field(
        default_factory=dict, description="key: value, ANDed across keys; a value with * ? [ is a glob"
    )


class SearchIn(_Scoped):
    query: str = Field(min_length=1, max_length=4000)
    k: int = Field(default=10, ge=1, le=100)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"


class SearchOut(BaseModel):
    hits: list[dict[str, Any]]
    took_ms: float
    warnings: list[str] = []


class AnswerIn(_Scoped):
    question: str = Field(min_length=1, max_length=4000)
    k: int | None = Field(default=None, ge=1, le=50)


# -- helpers ---------------------------------------------------------------------------------------


def _collection(svc: Services, who: Principal, name: str) -> None:
    """Raise 400/403/404 unless the collection name is valid, visible to the key and exists."""
    check_collection_name(name)  # a UsageError answers 400 like every other
    who.require_collection(name)
    if not svc.archivist.store.has_collection(name):
        raise ApiError(404, f"no collection {name!r}")


def _scope_filters(svc: Services, who: Principal, body: _Scoped) -> Filters:
    """Return the body's filters within the collections the request may search (a clause of its own)."""
    requested = ([body.collection] if body.collection else []) + list(body.collections or [])
    for name in requested:
        _collection(svc, who, name)
    parsed = Filters.from_mapping(body.filters, reserved=("collection", "collections"))
    if requested:
        scoped = parsed.within(requested)
    elif who.key.collections is not None:
        scoped = parsed.within(who.key.collections)  # an empty list (no collection left) reads nothing
    else:
        scoped = parsed
    check_filter_keys(svc.archivist.store, scoped)
    return scoped


def _document(svc: Services, who: Principal, collection: str, document_id: str) -> DocumentRecord:
    _collection(svc, who, collection)
    doc = svc.archivist.store.get_document(document_id)
    if doc is None or doc.collection != collection:
        raise ApiError(404, f"no document {document_id!r} in collection {collection!r}")
    return doc


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n".encode()


# -- collections -----------------------------------------------------------------------------------


@router.post("/collections", status_code=201, response_model=Collection, tags=["collections"])
def create_collection(body: CollectionIn, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Create a collection (admin)."""
    who.require("admin")
    check_collection_name(body.name)
    record = svc.archivist.store.create_collection(body.name, body.description)
    return {"name": record.name, "description": record.description, "created_at": record.created_at, "documents": 0}


@router.get("/collections", response_model=CollectionList, tags=["collections"])
def list_collections(who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """List the collections this key may see, with their document counts."""
    who.require("read")
    return {
        "collections": [
            {"name": c.name, "description": c.description, "created_at": c.created_at, "documents": c.documents}
            for c in svc.archivist.store.list_collections()
            if who.may_see(c.name)
        ]
    }


# -- documents -------------------------------------------------------------------------------------

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "metadata": {"type": "string", "description": "a JSON object, added to the document"},
                    },
                }
            },
            "application/json": {
                "schema": TextDocumentIn.model_json_schema(ref_template="#/components/schemas/{model}")
            },
        },
    }
}


@router.post(
    "/collections/{collection}/documents",
    status_code=202,
    response_model=JobAccepted,
    tags=["documents"],
    openapi_extra=_UPLOAD_DOC,
)
async def upload_document(collection: str, request: Request, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Queue a document for ingestion: a file upload (multipart) or JSON text; returns a job id at once."""
    who.require("write")
    _collection(svc, who, collection)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=5)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "multipart upload needs a 'file' field holding the document")
        metadata = _metadata_field(form.get("metadata"))
        data = await upload.read()
        filename = upload_name(upload.filename or "upload.txt")
        source = f"upload/{filename}"
        title = None
    elif content_type == "application/json":
        try:
            body = TextDocumentIn.model_validate_json(await request.body())
        except ValueError as exc:
            raise ApiError(422, f"invalid JSON document: {_first_error(exc)}", code="validation_error") from exc
        suffix = ".md" if body.media_type == "text/markdown" else ".txt"
        filename = upload_name((body.source or body.title) + suffix)
        source = body.source or f"text/{upload_name(body.title, 'document', is_path=False)}"
        data, metadata, title = body.text.encode("utf-8"), body.metadata, body.title
    else:
        raise ApiError(415, "send multipart/form-data (field 'file') or application/json {title, text}")
    if not data:
        raise ApiError(400, "the document is empty")
    job = svc.jobs.submit(collection, filename, data, source=source, title=title, metadata=metadata, key_id=who.id)
    return {"job_id": job.id, "status": job.status, "collection": collection}


def _metadata_field(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise ApiError(400, "'metadata' must be a JSON object in a text field")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"'metadata' is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "'metadata' must be a JSON object")
    return value


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ())) or 'body'}: {first.get('msg')}"
    return str(exc)


@router.get("/collections/{collection}/documents", tags=["documents"])
def list_documents(
    collection: str,
    who: Caller,
    svc: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,  # bounded: SQLite integers are 64-bit
) -> dict[str, Any]:
    """List a collection's documents, by source."""
    who.require("read")
    _collection(svc, who, collection)
    scope = Filters().within([collection])
    store = svc.archivist.store
    docs = store.list_documents(limit=limit, offset=offset, filters=scope)
    return {"total": store.count_documents(scope), "offset": offset, "documents": [_doc_dict(d) for d in docs]}


def _doc_dict(d: DocumentRecord) -> dict[str, Any]:
    return {
        "id": d.id,
        "collection": d.collection,
        "source": d.source,
        "title": d.title,
        "media_type": d.media_type,
        "metadata": d.metadata,
        "chunk_count": d.chunk_count,
        "char_count": d.char_count,
        "version": d.version,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    }


@router.get("/collections/{collection}/documents/{document_id}", tags=["documents"])
def get_document(collection: str, document_id: str, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Return a document, its text and its chunks (citation spans index into `text`)."""
    who.require("read")
    doc = _document(svc, who, collection, document_id)
    chunks = svc.archivist.store.document_chunks(document_id)
    # The store keeps chunks, which are exact spans of the text; gaps between them (whitespace the chunker
    # skipped, mostly paragraph breaks) become newlines so that every offset still points where it did.
    parts, pos = [], 0
    for c in sorted(chunks, key=lambda c: c.start):
        if c.start > pos:
            parts.append("\n" * (c.start - pos))
            pos = c.start
        if c.end > pos:
            parts.append(c.text[pos - c.start :])
            pos = c.end
    if doc.char_count > pos:
        parts.append("\n" * (doc.char_count - pos))
    return {
        **_doc_dict(doc),
        "text": "".join(parts),
        "chunks": [
            {
                "id": c.id,
                "ordinal": c.ordinal,
                "start": c.start,
                "end": c.end,
                "heading_path": list(c.heading_path),
                "page": c.page,
                "token_count": c.token_count,
            }
            for c in chunks
        ],
    }


@router.delete("/collections/{collection}/documents/{document_id}", tags=["documents"])
def delete_document(collection: str, document_id: str, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Delete a document and its chunks."""
    who.require("write")
    _document(svc, who, collection, document_id)
    svc.archivist.store.delete_document(document_id)
    return {"deleted": document_id}


# -- jobs ------------------------------------------------------------------------------------------


@router.get("/jobs/{job_id}", response_model=Job, tags=["jobs"])
def get_job(job_id: str, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Return an ingestion job's status and progress."""
    who.require("read")
    job = svc.archivist.store.get_job(job_id)
    if job is None or not who.may_see(job.collection):
        raise ApiError(404, f"no job {job_id!r}")
    return job.public()


@router.get("/jobs", response_model=JobList, tags=["jobs"])
def list_jobs(
    who: Caller,
    svc: ServicesDep,
    collection: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """List recent ingestion jobs, newest first."""
    who.require("read")
    if collection is not None:
        _collection(svc, who, collection)
    # Scoped in the query, not after it: a key sees up to `limit` of its own jobs, however many others there are.
    scope = [collection] if collection is not None else who.key.collections
    jobs = svc.archivist.store.list_jobs(collections=scope, limit=limit)
    return {"jobs": [j.public() for j in jobs]}


# -- search and answers ----------------------------------------------------------------------------


@router.post("/search", response_model=SearchOut, tags=["search"], response_class=JSONResponse)
def search(body: SearchIn, request: Request, who: Caller, svc: ServicesDep) -> JSONResponse:
    """Hybrid search over the collections the key may see."""
    who.require("read")
    if not body.query.strip():
        raise ApiError(400, "the query is empty")
    filters = _scope_filters(svc, who, body)
    # Query expansion and an LLM reranker call the model: metered and charged to the key like an answer's calls.
    meter = Budget(parent=who.budget(svc.archivist.store))
    started = time.perf_counter()
    try:
        outcome = svc.searcher().search(body.query, k=body.k, filters=filters, mode=body.mode, budget=meter)
    finally:
        _charge(request, svc, meter)
    # The hottest endpoint: built from typed records already, so it skips response-model validation.
    return JSONResponse(
        {
            "hits": [h.to_dict() for h in outcome.hits],
            "took_ms": round((time.perf_counter() - started) * 1000, 2),
            "warnings": outcome.warnings,
        }
    )


@router.post(
    "/answer",
    tags=["answers"],
    responses={200: {"content": {"application/json": {}, "text/event-stream": {}}}},
)
async def answer(body: AnswerIn, request: Request, who: Caller, svc: ServicesDep) -> Any:
    """Answer a question with checked citations; Server-Sent Events when the client accepts text/event-stream.

    A client that hangs up cancels the answer: the model call in flight is aborted (a stream's connection closed
    at once), no further call is made, what was generated is charged, and the request log says so.
    """
    who.require("read")
    if not body.question.strip():
        raise ApiError(400, "the question is empty")

    def setup() -> tuple[Filters, KeyBudget | None, Answerer]:
        return _scope_filters(svc, who, body), who.budget(svc.archivist.store), svc.answerer()

    # Store reads, and the answerer's first build, stay off the event loop.
    filters, key_budget, answerer = await run_in_threadpool(setup)
    # The request's own budget meters every model call made for it (and passes each charge on to the key's
    # budget, if it has one): an answer cut short is accounted from it.
    meter = Budget(parent=key_budget)
    cancellation = Cancellation()
    charged = False

    def charge(usage: dict[str, Any] | Budget) -> None:
        nonlocal charged
        if not charged:  # once: a client may hang up after the finished answer was charged
            charged = True
            _charge(request, svc, usage)

    if "text/event-stream" not in request.headers.get("accept", ""):

        async def cancel_on_disconnect() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            cancellation.cancel()

        result: Answer | None = None
        failure: Exception | None = None
        async with anyio.create_task_group() as watch:
            watch.start_soon(cancel_on_disconnect)
            try:
                result = await run_in_threadpool(
                    answerer.answer, body.question, k=body.k, filters=filters, budget=meter, cancellation=cancellation
                )
            except Exception as exc:  # raised below, outside the task group (which would wrap it in a group)
                failure = exc
            watch.cancel_scope.cancel()
        if isinstance(failure, Cancelled):
            charge(meter)
            request.state.outcome = CLIENT_DISCONNECTED
            # 499 (nginx's "client closed request"): nobody reads it, the logs and metrics do.
            message = "the client hung up: the answer was cancelled"
            return JSONResponse(error_body(CLIENT_DISCONNECTED, message, request_id_of(request)), status_code=499)
        if failure is not None:
            raise failure
        assert result is not None
        charge(result.usage)
        return JSONResponse(result.to_dict())

    request_id = request_id_of(request)

    def events() -> Generator[bytes, None, None]:
        stream = answerer.stream(body.question, k=body.k, filters=filters, budget=meter, cancellation=cancellation)
        try:
            for event in stream:
                if isinstance(event, RetrievalDone):
                    yield _sse("retrieval", {"hits": [h.to_dict() for h in event.hits]})
                elif isinstance(event, TokenEvent):
                    yield _sse("token", {"text": event.text})
                elif isinstance(event, AnswerDone):
                    final = event.answer
                    charge(final.usage)
                    yield _sse(
                        "citations",
                        {
                            "answer": final.answer,
                            "citations": [c.to_dict() for c in final.citations],
                            "support": final.support,
                            "refused": final.refused,
                            "unsupported": final.unsupported,
                        },
                    )
                    yield _sse("done", final.to_dict())
        except Cancelled:
            return  # the client is gone: nobody to tell
        except ArchivistError as exc:
            code = "bad_request" if isinstance(exc, UsageError) else "upstream_error"
            yield _sse("error", error_body(code, str(exc), request_id))
        except Exception:
            log.exception("answer stream failed")
            yield _sse("error", error_body("internal", "internal error; the server log has the details", request_id))
        finally:
            # Now and in this thread, not whenever the collector gets to it: closing the answer's stream closes the
            # model's (and its connection) and charges what it generated.
            stream.close()

    chunks = events()
    # A generator runs in one thread at a time: the close waits for a step still in flight.
    turn = threading.Lock()

    def step() -> bytes | None:
        with turn:
            return next(chunks, None)

    def close() -> None:
        with turn:
            chunks.close()

    async def sse() -> AsyncGenerator[bytes, None]:
        ended = False
        try:
            # Each step runs in a worker thread. On cancellation the wait is abandoned rather than sitting out a step
            # blocked on the model: the cancellation below is what unblocks it.
            while (chunk := await anyio.to_thread.run_sync(step, abandon_on_cancel=True)) is not None:
                yield chunk
            ended = True
        finally:
            if not ended:
                # The client hung up (Starlette cancels the response, or it is closed unfinished): abort the model
                # call in flight, close the answer's stream, charge what was generated.
                cancellation.cancel()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(close)
                charge(meter)
                request.state.outcome = CLIENT_DISCONNECTED

    body_chunks = sse()
    return StreamingResponse(
        body_chunks,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # Runs after the response, also when its client hung up: it closes a stream left suspended between two
        # chunks (its `finally` then does the accounting), and does nothing to one that ended.
        background=BackgroundTask(body_chunks.aclose),
    )


def _charge(request: Request, svc: Services, usage: dict[str, Any] | Budget) -> None:
    """Record an answer's model usage on the request (for the request log) and in the metrics: the usage the answer
    reports, or, for an answer cut short, what its request's budget was charged until then."""
    if isinstance(usage, Budget):
        tokens, cost = usage.spent_tokens, usage.spent_cost_usd
    else:
        tokens = int(usage.get("prompt_tokens", 0) or 0) + int(usage.get("completion_tokens", 0) or 0)
        cost = float(usage.get("cost_usd", 0.0) or 0.0)
    request.state.tokens = tokens
    request.state.cost_usd = cost
    if tokens:
        svc.metrics.llm_tokens.inc(tokens)
    if cost:
        svc.metrics.llm_cost.inc(cost)


# -- eval runs, usage, identity --------------------------------------------------------------------


@router.get("/evals/runs", tags=["evals"])
def list_eval_runs(
    who: Caller,
    svc: ServicesDep,
    dataset: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """List stored eval runs, newest first, with their headline metrics."""
    who.require("read")
    keys = ("id", "kind", "dataset", "split", "tag", "created_at", "fingerprint_hash", "metrics", "slice")
    runs = svc.archivist.store.list_eval_runs(dataset=dataset, limit=limit)
    return {"runs": [{k: r.get(k) for k in keys} for r in runs]}


@router.get("/evals/runs/{run_id}", tags=["evals"])
def get_eval_run(run_id: str, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Return one stored eval run: config fingerprint, metrics, per-query results, timings."""
    who.require("read")
    run = svc.archivist.store.get_eval_run(run_id)
    if run is None:
        raise ApiError(404, f"no eval run {run_id!r}")
    return run if who.has("admin") else _without_server_paths(run)


#: (section, field) of an eval run that name a file or store on the server: only their last part is shown
_SERVER_PATHS = (("config", "unanswerable"), ("corpus", "store"))


def _without_server_paths(run: dict[str, Any]) -> dict[str, Any]:
    """Return an eval run without the server's file paths and store URLs (shown to admin keys only), by name."""
    public = {k: v for k, v in run.items() if k != "dataset_path"}
    for section, name in _SERVER_PATHS:
        part = public.get(section)
        if isinstance(part, dict) and part.get(name):
            public[section] = {**part, name: PurePath(str(part[name])).name}
    return public


@router.get("/usage", tags=["usage"])
def usage(
    who: Caller,
    svc: ServicesDep,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> dict[str, Any]:
    """Requests, errors, tokens, cost and latency percentiles by key and day (every key's for admin)."""
    who.require("read")
    store = svc.archivist.store
    svc.request_log.flush()
    key_id = None if who.has("admin") else who.id
    rows = store.request_log(since=usage_since(days), key_id=key_id)
    names = {k.id: k.name for k in store.list_api_keys()}
    return usage_report(rows, names, days=days)


@router.get("/me", tags=["keys"])
def me(who: Caller) -> dict[str, Any]:
    """Return the calling key: id, name, scopes, collections (null: all), budget."""
    return who.key.public()
