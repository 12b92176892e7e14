"""`/v1/answer`: grounded answers with checked citations, as JSON or Server-Sent Events."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field, field_validator
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from archivist.answer.answerer import Answer, AnswerDone, Answerer, RetrievalDone
from archivist.answer.conversation import MAX_HISTORY_CHARS, MAX_TURNS, Turn
from archivist.guard.policy import GuardPolicy
from archivist.llm.accounting import Budget, KeyBudget
from archivist.llm.base import Cancellation, TokenEvent
from archivist.llm.errors import Cancelled
from archivist.server.deps import Caller, ServicesDep
from archivist.server.errors import COMMON_ERRORS, ApiError, error_body, error_responses, request_id_of
from archivist.server.metering import charge_usage
from archivist.server.middleware import CLIENT_DISCONNECTED
from archivist.server.models import Body, Scoped
from archivist.server.openapi import ANSWER_EVENT_REF, SSE_WIRE_FORMAT
from archivist.server.schemas import Answer as AnswerOut
from archivist.server.scope import scope_filters
from archivist.server.services import Services
from archivist.store.filters import Filters
from archivist.types import ArchivistError, UsageError

log = logging.getLogger("archivist.server")
router = APIRouter(prefix="/v1", tags=["answers"], responses=error_responses(*COMMON_ERRORS))


class TurnIn(Body):
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1, max_length=MAX_HISTORY_CHARS)

    @field_validator("content")
    @classmethod
    def _not_blank(cls, content: str) -> str:
        if not content.strip():
            raise ValueError("a turn's content is blank")
        return content


class AnswerIn(Scoped):
    question: str = Field(min_length=1, max_length=4000)
    k: int | None = Field(default=None, ge=1, le=50)
    history: list[TurnIn] = Field(
        default_factory=list,
        max_length=MAX_TURNS,
        description=f"earlier turns of the conversation, oldest first (at most {MAX_TURNS} turns and "
        f"{MAX_HISTORY_CHARS} characters together): a follow-up question is answered in their context",
    )

    @field_validator("history")
    @classmethod
    def _bounded(cls, history: list[TurnIn]) -> list[TurnIn]:
        total = sum(len(t.content) for t in history)
        if total > MAX_HISTORY_CHARS:
            raise ValueError(f"the turns hold {total} characters together: at most {MAX_HISTORY_CHARS}")
        return history

    def turns(self) -> list[Turn]:
        """Return the earlier turns as the answerer takes them."""
        return [Turn(t.role, t.content) for t in self.history]


@router.post(
    "/answer",
    response_model=AnswerOut,
    operation_id="answer",
    responses={
        200: {
            "description": "The answer as JSON, or as Server-Sent Events when the request accepts text/event-stream.",
            "content": {"text/event-stream": {"schema": {**ANSWER_EVENT_REF, "description": SSE_WIRE_FORMAT}}},
        },
        **error_responses(400, 403, 404, 413, 422),
    },
)
async def answer(body: AnswerIn, request: Request, who: Caller, svc: ServicesDep) -> Any:
    """Answer a question with checked citations; Server-Sent Events when the client accepts text/event-stream.

    A client that hangs up cancels the answer: the model call in flight is aborted (a stream's connection closed
    at once), no further call is made, what was generated is charged, and the request log says so.
    """
    who.require("read")
    if not body.question.strip():
        raise ApiError(400, "the question is empty")

    def setup() -> tuple[Filters, KeyBudget | None, Answerer, GuardPolicy]:
        filters, answerer = scope_filters(svc, who, body), svc.answerer()
        named = [*([body.collection] if body.collection else []), *(body.collections or [])]
        policy = svc.archivist.guard_policy(named, who.key)
        # Checked before anything runs: a blocked question, or earlier one, is a 400 (streamed or not), nothing
        # charged. The answerer's own check of them reuses their scores.
        answerer.check(body.question, body.turns(), policy)
        return filters, who.budget(svc.archivist.store), answerer, policy

    # Store reads, and the answerer's first build, stay off the event loop.
    filters, key_budget, answerer, policy = await run_in_threadpool(setup)
    # The request's own budget meters every model call made for it (and passes each charge on to the key's
    # budget, if it has one): an answer cut short is accounted from it.
    meter = Budget(parent=key_budget)
    cancellation = Cancellation()
    charge = charge_once(request, svc)

    if "text/event-stream" not in request.headers.get("accept", ""):

        def run() -> Answer:
            return answerer.answer(
                body.question,
                k=body.k,
                filters=filters,
                budget=meter,
                cancellation=cancellation,
                history=body.turns(),
                policy=policy,
            )

        try:
            result = await answer_until_disconnect(request, run, cancellation)
        except Cancelled:
            charge(meter)
            return hung_up(request)
        charge(result.usage)
        return JSONResponse(result.to_dict())

    request_id = request_id_of(request)

    def events() -> Generator[bytes, None, None]:
        stream = answerer.stream(
            body.question,
            k=body.k,
            filters=filters,
            budget=meter,
            cancellation=cancellation,
            history=body.turns(),
            policy=policy,
        )
        try:
            for event in stream:
                if isinstance(event, RetrievalDone):
                    yield sse_event("retrieval", {"hits": [h.to_dict() for h in event.hits]})
                elif isinstance(event, TokenEvent):
                    yield sse_event("token", {"text": event.text})
                elif isinstance(event, AnswerDone):
                    final = event.answer
                    charge(final.usage)
                    yield sse_event(
                        "citations",
                        {
                            "answer": final.answer,
                            "citations": [c.to_dict() for c in final.citations],
                            "support": final.support,
                            "refused": final.refused,
                            "unsupported": final.unsupported,
                        },
                    )
                    yield sse_event("done", final.to_dict())
        except Cancelled:
            return  # the client is gone: nobody to tell
        except ArchivistError as exc:
            code = "bad_request" if isinstance(exc, UsageError) else "upstream_error"
            yield sse_event("error", error_body(code, str(exc), request_id))
        except Exception:
            log.exception("answer stream failed")
            yield sse_event(
                "error", error_body("internal", "internal error; the server log has the details", request_id)
            )
        finally:
            # Now and in this thread, not whenever the collector gets to it: closing the answer's stream closes the
            # model's (and its connection) and charges what it generated.
            stream.close()

    chunks = events()
    # A generator runs in one thread at a time: the close waits for a step still in flight.
    turn = threading.Lock()

    def step() -> bytes | None:
        with turn:
            return next(chunks, None)

    def close() -> None:
        with turn:
            chunks.close()

    async def sse() -> AsyncGenerator[bytes, None]:
        ended = False
        try:
            # Each step runs in a worker thread. On cancellation the wait is abandoned rather than sitting out a step
            # blocked on the model: the cancellation below is what unblocks it.
            while (chunk := await anyio.to_thread.run_sync(step, abandon_on_cancel=True)) is not None:
                yield chunk
            ended = True
        finally:
            if not ended:
                # The client hung up (Starlette cancels the response, or it is closed unfinished): abort the model
                # call in flight, close the answer's stream, charge what was generated.
                cancellation.cancel()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(close)
                charge(meter)
                request.state.outcome = CLIENT_DISCONNECTED

    return sse_response(sse())


def sse_response(chunks: AsyncGenerator[bytes, None]) -> StreamingResponse:
    """Return the Server-Sent Events response that sends `chunks`."""
    return StreamingResponse(
        chunks,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # Runs after the response, also when its client hung up: it closes a stream left suspended between two
        # chunks (its `finally` then does the accounting), and does nothing to one that ended.
        background=BackgroundTask(chunks.aclose),
    )


def charge_once(request: Request, svc: Services) -> Callable[[dict[str, Any] | Budget], None]:
    """Return a function that charges a request's model usage the first time it is called, and ignores the rest
    (a client may hang up after the finished answer was charged)."""
    charged = False

    def charge(usage: dict[str, Any] | Budget) -> None:
        nonlocal charged
        if not charged:
            charged = True
            charge_usage(request, svc, usage)

    return charge


async def answer_until_disconnect(request: Request, run: Callable[[], Answer], cancellation: Cancellation) -> Answer:
    """Return what `run` answers in a worker thread; a client that hangs up meanwhile sets `cancellation`, which
    makes the answerer stop its model calls and raise Cancelled (raised here)."""

    async def cancel_on_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancellation.cancel()

    result: Answer | None = None
    failure: Exception | None = None
    async with anyio.create_task_group() as watch:
        watch.start_soon(cancel_on_disconnect)
        try:
            result = await run_in_threadpool(run)
        except Exception as exc:  # raised below, outside the task group (which would wrap it in a group)
            failure = exc
        watch.cancel_scope.cancel()
    if failure is not None:
        raise failure
    assert result is not None
    return result


def hung_up(request: Request) -> JSONResponse:
    """Return the response logged for a request whose client hung up before its answer was ready."""
    request.state.outcome = CLIENT_DISCONNECTED
    # 499 (nginx's "client closed request"): nobody reads it, the logs and metrics do.
    message = "the client hung up: the answer was cancelled"
    return JSONResponse(error_body(CLIENT_DISCONNECTED, message, request_id_of(request)), status_code=499)


def sse_event(event: str, data: Any) -> bytes:
    """Return one Server-Sent Event: its name and its data as JSON."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n".encode()
