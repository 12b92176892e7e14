"""The user's own agent tools (`archivist mcp --tools`, else the `agent_tools` setting) as MCP tools.

Each keeps what its `@tool` declares: its JSON Schema and its own argument check (a bad argument is a `bad_request`
tool error with the tool's message), its time limit (`timeout`), and its effect class, shown as MCP annotations. A
tool that requires a person's approval is not exposed: an MCP call has no run to pause. A side-effecting call gets a
fresh idempotency key: MCP calls are not journaled as agent runs are, so a client's retry is a new call.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.tools import Tool as McpTool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp_types import ListToolsResult, ToolAnnotations
from pydantic import ConfigDict

from archivist.agent.tools import Effect, Tool, ToolTimeout
from archivist.mcp.access import Gate, KeyToken, Refused
from archivist.mcp.tools import ToolFailure, tool_errors
from archivist.server.auth import Principal
from archivist.server.scope import user_tool_refusal
from archivist.types import ArchivistError, UsageError

#: what each effect class tells a client (a hint left out keeps the protocol's cautious default)
ANNOTATIONS: dict[Effect, ToolAnnotations] = {
    "read_only": ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True),
    "idempotent": ToolAnnotations(read_only_hint=False, idempotent_hint=True),
    "side_effecting": ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False),
}


class _Passed(ArgModelBase):
    """The arguments as the client sent them: the user's tool checks them itself, with its own messages."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    def model_dump_one_level(self) -> dict[str, Any]:
        """Return the arguments untouched."""
        return dict(self.model_extra or {})


@dataclass(frozen=True, slots=True)
class Exposed:
    """The user's tools an MCP server serves, and those it leaves out with the reason."""

    served: list[Tool]
    #: the served ones as the SDK registers them
    tools: list[McpTool]
    #: (tool name, why it is not served)
    left_out: list[tuple[str, str]]


def expose(tools: Sequence[Tool], gate: Gate, taken: Collection[str]) -> Exposed:
    """Return the MCP tools of the user's `tools`, or raise UsageError when a name is taken (a built-in's, or
    another user tool's)."""
    served: list[Tool] = []
    mcp_tools: list[McpTool] = []
    left_out: list[tuple[str, str]] = []
    names = set(taken)
    for tool in tools:
        if tool.name in names:
            whose = "a built-in MCP tool's" if tool.name in taken else "another of your tools'"
            raise UsageError(
                f"your tool {tool.name!r} has {whose} name: rename it with @tool(name=...) so that "
                "no call reaches the wrong tool"
            )
        names.add(tool.name)
        if tool.requires_approval:
            left_out.append((tool.name, "it requires a person's approval, which an MCP call cannot wait for"))
            continue
        served.append(tool)
        # Built by hand, not with add_tool (which reads a function's signature): the schema is the one @tool made,
        # and the arguments pass through untouched so that the tool's own check answers, as it answers the agent.
        mcp_tools.append(
            McpTool(
                fn=_Call(tool, gate),
                name=tool.name,
                title=None,
                description=tool.description,
                parameters=tool.spec().parameters,
                fn_metadata=FuncMetadata(arg_model=_Passed),
                is_async=False,
                context_kwarg=None,
                annotations=ANNOTATIONS[tool.effect],
            )
        )
    return Exposed(served, mcp_tools, left_out)


def refusal(who: Principal | None, tool: Tool) -> str | None:
    """Return why the caller may not call one of the user's tools, or None when it may (always, on stdio)."""
    return None if who is None else user_tool_refusal(who, tool)


@dataclass(frozen=True, slots=True)
class _Call:
    """One user tool as the SDK calls it: who may call it checked first, then the tool's own check and time limit."""

    tool: Tool
    gate: Gate

    def __call__(self, **arguments: Any) -> Any:
        """Return the tool's result as JSON-ready data, or raise ToolFailure."""
        tool = self.tool
        with tool_errors():
            why = refusal(self.gate.access().principal, tool)
            if why is not None:
                raise Refused("forbidden", why)
            key = f"mcp:{uuid.uuid4().hex}" if tool.effect == "side_effecting" else None
            try:
                return tool.invoke(arguments, key)
            except ToolTimeout as exc:
                if tool.effect == "side_effecting":
                    raise ToolTimeout(f"{exc}; it may still finish, so check before calling it again") from exc
                raise
            except ArchivistError:
                raise
            except Exception as exc:  # the user's code failed: say how, as the agent tells its model
                raise ToolFailure("failed", f"{tool.name} failed: {type(exc).__name__}: {exc}") from exc


class HideRefused:
    """The MCP server's middleware that lists to each key only the user's tools it may call."""

    def __init__(self, tools: Sequence[Tool]) -> None:
        self.tools = list(tools)

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Return the handler's result, a tool list without the tools this key may not call."""
        result = await call_next(ctx)
        token = get_access_token()
        if ctx.method != "tools/list" or not isinstance(token, KeyToken):
            return result
        hidden = {t.name for t in self.tools if refusal(token.principal, t) is not None}
        if not hidden:
            return result
        # The handler's result comes shaped for the wire (a dict); a model is read the same way.
        if isinstance(result, ListToolsResult):
            return result.model_copy(update={"tools": [t for t in result.tools if t.name not in hidden]})
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            return {**result, "tools": [t for t in result["tools"] if t.get("name") not in hidden]}
        return result
