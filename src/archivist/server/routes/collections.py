"""`/v1/collections`: create a collection, list the ones a key may see."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from archivist.server.deps import Caller, ServicesDep
from archivist.server.errors import COMMON_ERRORS, error_responses
from archivist.server.models import Body
from archivist.types import check_collection_name

router = APIRouter(prefix="/v1", tags=["collections"], responses=error_responses(*COMMON_ERRORS))


class CollectionIn(Body):
    name: str = Field(min_length=1, max_length=63, description="lowercase letters, digits, '-' and '_'")
    description: str = Field(default="", max_length=2000)
    policy: dict[str, str] = Field(
        default_factory=dict,
        description='guard policy: "injection" (off, flag or block: what flagged questions over it get) and "pii" '
        "(off or redact: personal data replaced at ingest and in answers)",
    )


class Collection(BaseModel):
    name: str
    description: str
    created_at: str
    documents: int
    policy: dict[str, str] = Field(default_factory=dict)


class CollectionList(BaseModel):
    collections: list[Collection]


@router.post(
    "/collections",
    status_code=201,
    response_model=Collection,
    operation_id="create_collection",
    responses=error_responses(400, 403, 409, 413, 422),
)
def create_collection(body: CollectionIn, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Create a collection with its guard policy (admin; a key limited to collections only among its own)."""
    who.require("admin")
    # Before the name is checked: a name made to slip past (case, spaces, wildcards) is outside the key's
    # collections as written, and answers 403 like any other tenant's name.
    who.require_collection(body.name)
    check_collection_name(body.name)
    record = svc.archivist.store.create_collection(body.name, body.description, body.policy)
    return {
        "name": record.name,
        "description": record.description,
        "created_at": record.created_at,
        "documents": 0,
        "policy": record.policy,
    }


@router.get(
    "/collections", response_model=CollectionList, operation_id="list_collections", responses=error_responses(403)
)
def list_collections(who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """List the collections this key may see, with their document counts."""
    who.require("read")
    return {
        "collections": [
            {
                "name": c.name,
                "description": c.description,
                "created_at": c.created_at,
                "documents": c.documents,
                "policy": c.policy,
            }
            for c in svc.archivist.store.list_collections()
            if who.may_see(c.name)
        ]
    }
