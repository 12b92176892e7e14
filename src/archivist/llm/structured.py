"""Structured output: a chat answer validated into a pydantic model, with a bounded repair retry.

The model is told the JSON Schema in a final system message and asked for one JSON object only; the first
balanced `{...}` in its answer is validated, and a failure is sent back once (or `max_repairs` times) with the
validation errors so the model can correct itself. Everything goes through `Gateway.chat`, so retries,
fallback, deadlines, budgets and the cache apply to each call.

Future work: provider-native JSON mode (OpenAI's `response_format` with `json_schema`, grammar-constrained
decoding in vLLM and llama.cpp) is not exposed by `ChatRequest` or the OpenAI-compatible provider yet. When it
is, it can be requested here as well; the prompt, extraction and validation stay, since providers and local
servers differ in how strictly they honour it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from archivist.llm.accounting import Budget
from archivist.llm.base import ChatRequest, Completion, Deadline, Message
from archivist.llm.errors import LLMError
from archivist.llm.gateway import Gateway

T = TypeVar("T", bound=BaseModel)

#: How many validation errors a repair prompt or error message quotes; more only adds tokens and noise.
MAX_QUOTED_ERRORS = 5
#: How much of an offending value is quoted back (a long string would swamp the prompt).
MAX_QUOTED_INPUT = 60


class StructuredOutputError(LLMError):
    """The model's answer still did not validate against the schema after every repair attempt."""

    def __init__(self, message: str, *, last_text: str, validation_error: ValidationError, provider: str = "") -> None:
        super().__init__(message, provider=provider)
        self.last_text = last_text
        self.validation_error = validation_error


@dataclass(frozen=True, slots=True)
class Structured(Generic[T]):
    """A validated value with the completion it came from and how many repair calls it took."""

    value: T
    completion: Completion
    repairs: int


