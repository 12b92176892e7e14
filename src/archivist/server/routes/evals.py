"""`/v1/evals/runs`: stored eval runs, listed and read."""

from __future__ import annotations

from pathlib import PurePath
from typing import Annotated, Any

from fastapi import APIRouter, Query

from archivist.server.deps import Caller, ServicesDep
from archivist.server.errors import COMMON_ERRORS, ApiError, error_responses
from archivist.server.schemas import EvalRun, EvalRunList

router = APIRouter(prefix="/v1", tags=["evals"], responses=error_responses(*COMMON_ERRORS))


@router.get(
    "/evals/runs", response_model=EvalRunList, operation_id="list_eval_runs", responses=error_responses(403, 422)
)
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


@router.get(
    "/evals/runs/{run_id}",
    response_model=EvalRun,
    operation_id="get_eval_run",
    responses=error_responses(403, 404, 422),
)
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
