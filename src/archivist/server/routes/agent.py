"""`/v1/agent/runs`: agent runs started, watched (Server-Sent Events), read, approved and resumed over HTTP.

A run is durable: the server drives it in a bounded pool of threads, journaling every step, so a client that hangs
up loses nothing (the run goes on; GET reads it). A run belongs to the key that started it: any other key (an admin
key aside) gets the 404 of a run that does not exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from archivist.agent.loop import MAX_TASK_CHARS, Agent, AgentLimits
from archivist.server.agent_runs import SETTLE_S, KeyCharge, StepFeed, allowance, on_step, within
from archivist.server.auth import Principal
from archivist.server.deps import Caller, ServicesDep
from archivist.server.errors import COMMON_ERRORS, ApiError, error_body, error_responses, request_id_of
from archivist.server.middleware import CLIENT_DISCONNECTED
from archivist.server.models import Body
from archivist.server.openapi import AGENT_EVENT_REF, AGENT_SSE_WIRE_FORMAT
from archivist.server.routes.answers import sse_event, sse_response
from archivist.server.schemas import AgentRun, AgentRunDetail, AgentRunList
from archivist.server.scope import require_collection, user_tools_for
from archivist.server.services import Services
from archivist.store.records import AgentRunRecord
from archivist.types import ArchivistError, ConflictError, NotFoundError, UsageError

router = APIRouter(prefix="/v1", tags=["agent"], responses=error_responses(*COMMON_ERRORS))
_DEFAULT = AgentLimits()
#: what a drive's JSON answer and its event stream document (the stream is 200, the JSON 202)
_ACCEPTED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "With Accept: text/event-stream, the run's progress as Server-Sent Events.",
        "content": {"text/event-stream": {"schema": {**AGENT_EVENT_REF, "description": AGENT_SSE_WIRE_FORMAT}}},
    },
    202: {
        "description": "The run, driven in the background: poll its Location.",
        "headers": {"Location": {"description": "the run's URL", "schema": {"type": "string"}}},
    },
}


class LimitsIn(Body):
    """What one run may use; a key with a budget also caps tokens and dollars at what it has left."""

    max_steps: int = Field(default=_DEFAULT.max_steps, ge=1, le=200, description="journal steps (model and tool calls)")
    max_tokens: int | None = Field(default=_DEFAULT.max_tokens, ge=1, le=10_000_000)
    max_cost_usd: float | None = Field(default=_DEFAULT.max_cost_usd, gt=0, le=1000)
    max_wall_s: float = Field(default=_DEFAULT.max_wall_s, gt=0, le=3600, description="active seconds")


class AgentRunIn(Body):
    task: str = Field(min_length=1, max_length=MAX_TASK_CHARS, description="what the agent should do")
    collection: str | None = Field(
        default=None,
        description="the one collection its document tools read (default: a key's only collection; every one for "
        "an unscoped key); a key scoped to several must name one",
    )
    limits: LimitsIn = Field(default_factory=LimitsIn)


class ApprovalIn(Body):
    step: int = Field(ge=1, description="the paused step, as the run's reason and approvals name it")
    approved: bool = Field(description="true: run the call; false: tell the model it was not run")


@router.post(
    "/agent/runs",
    status_code=202,
    response_model=AgentRun,
    operation_id="create_agent_run",
    responses={**_ACCEPTED, **error_responses(400, 402, 403, 404, 413, 422, 503)},
)
async def create_agent_run(body: AgentRunIn, request: Request, who: Caller, svc: ServicesDep) -> Any:
    """Start an agent run: 202 with the run, driven in the background; or its progress as Server-Sent Events.

    The run's model calls are charged to the key's budget as they are made; a key whose budget is spent is refused
    (402) before the run starts. A client that hangs up does not stop the run.
    """
    who.require("read")
    if not body.task.strip():
        raise ApiError(400, "the task is empty: say what the agent should do")

    def setup() -> tuple[AgentRunRecord, StepFeed, KeyCharge, Agent]:
        collection = _collection(svc, who, body.collection)
        budget = who.budget(svc.archivist.store)
        tokens_left, cost_left = allowance(budget)
        max_tokens = within(body.limits.max_tokens, tokens_left)
        limits = AgentLimits(
            max_steps=body.limits.max_steps,
            max_tokens=None if max_tokens is None else int(max_tokens),
            max_cost_usd=within(body.limits.max_cost_usd, cost_left),
            max_wall_s=body.limits.max_wall_s,
        )
        feed, charge = StepFeed(), KeyCharge(svc.metrics)
        # The key's own permissions decide which of the user's tools the run gets, as over MCP.
        tools = user_tools_for(svc, who)
        agent = svc.archivist.agent(
            collection=collection,
            tools=tools,
            on_step=on_step(charge, feed),
            budget_parent=budget,
            policy=svc.archivist.guard_policy([collection] if collection else None, who.key),
        )
        # A task the key's or collection's policy blocks is a 400 here, before a run exists.
        run = agent.create(body.task, limits, owner=who.id)
        return run, feed, charge, agent

    # A driver is reserved first: a busy server refuses the request before it journals a run nobody would drive.
    with svc.agent_drivers.slot() as slot:
        run, feed, charge, agent = await run_in_threadpool(setup)
        # A new run: nobody else can be driving it, so there is nothing to wait for before answering.
        slot.claim(run.id)
        slot.start(lambda: agent.resume(run.id), feed)
    return _answer(request, run, feed, charge)


@router.get(
    "/agent/runs", response_model=AgentRunList, operation_id="list_agent_runs", responses=error_responses(403, 422)
)
def list_agent_runs(who: Caller, svc: ServicesDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    """List the key's own agent runs (an admin key: everyone's), over collections it may read, the most recently
    updated first."""
    who.require("read")
    # Scoped in the query, not after it: a key sees up to `limit` of its own runs, however many others there are.
    owner = None if who.has("admin") else who.id
    runs = svc.archivist.store.list_agent_runs(limit=limit, owner=owner, collections=who.key.collections)
    return {"runs": [r.public() for r in runs if _reaches(who, r)]}


@router.get(
    "/agent/runs/{run_id}",
    response_model=AgentRunDetail,
    operation_id="get_agent_run",
    responses=error_responses(403, 404, 422),
)
def get_agent_run(run_id: str, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Return a run with its journal: every step, side effect and approval."""
    who.require("read")
    store = svc.archivist.store
    run = _own_run(svc, who, run_id)
    return {
        **run.public(),
        "steps": [s.public() for s in store.agent_steps(run.id)],
        "effects": [_without_run(e) for e in store.agent_effects(run.id)],
        "approvals": [_without_run(a) for a in store.agent_approvals(run.id)],
    }


