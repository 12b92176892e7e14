"""The `/v1` endpoints, one module per OpenAPI tag, gathered into one router."""

from __future__ import annotations

from fastapi import APIRouter

from archivist.server.routes import (
    agent,
    answers,
    collections,
    documents,
    evals,
    guard,
    jobs,
    me,
    openai,
    search,
    usage,
)

# Each module's router carries the `/v1` prefix itself: FastAPI hands a handler its module's route, whose path is
# the template that metrics and the request log are labelled with.
router = APIRouter()
# In the order the endpoints were declared before the split: it is the order of the OpenAPI document's paths.
router.include_router(collections.router)
router.include_router(documents.router)
router.include_router(jobs.router)
router.include_router(search.router)
router.include_router(answers.router)
router.include_router(agent.router)
router.include_router(evals.router)
router.include_router(usage.router)
router.include_router(me.router)
router.include_router(openai.router)
router.include_router(guard.router)
