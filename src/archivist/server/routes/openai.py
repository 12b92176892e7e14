"""`/v1/chat/completions` and `/v1/models`: Archivist as an OpenAI-compatible "model" that answers from a collection.

An OpenAI SDK or a chat UI (Open WebUI, LibreChat…) pointed at `<server>/v1` with an Archivist key picks a collection
by model name: `archivist/<collection>`, or `archivist` for every collection the key may see. The last user message
is the question, the earlier user and assistant messages its history; system messages are left out (the grounded
prompt is the server's). The reply is the checked answer: its text, then a "Sources:" list, with the citations
structured beside it and the whole answer (as `/v1/answer` returns it) under `archivist`. Errors take OpenAI's shape.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from archivist.answer.answerer import Answer, Answerer, Citation
from archivist.answer.conversation import Turn, recent_turns
from archivist.guard.policy import GuardPolicy
from archivist.llm.accounting import Budget
from archivist.llm.base import Cancellation
from archivist.llm.errors import Cancelled
from archivist.server.auth import Principal
from archivist.server.deps import Caller, ServicesDep
from archivist.server.errors import ApiError, error_body, request_id_of
from archivist.server.middleware import CLIENT_DISCONNECTED
from archivist.server.models import Scoped
from archivist.server.routes.answers import answer_until_disconnect, charge_once, hung_up, sse_response
from archivist.server.scope import scope_filters
from archivist.server.services import Services
from archivist.store.filters import Filters
from archivist.types import ArchivistError, UsageError, check_collection_name

log = logging.getLogger("archivist.server")

#: the model name that answers from every collection the key may see; `archivist/<collection>` names one
MODEL = "archivist"
#: what starts the readable list of sources after an answer's text (and is cut from earlier turns sent back)
SOURCES = "\n\nSources:\n"
#: the longest question, as on /v1/answer
MAX_QUESTION_CHARS = 4000

#: OpenAI's error `type` for each status; the `code` stays ours (stable, as on every other route)
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_disconnected",
}


class OpenAIErrorRoute(APIRoute):
    """A route whose errors take OpenAI's shape, `{"error": {"message", "type", "param", "code", "request_id"}}`:
    the app's own error handlers decide status, code and message (and log), then `type` and `param` are added."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Return the route's handler, wrapped so that every error it raises answers in OpenAI's shape."""
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except Exception as exc:
                return await _openai_error(request, exc)

        return handler


router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIErrorRoute)


class OpenAIErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str
    request_id: str


