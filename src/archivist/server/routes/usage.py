"""`/v1/usage`: requests, errors, tokens, cost and latency by key and day."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from archivist.server.deps import Caller, ServicesDep
from archivist.server.errors import COMMON_ERRORS, error_responses
from archivist.server.schemas import UsageReport
from archivist.server.usage import usage_report, usage_since

router = APIRouter(prefix="/v1", tags=["usage"], responses=error_responses(*COMMON_ERRORS))


@router.get("/usage", response_model=UsageReport, operation_id="get_usage", responses=error_responses(403, 422))
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
