"""`/v1/collections/{collection}/documents`: queue uploads for ingestion, list, read and delete documents."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from archivist.ingest.guards import redact_fields
from archivist.ingest.uploads import upload_name
from archivist.server.auth import Principal
from archivist.server.deps import Caller, ServicesDep
from archivist.server.errors import COMMON_ERRORS, ApiError, error_responses
from archivist.server.models import Body
from archivist.server.schemas import Deleted, Document, DocumentList
from archivist.server.scope import require_collection
from archivist.server.services import Services
from archivist.store.filters import Filters
from archivist.store.records import DocumentOrder, document_text
from archivist.types import DocumentRecord

router = APIRouter(prefix="/v1", tags=["documents"], responses=error_responses(*COMMON_ERRORS))


class TextDocumentIn(Body):
    title: str = Field(min_length=1, max_length=500)
    text: str = Field(min_length=1)
    source: str | None = Field(default=None, max_length=500, description="a stable name; re-posting it replaces")
    media_type: Literal["text/markdown", "text/plain"] = "text/markdown"
    metadata: dict[str, Any] = Field(default_factory=dict)


class JobAccepted(BaseModel):
    job_id: str
    status: str
    collection: str


# The body is read by hand (a file upload or JSON text), so its two forms are described here.
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
    openapi_extra=_UPLOAD_DOC,
    operation_id="upload_document",
    responses=error_responses(400, 403, 404, 413, 415, 422),
)
async def upload_document(collection: str, request: Request, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Queue a document for ingestion: a file upload (multipart) or JSON text; returns a job id at once."""
    who.require("write")
    require_collection(svc, who, collection)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    redacts = svc.archivist.store.collection_policy(collection).get("pii") == "redact"
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=5)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "multipart upload needs a 'file' field holding the document")
        metadata = _metadata_field(form.get("metadata"))
        if redacts:
            metadata = (await run_in_threadpool(redact_fields, None, metadata, svc.pii()))[1]
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
        title, metadata = body.title, _finite(body.metadata)
        if redacts:
            # The job's record outlives the job: in a pii=redact collection it keeps the title and metadata (and a
            # source made from the title) redacted. A source given as such is the document's identity, kept.
            redacted, metadata = await run_in_threadpool(redact_fields, title, metadata, svc.pii())
            title = redacted or title
        filename = upload_name((body.source or title) + suffix)
        source = body.source or f"text/{upload_name(title, 'document', is_path=False)}"
        data = body.text.encode("utf-8")
    else:
        raise ApiError(415, "send multipart/form-data (field 'file') or application/json {title, text}")
    if not data:
        raise ApiError(400, "the document is empty")
    job = svc.enqueue(collection, filename, data, source=source, title=title, metadata=metadata, key_id=who.id)
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
    return _finite(value)


def _finite(metadata: dict[str, Any]) -> dict[str, Any]:
    """Return the metadata, or raise 400 when it holds NaN or an infinity (JSON cannot store them, and one such
    value would break every filtered search over the store)."""
    try:
        json.dumps(metadata, allow_nan=False)
    except ValueError as exc:
        raise ApiError(400, "'metadata' numbers must be finite (no NaN or Infinity)") from exc
    return metadata


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ())) or 'body'}: {first.get('msg')}"
    return str(exc)


@router.get(
    "/collections/{collection}/documents",
    response_model=DocumentList,
    operation_id="list_documents",
    responses=error_responses(400, 403, 404, 422),
)
def list_documents(
    collection: str,
    who: Caller,
    svc: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,  # bounded: SQLite integers are 64-bit
    sort: Annotated[DocumentOrder, Query(description="source, or newest (last written) first")] = "source",
) -> dict[str, Any]:
    """List a collection's documents, by source or newest first."""
    who.require("read")
    require_collection(svc, who, collection)
    scope = Filters().within([collection])
    store = svc.archivist.store
    docs = store.list_documents(limit=limit, offset=offset, filters=scope, order=sort)
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


def _document(svc: Services, who: Principal, collection: str, document_id: str) -> DocumentRecord:
    require_collection(svc, who, collection)
    doc = svc.archivist.store.get_document(document_id)
    if doc is None or doc.collection != collection:
        raise ApiError(404, f"no document {document_id!r} in collection {collection!r}")
    return doc


@router.get(
    "/collections/{collection}/documents/{document_id}",
    response_model=Document,
    operation_id="get_document",
    responses=error_responses(400, 403, 404, 422),
)
def get_document(collection: str, document_id: str, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Return a document, its text and its chunks (citation spans index into `text`)."""
    who.require("read")
    doc = _document(svc, who, collection, document_id)
    chunks = svc.archivist.store.document_chunks(document_id)
    return {
        **_doc_dict(doc),
        "text": document_text(chunks, doc.char_count),
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


@router.delete(
    "/collections/{collection}/documents/{document_id}",
    response_model=Deleted,
    operation_id="delete_document",
    responses=error_responses(400, 403, 404, 422),
)
def delete_document(collection: str, document_id: str, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Delete a document and its chunks."""
    who.require("write")
    _document(svc, who, collection, document_id)
    svc.archivist.store.delete_document(document_id)
    return {"deleted": document_id}
