"""The tool-using agent (layer 5): tools from functions (`tools`), the built-in document tools (`builtins`), what a
run read and its answer's checked citations (`evidence`), and the loop with its effect journal (`loop`)."""

from archivist.agent.loop import Agent, AgentLimits
from archivist.agent.tools import Tool, ToolInputError, ToolTimeout, load_tools, tool

__all__ = ["Agent", "AgentLimits", "Tool", "ToolInputError", "ToolTimeout", "load_tools", "tool"]