@router.post(
    "/agent/runs/{run_id}/approve",
    status_code=202,
    response_model=AgentRun,
    operation_id="approve_agent_run",
    responses={**_ACCEPTED, **error_responses(400, 402, 403, 404, 409, 413, 422, 503)},
)
async def approve_agent_run(run_id: str, body: ApprovalIn, request: Request, who: Caller, svc: ServicesDep) -> Any:
    """Decide a paused step (approve or reject its call) and drive the run on: 202, or Server-Sent Events.

    409 when the run is being driven now (by this server or another process); 404 when the step waits for no
    decision.
    """
    who.require("read")
    run = await run_in_threadpool(_own_run, svc, who, run_id)
    return await _drive(request, svc, run, approval=body)


@router.post(
    "/agent/runs/{run_id}/resume",
    status_code=202,
    response_model=AgentRun,
    operation_id="resume_agent_run",
    responses={**_ACCEPTED, **error_responses(400, 402, 403, 404, 409, 422, 503)},
)
async def resume_agent_run(run_id: str, request: Request, who: Caller, svc: ServicesDep) -> Any:
    """Drive a paused run on, or one whose process died: 202, or Server-Sent Events.

    409 when the run has ended, or is being driven now (by this server or another process).
    """
    who.require("read")
    run = await run_in_threadpool(_own_run, svc, who, run_id)
    return await _drive(request, svc, run, approval=None)


async def _drive(request: Request, svc: Services, run: AgentRunRecord, approval: ApprovalIn | None) -> Any:
    """Drive an existing run on in the pool (after recording a decision), once it is known to have taken the run."""
    if run.status in ("succeeded", "failed"):
        raise ApiError(409, f"agent run {run.id} has ended ({run.status}): there is nothing to drive on")
    store = svc.archivist.store

    def setup() -> tuple[StepFeed, KeyCharge, Agent]:
        owner = store.get_api_key(run.owner) if run.owner else None
        # The key that started the run pays for it, whoever drives it on.
        budget = Principal(owner).budget(store) if owner is not None else None
        allowance(budget)
        feed, charge = StepFeed(), KeyCharge(svc.metrics)
        # Driven with the tools of the key that started it, whoever drives it on (an admin key included).
        tools = user_tools_for(svc, Principal(owner)) if owner is not None else svc.archivist.user_tools()
        policy = svc.archivist.guard_policy([run.collection] if run.collection else None, owner)
        agent = svc.archivist.agent(
            collection=run.collection,
            tools=tools,
            on_step=on_step(charge, feed),
            budget_parent=budget,
            policy=policy,
        )
        return feed, charge, agent

    with svc.agent_drivers.slot() as slot:
        slot.claim(run.id)
        feed, charge, agent = await run_in_threadpool(setup)
        # A decision is recorded by the drive itself, under the run's lease: with a driver reserved and the run
        # claimed, never left without one to act on it, and never recorded when another process drives the run.
        drive = (
            (lambda: agent.approve(run.id, approval.step, approved=approval.approved))
            if approval is not None
            else (lambda: agent.resume(run.id))
        )
        future = slot.start(drive, feed)
    # A run another process drives, or one this agent cannot drive (its tools changed), fails at once: said now,
    # as an error status, rather than in a run nobody is watching.
    await anyio.to_thread.run_sync(feed.settled.wait, SETTLE_S)
    if future.done() and (failure := future.exception()) is not None:
        raise failure
    current = await run_in_threadpool(svc.archivist.store.get_agent_run, run.id)
    return _answer(request, current or run, feed, charge)


