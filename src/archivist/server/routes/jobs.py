"""`/v1/jobs`: the status and progress of ingestion jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from archivist.server.deps import Caller, ServicesDep
from archivist.server.errors import COMMON_ERRORS, ApiError, error_responses
from archivist.server.scope import require_collection
from archivist.store.records import JobStatus

router = APIRouter(prefix="/v1", tags=["jobs"], responses=error_responses(*COMMON_ERRORS))


class Progress(BaseModel):
    done: int
    total: int


class Job(BaseModel):
    id: str
    kind: str
    collection: str
    status: JobStatus
    progress: Progress
    result: dict[str, Any] | None
    error: str | None
    attempts: int = Field(description="times a worker has taken the job (a retry or a dead worker's takeover adds one)")
    created_at: str
    updated_at: str


class JobList(BaseModel):
    jobs: list[Job]


@router.get("/jobs/{job_id}", response_model=Job, operation_id="get_job", responses=error_responses(403, 404, 422))
def get_job(job_id: str, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Return an ingestion job's status and progress."""
    who.require("read")
    job = svc.archivist.store.get_job(job_id)
    if job is None or not who.may_see(job.collection):
        raise ApiError(404, f"no job {job_id!r}")
    return job.public()


@router.get("/jobs", response_model=JobList, operation_id="list_jobs", responses=error_responses(400, 403, 404, 422))
def list_jobs(
    who: Caller,
    svc: ServicesDep,
    collection: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """List recent ingestion jobs, newest first."""
    who.require("read")
    if collection is not None:
        require_collection(svc, who, collection)
    # Scoped in the query, not after it: a key sees up to `limit` of its own jobs, however many others there are.
    scope = [collection] if collection is not None else who.key.collections
    jobs = svc.archivist.store.list_jobs(collections=scope, limit=limit)
    return {"jobs": [j.public() for j in jobs]}