def _strip_default_titles(node: Any) -> Any:
    """Return a copy of a schema node without the titles pydantic derives from property names."""
    if isinstance(node, list):
        return [_strip_default_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            props: dict[str, Any] = {}
            for name, prop in value.items():
                prop = _strip_default_titles(prop)
                # "Birth Year" for birth_year repeats the name and costs tokens; a custom title is kept.
                if isinstance(prop, dict) and prop.get("title") == name.replace("_", " ").title():
                    prop = {k: v for k, v in prop.items() if k != "title"}
                props[name] = prop
            out[key] = props
        elif key == "$defs" and isinstance(value, dict):
            out[key] = {name: _strip_default_titles(d) for name, d in value.items()}
        else:
            out[key] = _strip_default_titles(value)
    return out


def json_schema_for(model: type[BaseModel]) -> dict[str, Any]:
    """Return the model's JSON Schema (pydantic v2, validation mode) without redundant per-field titles."""
    schema: dict[str, Any] = _strip_default_titles(model.model_json_schema(mode="validation"))
    return schema


def _balanced_object_end(text: str, start: int) -> int | None:
    """Return the index just past the `}` that closes the `{` at `start`, or None if it never closes."""
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def extract_json_object(text: str) -> str | None:
    """Return the first balanced `{...}` in `text` that parses as a JSON object, or None if there is none.

    Braces inside JSON strings are skipped, so fences, prose and `{placeholders}` around the object do not matter.
    """
    start = text.find("{")
    while start != -1:
        end = _balanced_object_end(text, start)
        if end is None:
            # Nothing after an unclosed `{` can close either: the answer was truncated or is not JSON.
            return None
        candidate = text[start:end]
        try:
            if isinstance(json.loads(candidate), dict):
                return candidate
        except ValueError:
            pass  # prose such as "{like this}": look further
        start = text.find("{", start + 1)
    return None


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(root)"


def describe_errors(error: ValidationError, limit: int = MAX_QUOTED_ERRORS) -> list[str]:
    """Return one short line per validation error (path: message, offending value), the first `limit` of them."""
    lines: list[str] = []
    for detail in error.errors(include_url=False)[:limit]:
        line = f"{_format_loc(detail['loc'])}: {detail['msg']}"
        value = detail.get("input")
        # Quoting a whole object for a missing field would just repeat the answer back.
        if detail["type"] not in ("missing", "json_invalid") and not isinstance(value, dict | list):
            quoted = repr(value)
            if len(quoted) > MAX_QUOTED_INPUT:
                quoted = quoted[: MAX_QUOTED_INPUT - 3] + "..."
            line += f" (got {quoted})"
        lines.append(line)
    if error.error_count() > limit:
        lines.append(f"... and {error.error_count() - limit} more")
    return lines


def _instruction(model: type[BaseModel]) -> str:
    schema = json.dumps(json_schema_for(model), ensure_ascii=False, separators=(",", ":"))
    return (
        "Answer with one JSON object only: no prose, no explanation, no code fences. "
        f"It must validate against this JSON Schema:\n{schema}"
    )


def _validate(model: type[T], text: str) -> tuple[T | ValidationError, bool]:
    """Return the validated value or the error, and whether `text` held a JSON object at all."""
    candidate = extract_json_object(text)
    try:
        # Without an object, validating the whole text yields pydantic's own json_invalid error to report.
        return model.model_validate_json(candidate if candidate is not None else text), True
    except ValidationError as exc:
        return exc, candidate is not None


def _repair_prompt(error: ValidationError, found_object: bool) -> str:
    if not found_object:
        problem = "Your previous answer did not contain a JSON object."
    else:
        problem = "Your previous answer did not match the schema:\n" + "\n".join(
            f"- {line}" for line in describe_errors(error)
        )
    return f"{problem}\nReply with the corrected JSON object only, no prose and no code fences."


def generate_structured(
    gateway: Gateway,
    request: ChatRequest,
    model: type[T],
    *,
    deadline: Deadline | None = None,
    max_repairs: int = 1,
    budget: Budget | None = None,
) -> Structured[T]:
    """Return the model's answer validated as `model`, repairing up to `max_repairs` times, else raise.

    Raises StructuredOutputError when the last answer still fails validation; gateway failures (AllProvidersFailed,
    BudgetExceeded) propagate unchanged.
    """
    if max_repairs < 0:
        raise ValueError("max_repairs must be >= 0")
    # One deadline for the first call and every repair: the caller's time limit covers the whole exchange.
    deadline = deadline or Deadline.after(gateway.default_timeout_s)
    # A final system message, not a user one: the format rule comes from the application, not the user, and a
    # second user turn after the caller's would break strict role alternation. OpenAI-compatible servers accept
    # system messages anywhere; the Anthropic provider folds them into its top-level system prompt.
    # The instruction stays even where a provider decodes natively to the schema: a fallback provider without
    # a JSON mode still needs it, and the validation below guards both.
    base = (*request.messages, Message("system", _instruction(model)))
    request = dataclasses.replace(request, response_schema=json_schema_for(model))
    current = dataclasses.replace(request, messages=base)
    repairs = 0
    while True:
        completion = gateway.chat(current, deadline, budget)
        outcome, found_object = _validate(model, completion.text)
        if not isinstance(outcome, ValidationError):
            return Structured(outcome, completion, repairs)
        error = outcome
        if repairs >= max_repairs:
            problems = "; ".join(describe_errors(error)) if found_object else "no JSON object in the answer"
            tries = f"{repairs} repair{'s' if repairs != 1 else ''}"
            raise StructuredOutputError(
                f"answer did not validate as {model.__name__} after {tries}: {problems}",
                last_text=completion.text,
                validation_error=error,
                provider=completion.provider,
            )
        repairs += 1
        # Only the latest bad answer goes back, not every earlier one: each repair call stays the same size.
        bad = Message("assistant", completion.text or "(empty answer)")
        current = dataclasses.replace(
            request, messages=(*base, bad, Message("user", _repair_prompt(error, found_object)))
        )
