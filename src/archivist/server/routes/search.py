"""`/v1/search`: hybrid search over the collections a key may see."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from archivist.llm.accounting import Budget
from archivist.server.deps import Caller, ServicesDep
from archivist.server.errors import COMMON_ERRORS, ApiError, error_responses
from archivist.server.metering import charge_usage
from archivist.server.models import Scoped
from archivist.server.schemas import SearchResult
from archivist.server.scope import scope_filters

router = APIRouter(prefix="/v1", tags=["search"], responses=error_responses(*COMMON_ERRORS))


class SearchIn(Scoped):
    query: str = Field(min_length=1, max_length=4000)
    k: int = Field(default=10, ge=1, le=100)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"


@router.post(
    "/search",
    response_model=SearchResult,
    response_class=JSONResponse,
    operation_id="search",
    responses=error_responses(400, 403, 404, 413, 422),
)
def search(body: SearchIn, request: Request, who: Caller, svc: ServicesDep) -> JSONResponse:
    """Hybrid search over the collections the key may see."""
    who.require("read")
    if not body.query.strip():
        raise ApiError(400, "the query is empty")
    filters = scope_filters(svc, who, body)
    # Query expansion and an LLM reranker call the model: metered and charged to the key like an answer's calls.
    meter = Budget(parent=who.budget(svc.archivist.store))
    started = time.perf_counter()
    try:
        outcome = svc.searcher().search(body.query, k=body.k, filters=filters, mode=body.mode, budget=meter)
    finally:
        charge_usage(request, svc, meter)
    # The hottest endpoint: built from typed records already, so it skips response-model validation.
    return JSONResponse(
        {
            "hits": [h.to_dict() for h in outcome.hits],
            "took_ms": round((time.perf_counter() - started) * 1000, 2),
            "warnings": outcome.warnings,
        }
    )
