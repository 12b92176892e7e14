"""`archivist mcp`: the MCP server, on stdio or over streamable HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._errors import fail
from archivist.cli._options import StoreOpt
from archivist.cli.agent import ToolsOpt

app = App()


@app.command()
def mcp(
    http: Annotated[
        bool, typer.Option("--http", help="Serve streamable HTTP (API keys as bearer tokens) instead of stdio.")
    ] = False,
    host: Annotated[str, typer.Option("--host", help="Address to bind with --http.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port with --http.")] = 8765,
    tools: ToolsOpt = None,
    store: StoreOpt = None,
    log_level: Annotated[
        str, typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning or error.")
    ] = "warning",
) -> None:
    """Run the MCP server (tools: search, answer, get_document, list_collections, and your own tools: --tools, else
    ARCHIVIST_AGENT_TOOLS; documents as resources). On stdio it acts as the local user and reads every collection;
    over HTTP each request needs an API key (`archivist keys create`) with the read scope and reaches only that key's
    collections. Every tool call goes into the request log (`/v1/usage`). Logs go to stderr."""
    from archivist import __version__
    from archivist.server.app import configure_logging

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"unknown --log-level {log_level!r}: use debug, info, warning or error", 2)
    # On stdio, stdout carries the protocol: every log line goes to stderr.
    configure_logging(log_level)
    with open_app(store, existing=True) as archivist:
        from archivist.guard.pii import install_log_redaction

        # As `serve` does: user text in this process's log lines is redacted unless the settings turn it off.
        install_log_redaction(archivist.settings.pii_redact_logs)
        from archivist.agent.tools import load_tools
        from archivist.mcp.calls import CallLog

        # --tools overrides the agent_tools setting, as for `archivist agent`.
        user_tools = load_tools(tools) if tools else None
        if not http:
            from archivist.mcp.server import stdio_server

            calls = CallLog(archivist.store)
            server = stdio_server(archivist, calls, user_tools, version=__version__)
            calls.start()
            try:
                server.run("stdio")
            finally:
                calls.stop()
            return
        import uvicorn

        from archivist.cli.serve import _server_class
        from archivist.mcp.server import http_app
        from archivist.server.app import proxy_options
        from archivist.server.metrics import Metrics

        calls = CallLog(archivist.store, Metrics(archivist.store))
        config = uvicorn.Config(
            http_app(archivist, calls, user_tools, host=host, port=port, version=__version__),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            **proxy_options(archivist.settings),
        )
        server = _server_class()(config)
        calls.start()
        try:
            server.run()
        finally:
            calls.stop()
        if not server.started:
            fail(f"could not serve on {host}:{port} (see the log above)", 1)
