"""The text tool-call protocol, for models without native tool calling (small local models, plain completions).

The tools are described in the system prompt, and the model calls one by writing

    <tool_call>{"name": "search_documents", "arguments": {"query": "retries"}}</tool_call>

(several blocks for several calls). Results come back as user messages holding <observation> blocks. Parsing is
lenient, because small models rarely follow the format exactly: a fenced code block (```json, ```tool_call or bare
```) holding the same object, a bare JSON object as the whole reply, a list of such objects, `tool`/`function` for
`name`, `parameters`/`args`/`input` for `arguments`, and arguments given as a JSON string are all read as calls.
A block that looks like a call but is not valid JSON becomes a call with invalid arguments, so the model is told
what was wrong instead of the text being taken as its answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from archivist.llm.base import ToolCall, ToolSpec

# A tag opens a call only when JSON follows it, so prose that mentions the tag is not a call; an unclosed one (a
# reply cut at max_tokens) runs to the end.
_TAGGED = re.compile(r"<tool_call>\s*([\[{].*?)\s*(?:</tool_call>|$)", re.DOTALL | re.IGNORECASE)
_FENCED = re.compile(r"```[ \t]*([\w-]*)[ \t]*\n(.*?)```", re.DOTALL)
#: how much prose may stand beside a fenced JSON block for it to count as a call ("Let me search." does; an answer
#: that quotes a call's JSON as an example does not)
MAX_PREAMBLE_CHARS = 240
_NAME_KEYS = ("name", "tool", "function", "tool_name")
_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")


def tools_prompt(tools: Sequence[ToolSpec]) -> str:
    """Return the system prompt's part that lists the tools and says how to call them in text."""
    lines = [
        "You call tools by writing, for each call, a block like this and nothing else in that turn:",
        '<tool_call>{"name": "TOOL", "arguments": {...}}</tool_call>',
        "The result comes back in an <observation> block. To answer, reply without any <tool_call> block.",
        "",
        "The tools:",
    ]
    for t in tools:
        schema = json.dumps(t.parameters, ensure_ascii=False, separators=(",", ":"))
        lines.append(f"- {t.name}: {t.description}\n  arguments (JSON Schema): {schema}")
    return "\n".join(lines)


def parse_calls(text: str, known: Sequence[str]) -> list[ToolCall]:
    """Return the tool calls a model's text makes (none: the text is its answer). `known` are the tool names: a
    fenced or bare JSON object counts as a call only when it names one of them and little prose stands beside it,
    so an answer quoting JSON stays an answer."""
    blocks = [m.group(1) for m in _TAGGED.finditer(text)]
    tagged = bool(blocks)
    if not tagged:
        fenced = _FENCED.findall(text)
        prose = _FENCED.sub("", text).strip()
        blocks = [
            body
            for lang, body in fenced
            if lang.lower() in ("tool_call", "tool")
            or (lang.lower() in ("", "json") and len(prose) <= MAX_PREAMBLE_CHARS)
        ]
        stripped = text.strip()
        if not fenced and stripped.startswith(("{", "[")):
            blocks = [stripped]
    calls: list[ToolCall] = []
    for raw in blocks:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            if tagged:  # meant as a call: tell the model its JSON is broken
                calls.append(ToolCall(f"text_{len(calls) + 1}", _guess_name(raw), {}, raw))
            continue
        for item in value if isinstance(value, list) else [value]:
            call = _call(item, len(calls) + 1, known, strict=not tagged)
            if call is None and tagged:  # a tagged block that names no tool: the model is told, not answered
                call = ToolCall(f"text_{len(calls) + 1}", "?", {}, json.dumps(item, ensure_ascii=False)[:500])
            if call is not None:
                calls.append(call)
    return calls


def _call(item: Any, n: int, known: Sequence[str], *, strict: bool) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    name = next((item[k] for k in _NAME_KEYS if isinstance(item.get(k), str)), None)
    if isinstance(item.get("function"), dict):  # OpenAI's own shape, written out as text
        return _call(item["function"], n, known, strict=strict)
    if name is None or (strict and name not in known):
        return None
    arguments: Any = next((item[k] for k in _ARGUMENT_KEYS if k in item), {})
    if isinstance(arguments, str):
        raw = arguments
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return ToolCall(f"text_{n}", name, {}, raw)
    if not isinstance(arguments, dict):
        return ToolCall(f"text_{n}", name, {}, json.dumps(arguments))
    return ToolCall(f"text_{n}", name, arguments)


def _guess_name(raw: str) -> str:
    found = re.search(r'"(?:name|tool)"\s*:\s*"([^"]+)"', raw)
    return found.group(1) if found else "?"
