"""Tools from functions: `@tool` reads a function's type hints and docstring into a JSON Schema (pydantic), checks a
model's arguments against it before the call, and runs the call under the tool's own time limit.

Each tool declares its effect class, which decides how the loop journals it: a `read_only` or `idempotent` call may
run again after a crash; a `side_effecting` one gets an intent committed before it runs and its outcome after, and
receives the idempotency key in a parameter named `idempotency_key` when it declares one.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import to_jsonable_python

from archivist.llm.accounting import Budget
from archivist.llm.base import ToolSpec
from archivist.types import ArchivistError, UsageError

#: the budget of the run whose tool is being called: a built-in tool that calls a model (`answer`) charges it there
RUN_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("archivist_run_budget", default=None)

Effect = Literal["read_only", "idempotent", "side_effecting"]
EFFECTS: tuple[Effect, ...] = ("read_only", "idempotent", "side_effecting")
#: the parameter a side-effecting function declares to receive its call's idempotency key (never shown to a model)
IDEMPOTENCY_KEY = "idempotency_key"
#: a reconcile hook: given a call's arguments and idempotency key, the call's result once it made sure the effect
#: happened exactly once, or None when it cannot tell (a person decides then)
Reconcile = Callable[[dict[str, Any], str], Any]


class ToolInputError(ArchivistError):
    """A model's arguments do not fit the tool's schema (told to the model as an observation)."""


class ToolTimeout(ArchivistError):
    """A tool call did not finish within the tool's time limit."""