class OpenAIError(BaseModel):
    """An error as OpenAI's API reports it (the SDKs read `error.message`), with our stable code and request id."""

    error: OpenAIErrorInfo


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIError, "description": meaning}
    for status, meaning in {
        400: "Bad request: no user question last, content that is not text, or a question the guard policy blocks "
        "(code injection_blocked).",
        401: "No API key, or not a valid one.",
        403: "The key lacks the read scope.",
        404: "No such model: the collection does not exist or the key may not see it.",
        422: "The request failed validation.",
        429: "Rate limited: retry after `Retry-After` seconds.",
    }.items()
}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=64)
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionIn(BaseModel):
    """OpenAI's chat completion request; sampling options (temperature, max_tokens, tools…) are accepted and
    ignored: the answer is grounded and checked with the server's own settings."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200, description="`archivist` or `archivist/<collection>`")
    messages: list[ChatMessage] = Field(min_length=1, max_length=500)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="one choice only")


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: None = None
    citations: list[dict[str, Any]] = Field(description="the answer's checked citations, numbered as in the text")


class ChoiceOut(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: Literal["stop"]
    logprobs: None = None


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: UsageOut
    archivist: dict[str, Any] = Field(description="the whole answer, exactly as POST /v1/answer returns it")


@router.get("/models", response_model=ModelList, operation_id="list_models", responses=_ERRORS)
def list_models(who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """List the models this key may use: `archivist` (every collection it may see) and `archivist/<collection>`."""
    who.require("read")
    visible = [c for c in svc.archivist.store.list_collections() if who.may_see(c.name)]
    created = {c.name: _epoch(c.created_at) for c in visible}
    return {
        "object": "list",
        "data": [
            _model(MODEL, min(created.values(), default=0)),
            *(_model(f"{MODEL}/{name}", at) for name, at in created.items()),
        ],
    }


@router.get("/models/{model:path}", response_model=ModelOut, operation_id="retrieve_model", responses=_ERRORS)
def retrieve_model(model: str, who: Caller, svc: ServicesDep) -> dict[str, Any]:
    """Return one model this key may use (404 for any other name)."""
    who.require("read")
    _collection_of(model, who, svc)  # 404 unless the name is one of the key's models
    found: dict[str, Any] = next(m for m in list_models(who, svc)["data"] if m["id"] == model)
    return found


@router.post(
    "/chat/completions",
    operation_id="chat_completions",
    responses={
        200: {
            "model": ChatCompletionOut,
            "content": {"text/event-stream": {}},
            "description": "The answer; with `stream: true`, `chat.completion.chunk` events, then `data: [DONE]`.",
        },
        **_ERRORS,
    },
)
async def chat_completions(body: ChatCompletionIn, request: Request, who: Caller, svc: ServicesDep) -> Response:
    """Answer the last user message from the model's collection(s), the earlier turns as its history, in OpenAI's
    chat completion shape (Server-Sent Events chunks with `stream: true`)."""
    who.require("read")
    question, history = _conversation(body.messages)

    def setup() -> tuple[Filters, Budget, Answerer, GuardPolicy]:
        collection = _collection_of(body.model, who, svc)
        filters = scope_filters(svc, who, Scoped(collection=collection))
        answerer = svc.answerer()
        policy = svc.archivist.guard_policy([collection] if collection else None, who.key)
        # A blocked question, or earlier user message: 400 before anything runs (streamed too).
        answerer.check(question, history, policy)
        # The request's own budget meters every model call made for it and passes each charge on to the key's.
        return filters, Budget(parent=who.budget(svc.archivist.store)), answerer, policy

    filters, meter, answerer, policy = await run_in_threadpool(setup)
    cancellation = Cancellation()
    charge = charge_once(request, svc)

    def run() -> Answer:
        return answerer.answer(
            question, filters=filters, budget=meter, cancellation=cancellation, history=history, policy=policy
        )

    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if not body.stream:
        try:
            answer = await answer_until_disconnect(request, run, cancellation)
        except Cancelled:
            charge(meter)
            return hung_up(request)
        charge(answer.usage)
        message = {"role": "assistant", "content": readable(answer), "refusal": None, "citations": _citations(answer)}
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": _usage(answer),
                "archivist": answer.to_dict(),
            }
        )

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        # OpenAI's last chunk under include_usage has no choice, only the usage (null in every other chunk).
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        usage = {"usage": None} if include_usage else {}
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model}
        return _data({**head, "choices": choices, **usage, **extra})

    async def chunks() -> AsyncGenerator[bytes, None]:
        ended = False
        try:
            # At once, before any work: the client sees the reply begin while the answer is retrieved and checked.
            yield chunk({"role": "assistant", "content": ""})
            try:
                # Abandoned on cancellation rather than sat out: the cancellation below is what unblocks it.
                answer = await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
            except Exception as exc:
                charge(meter)
                ended = True
                yield _data(_stream_error(request, exc))
                yield b"data: [DONE]\n\n"
                return
            charge(answer.usage)
            # The checked answer, not the model's raw tokens: verification may drop claims and renumbers citations,
            # and text a client has shown cannot be taken back.
            yield chunk({"content": readable(answer)})
            yield chunk({"citations": _citations(answer)}, "stop", archivist=answer.to_dict())
            if include_usage:
                yield chunk(None, usage=_usage(answer))
            yield b"data: [DONE]\n\n"
            ended = True
        finally:
            if not ended:
                # The client hung up: stop the model calls in flight, charge what was generated until then.
                cancellation.cancel()
                charge(meter)
                request.state.outcome = CLIENT_DISCONNECTED

    return sse_response(chunks())


def readable(answer: Answer) -> str:
    """Return an answer as a chat reply: its text, then a "Sources:" list of what its [n] marks cite."""
    if not answer.citations:
        return answer.answer
    return answer.answer + SOURCES + "\n".join(_source_line(c) for c in answer.citations)


def _source_line(c: Citation) -> str:
    # A document's first heading is usually its title: not said twice.
    headings = c.heading_path[1:] if c.heading_path[:1] == (c.title,) else c.heading_path
    where = " › ".join(headings)
    line = f"[{c.n}] {c.title or c.source}"
    if c.title and c.title != c.source:
        line += f" ({c.source})"
    if where:
        line += f", {where}"
    if c.page is not None:
        line += f", p. {c.page}"
    return line


def _citations(answer: Answer) -> list[dict[str, Any]]:
    return [c.to_dict() for c in answer.citations]


def _usage(answer: Answer) -> dict[str, int]:
    prompt = int(answer.usage.get("prompt_tokens", 0) or 0)
    completion = int(answer.usage.get("completion_tokens", 0) or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _text(message: ChatMessage, i: int) -> str:
    """Return a message's text: its string content, or its text parts joined (400 for any other part)."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    others = sorted({p.type for p in message.content if p.type != "text"})
    if others:
        raise ApiError(400, f"messages[{i}]: only text content is supported, not {', '.join(others)}")
    return "".join(p.text or "" for p in message.content)


