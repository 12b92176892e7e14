"""Workflows: a declared sequence of tool calls (search → read → answer) for tasks where a fixed plan beats an agent.

A workflow runs with no model at all: each step names a tool and its arguments, written as templates over the task
and the results of earlier steps. A step may run once per item of an earlier step's list result (`for_each`), at
most `limit` times, with calls that render to the same arguments made once. The loop journals a workflow's calls
like an agent's, so a workflow run resumes, replays its side effects and pauses for approval the same way.

Templates: a string argument may hold `{task}`, `{STEP}` (a step's whole result), `{STEP.0.document_id}` (a path
into it: list indexes and dict keys), and in a `for_each` step `{item}` and `{item.KEY}`. A string that is exactly
one placeholder takes the value as it is (a number stays a number); otherwise each placeholder is written as text.

    name: research
    steps:
      - name: search
        tool: search_documents
        arguments: {query: "{task}", k: 5}
      - name: read
        tool: read_document
        for_each: search
        limit: 2
        arguments: {document_id: "{item.document_id}", start: "{item.start}"}
      - name: answer
        tool: answer
        arguments: {question: "{task}"}
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from archivist.types import UsageError

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w-]*(?:\.[\w-]+)*)\}")
_NAME = re.compile(r"^[A-Za-z_][\w-]*$")
#: the most calls one for_each step makes, whatever its limit says
MAX_FAN_OUT = 20


@dataclass(frozen=True, slots=True)
class WorkflowStep:
    """One step: a tool, its arguments as templates, and optionally the earlier step whose list it runs over."""

    name: str
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)
    for_each: str | None = None
    limit: int = 5


@dataclass(frozen=True, slots=True)
class Workflow:
    """A named sequence of steps; the last step's result is the run's result."""

    name: str
    steps: tuple[WorkflowStep, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise UsageError(f"workflow {self.name!r} has no steps")
        seen: set[str] = set()
        for step in self.steps:
            where = f"workflow {self.name!r}, step {step.name!r}"
            if not _NAME.match(step.name) or step.name in seen or step.name in ("task", "item"):
                raise UsageError(f"{where}: a step needs a unique name of letters, digits, _ or - (not task/item)")
            if step.for_each is not None and step.for_each not in seen:
                raise UsageError(f"{where}: for_each names {step.for_each!r}, which is not an earlier step")
            if not 1 <= step.limit <= MAX_FAN_OUT:
                raise UsageError(f"{where}: limit must be between 1 and {MAX_FAN_OUT}")
            for ref in _references(step.arguments):
                head = ref.split(".")[0]
                if head == "item" and step.for_each is None:
                    raise UsageError(f"{where}: {{{ref}}} needs for_each")
                if head not in ("task", "item") and head not in seen:
                    raise UsageError(f"{where}: {{{ref}}} names no earlier step")
            seen.add(step.name)

    def to_dict(self) -> dict[str, Any]:
        """Return the workflow as plain data (what a run journals, and what `from_dict` reads)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Workflow:
        """Return the workflow this data declares, or raise UsageError saying what is wrong with it."""
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
            raise UsageError("a workflow is a mapping with a name and a list of steps")
        steps = []
        for i, raw in enumerate(data["steps"], start=1):
            if not isinstance(raw, dict) or not isinstance(raw.get("tool"), str):
                raise UsageError(f"workflow step {i}: a mapping with a tool (and name, arguments, for_each, limit)")
            unknown = set(raw) - {"name", "tool", "arguments", "for_each", "limit"}
            if unknown:
                raise UsageError(f"workflow step {i}: unknown keys {', '.join(sorted(unknown))}")
            arguments = raw.get("arguments") or {}
            if not isinstance(arguments, dict):
                raise UsageError(f"workflow step {i}: arguments must be a mapping")
            try:  # what YAML reads as a date or a set is no JSON a tool can be called with
                arguments = json.loads(json.dumps(arguments, allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise UsageError(
                    f"workflow step {i}: arguments must be plain JSON values (quote dates): {exc}"
                ) from exc
            limit = raw.get("limit", 5)
            if not isinstance(limit, int) or isinstance(limit, bool):
                raise UsageError(f"workflow step {i}: limit must be a whole number")
            name, for_each = raw.get("name", raw["tool"]), raw.get("for_each")
            if not isinstance(name, str) or not (for_each is None or isinstance(for_each, str)):
                raise UsageError(f"workflow step {i}: name and for_each must be step names (text)")
            steps.append(WorkflowStep(name, raw["tool"], arguments, for_each, limit))
        return cls(str(data.get("name") or "workflow"), tuple(steps))

    def calls(self, index: int, task: str, results: dict[str, Any]) -> list[dict[str, Any]]:
        """Return the arguments of step `index`'s calls, given the task and the results of the steps before it
        (a for_each step over a result that is not a list makes no call)."""
        step = self.steps[index]
        scope: dict[str, Any] = {"task": task, **results}
        if step.for_each is None:
            return [_render(step.arguments, scope)]
        items = results.get(step.for_each)
        if not isinstance(items, list):
            return []
        out: list[dict[str, Any]] = []
        for item in items:
            rendered = _render(step.arguments, {**scope, "item": item})
            if rendered not in out:
                out.append(rendered)
            if len(out) >= step.limit:
                break
        return out


def _references(value: Any) -> list[str]:
    if isinstance(value, str):
        return _PLACEHOLDER.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def _lookup(path: str, scope: dict[str, Any]) -> Any:
    head, *rest = path.split(".")
    value = scope.get(head)
    for part in rest:
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


def _render(value: Any, scope: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, scope) for v in value]
    if not isinstance(value, str):
        return value
    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        return _lookup(whole.group(1), scope)

    def text(match: re.Match[str]) -> str:
        found = _lookup(match.group(1), scope)
        return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)

    return _PLACEHOLDER.sub(text, value)


#: the workflow a run without a model uses unless told otherwise: find, read the two best documents, answer
RESEARCH = Workflow(
    "research",
    (
        WorkflowStep("search", "search_documents", {"query": "{task}", "k": 5}),
        WorkflowStep(
            "read",
            "read_document",
            {"document_id": "{item.document_id}", "start": "{item.start}"},
            for_each="search",
            limit=2,
        ),
        WorkflowStep("answer", "answer", {"question": "{task}"}),
    ),
)
BUILTIN_WORKFLOWS = {RESEARCH.name: RESEARCH}


def load_workflow(spec: str) -> Workflow:
    """Return the workflow a name (built-in: research) or a YAML/JSON file declares, or raise UsageError."""
    if spec in BUILTIN_WORKFLOWS:
        return BUILTIN_WORKFLOWS[spec]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(
            f"--workflow {spec!r}: neither a built-in workflow ({', '.join(BUILTIN_WORKFLOWS)}) nor a file"
        )
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"--workflow {spec!r}: {path} is not valid YAML: {exc}") from exc
    try:
        return Workflow.from_dict(data)
    except UsageError as exc:
        raise UsageError(f"--workflow {spec!r}: {exc}") from exc
