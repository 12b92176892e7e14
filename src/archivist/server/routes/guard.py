"""`/v1/guard/flagged`: the chunks the injection detector flagged at ingest, for review (admin), and clearing one.

A key limited to collections sees and clears only its collections' chunks: the store applies the key's collections
as the scope of its statement, exactly as a search scope, so another tenant's chunk ids answer 404 like ids that do
not exist.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from archivist.server.deps import Caller, ServicesDep
from archivist.server.errors import COMMON_ERRORS, ApiError, error_responses
from archivist.store.records import flagged_public
from archivist.types import MAX_ROW_ID

router = APIRouter(prefix="/v1", tags=["guard"], responses=error_responses(*COMMON_ERRORS))


class FlaggedChunk(BaseModel):
    chunk_id: int
    score: float | None
    collection: str
    source: str
    document_id: str
    text: str


class FlaggedList(BaseModel):
    flagged: list[FlaggedChunk]


class Cleared(BaseModel):
    cleared: int
    by: str


@router.get(
    "/guard/flagged",
    response_model=FlaggedList,
    operation_id="list_flagged_chunks",
    responses=error_responses(400, 403, 422),
)
def list_flagged(
    who: Caller,
    svc: ServicesDep,
    collection: Annotated[list[str] | None, Query(description="Only these collections (repeatable).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """List flagged chunks no person has cleared, highest score first (admin; within the key's collections)."""
    who.require("admin")
    scope = who.key.collections
    if collection:
        for name in collection:
            who.require_collection(name)
        scope = tuple(collection)
    return {"flagged": [flagged_public(c) for c in svc.archivist.store.flagged_chunks(scope, limit)]}


@router.post(
    "/guard/flagged/{chunk_id}/clear",
    response_model=Cleared,
    operation_id="clear_flagged_chunk",
    responses=error_responses(403, 404, 422),
)
def clear_flagged(
    chunk_id: Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="The chunk's id (from the flagged list).")],
    who: Caller,
    svc: ServicesDep,
) -> dict[str, Any]:
    """Clear a flagged chunk (admin; within the key's collections): it is no longer fenced as untrusted."""
    who.require("admin")
    by = f"key:{who.id}"
    if not svc.archivist.store.clear_chunk_flag(chunk_id, by, who.key.collections):
        raise ApiError(404, f"no flagged chunk {chunk_id}")
    return {"cleared": chunk_id, "by": by}
