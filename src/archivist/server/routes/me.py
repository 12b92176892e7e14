"""`/v1/me`: the calling key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from archivist.server.auth import SCOPES
from archivist.server.deps import Caller
from archivist.server.errors import COMMON_ERRORS, error_responses
from archivist.server.schemas import Me

router = APIRouter(prefix="/v1", tags=["keys"], responses=error_responses(*COMMON_ERRORS))


@router.get("/me", response_model=Me, operation_id="get_me")
def me(who: Caller) -> dict[str, Any]:
    """Return the calling key: id, name, scopes, collections (null: all), budget, and `can`: what the server lets it
    do ({"read", "write", "admin"} → bool; admin holds every scope), so a client never re-implements the rule."""
    return {**who.key.public(), "can": {scope: who.has(scope) for scope in SCOPES}}