def _conversation(messages: Sequence[ChatMessage]) -> tuple[str, list[Turn]]:
    """Return the question (the last message, the user's) and the earlier user and assistant turns, the latest
    that fit the history limits; system, developer and tool messages are left out."""
    last = len(messages) - 1
    if messages[last].role != "user":
        raise ApiError(400, f"the last message must be the user's question, not a {messages[last].role!r} message")
    question = _text(messages[last], last).strip()
    if not question:
        raise ApiError(400, "the last user message is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise ApiError(400, f"the question has {len(question)} characters: at most {MAX_QUESTION_CHARS}")
    turns = [
        Turn("user" if m.role == "user" else "assistant", _text(m, i).split(SOURCES, 1)[0])
        for i, m in enumerate(messages[:last])
        if m.role in ("user", "assistant")
    ]
    return question, recent_turns(turns)


def _collection_of(model: str, who: Principal, svc: Services) -> str | None:
    """Return the collection a model name selects (None: every one the key may see), or raise 404 for a name that
    is not one of the key's models (one answer for "no such collection" and "not yours": neither is revealed)."""
    if model == MODEL:
        return None
    name = model.removeprefix(f"{MODEL}/")
    missing = ApiError(
        404, f"The model {model!r} does not exist or you do not have access to it.", code="model_not_found"
    )
    if name == model:
        raise missing
    try:
        check_collection_name(name)
    except UsageError:
        raise missing from None
    if not who.may_see(name) or not svc.archivist.store.has_collection(name):
        raise missing
    return name


def _model(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": MODEL}


def _epoch(iso: str) -> int:
    try:
        return int(datetime.fromisoformat(iso).timestamp())
    except ValueError:
        return 0


def _data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False, default=str)}\n\n".encode()


_PARAM = re.compile(r"^(body|query|path)\.")


async def _openai_error(request: Request, exc: Exception) -> Response:
    """Return the error the app's handlers make of `exc`, in OpenAI's shape."""
    handlers = request.app.exception_handlers
    handle = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
    if handle is None:
        raise exc
    response: Response = await handle(request, exc)
    body = json.loads(bytes(response.body))
    error = body["error"]
    param = None
    if isinstance(exc, RequestValidationError) and error.get("details"):
        param = _PARAM.sub("", ".".join(error["details"][0]["loc"])) or None
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("retry-after", "www-authenticate")}
    return JSONResponse(_shaped(error, response.status_code, param), status_code=response.status_code, headers=headers)


def _shaped(error: dict[str, Any], status: int, param: str | None = None) -> dict[str, Any]:
    """Return one of our error bodies' `error` in OpenAI's shape (our code and request id kept)."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "error": {
            "message": error["message"],
            "type": kind,
            "param": param,
            "code": error["code"],
            "request_id": error["request_id"],
        }
    }


def _stream_error(request: Request, exc: Exception) -> dict[str, Any]:
    """Return the data of a stream's error chunk (the SDKs raise it): the message fit for the client, or a generic
    one logged with the details."""
    request_id = request_id_of(request)
    if isinstance(exc, ArchivistError):
        status, code = (400, "bad_request") if isinstance(exc, UsageError) else (502, "upstream_error")
        return _shaped(error_body(code, str(exc), request_id)["error"], status)
    log.exception("chat completion stream failed", exc_info=exc, extra={"request_id": request_id})
    return _shaped(error_body("internal", "internal error; the server log has the details", request_id)["error"], 500)