def _answer(request: Request, run: AgentRunRecord, feed: StepFeed, charge: KeyCharge) -> Any:
    """Return the 202 with the run, or the stream of its progress when the client accepts Server-Sent Events."""
    if "text/event-stream" not in request.headers.get("accept", ""):
        feed.close()  # nobody watches: the drive goes on alone
        return JSONResponse(run.public(), status_code=202, headers={"Location": f"/v1/agent/runs/{run.id}"})
    return sse_response(_events(request, run, feed, charge))


async def _events(request: Request, run: AgentRunRecord, feed: StepFeed, charge: KeyCharge) -> AsyncGenerator[bytes]:
    """Yield the run, each step as it is journaled, then how it ended; a client that hangs up leaves the run going."""
    request_id = request_id_of(request)
    ended = False
    try:
        yield sse_event("run", run.public())
        while True:
            # Waited for in a worker thread, abandoned if the client hangs up (closing the feed wakes the thread).
            kind, item = await anyio.to_thread.run_sync(feed.next, abandon_on_cancel=True)
            if kind == "step":
                yield sse_event("step", item)
            elif kind == "done":
                ended = True
                yield sse_event("done", item.public())
                return
            elif kind == "error":
                ended = True
                yield sse_event("error", error_body(*_error_of(item), request_id))
                return
            else:
                return
    finally:
        # What the run's model calls cost while this request watched it, for the request log (the key's budget and
        # the metrics were charged step by step).
        request.state.tokens, request.state.cost_usd = charge.tokens, charge.cost_usd
        if not ended:
            feed.close()
            request.state.outcome = CLIENT_DISCONNECTED


def _error_of(exc: BaseException) -> tuple[str, str]:
    """Return the code and message an error of a drive is reported with."""
    if isinstance(exc, ConflictError):
        return "conflict", str(exc)
    if isinstance(exc, NotFoundError):
        return "not_found", str(exc)
    if isinstance(exc, UsageError):
        return "bad_request", str(exc)
    if isinstance(exc, ArchivistError):
        return "upstream_error", str(exc)
    return "internal", "internal error; the server log has the details"


def _collection(svc: Services, who: Principal, name: str | None) -> str | None:
    """Return the collection a new run reads: the one named, else a scoped key's only one (400/403/404 as the
    search and answer routes say them)."""
    if name is not None:
        require_collection(svc, who, name)
        return name
    scoped = who.key.collections
    if scoped is None:
        return None
    if len(scoped) != 1:
        raise ApiError(400, f"this key may read {len(scoped)} collections: name the run's one in `collection`")
    require_collection(svc, who, scoped[0])
    return scoped[0]


def _reaches(who: Principal, run: AgentRunRecord) -> bool:
    """Return whether a key may see a run: its own, or anyone's for an admin key — in both cases only over a
    collection the key may read (a run over every collection: only a key without collection limits)."""
    if not who.has("admin") and (run.owner is None or run.owner != who.id):
        return False
    return who.key.collections is None if run.collection is None else who.may_see(run.collection)


def _own_run(svc: Services, who: Principal, run_id: str) -> AgentRunRecord:
    """Return the run of this exact id if the key may see it; else the 404 of a run that does not exist."""
    run = svc.archivist.store.get_agent_run(run_id)
    # The store also finds a run by a unique prefix: over HTTP only the whole id counts, so that a prefix can never
    # tell one key anything about another key's runs.
    if run is None or run.id != run_id or not _reaches(who, run):
        raise ApiError(404, f"no agent run {run_id!r}")
    return run


def _without_run(record: Any) -> dict[str, Any]:
    """Return a journal record as JSON, without the run id it repeats."""
    data = dataclasses.asdict(record)
    data.pop("run_id", None)
    return data