@dataclass(slots=True)
class Tool:
    """A function the agent may call: its schema, effect class, time limit and whether a person must approve it."""

    name: str
    description: str
    effect: Effect
    fn: Callable[..., Any]
    arguments_model: type[BaseModel]
    timeout_s: float = 30.0
    requires_approval: bool = False
    #: its results carry text from documents (or elsewhere outside the user's control): side-effecting tools are
    #: refused once such text is in the context, unless the run allows it
    untrusted_output: bool = False
    takes_idempotency_key: bool = False
    reconcile: Reconcile | None = None
    _schema: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.effect not in EFFECTS:
            raise UsageError(f"tool {self.name!r}: effect must be one of {', '.join(EFFECTS)}, not {self.effect!r}")
        if self.timeout_s <= 0:
            raise UsageError(f"tool {self.name!r}: timeout_s must be positive")
        schema = self.arguments_model.model_json_schema()
        schema.pop("title", None)
        self._schema = schema

    def spec(self) -> ToolSpec:
        """Return what the model is shown: the tool's name, description and parameters' JSON Schema."""
        return ToolSpec(self.name, self.description, self._schema)

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Return the arguments checked and converted to the function's types, or raise ToolInputError."""
        try:
            checked = self.arguments_model.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
            )
            raise ToolInputError(f"invalid arguments for {self.name}: {problems}") from exc
        return {name: getattr(checked, name) for name in type(checked).model_fields}

    def invoke(
        self, arguments: dict[str, Any], idempotency_key: str | None = None, *, timeout_s: float | None = None
    ) -> Any:
        """Return the call's result as JSON-ready data; raise ToolInputError, ToolTimeout, or what the tool raised.
        `timeout_s` cuts the tool's own time limit (to what is left of the run's wall time)."""
        limit = self.timeout_s if timeout_s is None else max(0.0, min(self.timeout_s, timeout_s))
        kwargs = self.validate(arguments)
        if self.takes_idempotency_key:
            kwargs[IDEMPOTENCY_KEY] = idempotency_key
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = self.fn(**kwargs)
            except BaseException as exc:  # handed to the calling thread, which decides
                box["error"] = exc

        # A daemon thread, not a pool: a call that never returns must not keep the process alive at exit. It runs in
        # a copy of the caller's context, so a built-in tool sees the run's budget (RUN_BUDGET).
        context = contextvars.copy_context()
        worker = threading.Thread(target=context.run, args=(target,), name=f"tool-{self.name}", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            raise ToolTimeout(f"{self.name} did not finish within {limit:g} s")
        if "error" in box:
            raise box["error"]
        return to_jsonable_python(box.get("value"), fallback=str)

    def reconciler(self, hook: Reconcile) -> Reconcile:
        """Register `hook` as this tool's reconcile hook; return it (use as a decorator)."""
        self.reconcile = hook
        return hook

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Return what the function returns: a decorated function can still be called directly."""
        return self.fn(*args, **kwargs)


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    effect: Effect = "read_only",
    timeout_s: float = 30.0,
    requires_approval: bool = False,
    untrusted_output: bool = False,
    name: str | None = None,
) -> Any:
    """Return a `Tool` built from a function (as `@tool` or `@tool(effect=…, timeout_s=…)`)."""

    def build(function: Callable[..., Any]) -> Tool:
        return function_tool(
            function,
            effect=effect,
            timeout_s=timeout_s,
            requires_approval=requires_approval,
            untrusted_output=untrusted_output,
            name=name,
        )

    return build(fn) if fn is not None else build


def function_tool(
    fn: Callable[..., Any],
    *,
    effect: Effect = "read_only",
    timeout_s: float = 30.0,
    requires_approval: bool = False,
    untrusted_output: bool = False,
    name: str | None = None,
) -> Tool:
    """Return a `Tool` whose schema comes from `fn`'s type hints and its docstring's parameter descriptions."""
    tool_name = name or fn.__name__
    if effect not in EFFECTS:
        raise UsageError(f"tool {tool_name!r}: effect must be one of {', '.join(EFFECTS)}, not {effect!r}")
    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    described = {p.arg_name: p.description or "" for p in doc.params}
    hints = get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    takes_key = False
    for param in inspect.signature(fn).parameters.values():
        if param.name == IDEMPOTENCY_KEY:
            takes_key = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise UsageError(f"tool {tool_name!r}: *args and **kwargs cannot be described to a model")
        if param.name not in hints:
            raise UsageError(f"tool {tool_name!r}: parameter {param.name!r} needs a type hint")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints[param.name], Field(default, description=described.get(param.name) or None))
    if takes_key and effect != "side_effecting":
        raise UsageError(f"tool {tool_name!r}: only a side-effecting tool receives an idempotency key")
    model = create_model(f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    description = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
    if not description:
        raise UsageError(f"tool {tool_name!r}: a docstring must say what it does (the model reads it)")
    return Tool(
        name=tool_name,
        description=description,
        effect=effect,
        fn=fn,
        arguments_model=model,
        timeout_s=timeout_s,
        requires_approval=requires_approval,
        untrusted_output=untrusted_output,
        takes_idempotency_key=takes_key,
    )


def load_tools(spec: str) -> list[Tool]:
    """Return the tools named by "path/to/module.py:NAME" (NAME a list of tools, or one tool), or raise UsageError."""
    import importlib.util
    import sys
    from pathlib import Path

    path_text, _, attribute = spec.rpartition(":")
    if not path_text or not attribute:
        raise UsageError(f"--tools {spec!r}: write it as FILE.py:NAME (NAME a list of @tool functions)")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"--tools {spec!r}: no file {path}")
    module_name = f"archivist_user_tools_{abs(hash(path.resolve()))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise UsageError(f"--tools {spec!r}: {path} is not a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # the user's module failed to import: say which and why, no traceback
        raise UsageError(f"--tools {spec!r}: {path} could not be loaded: {type(exc).__name__}: {exc}") from exc
    value = getattr(module, attribute, None)
    if value is None:
        raise UsageError(f"--tools {spec!r}: {path} defines no {attribute}")
    found = [value] if isinstance(value, Tool) else list(value) if isinstance(value, list | tuple) else None
    if found is None or not all(isinstance(t, Tool) for t in found):
        raise UsageError(f"--tools {spec!r}: {attribute} must be a @tool function or a list of them")
    return found
