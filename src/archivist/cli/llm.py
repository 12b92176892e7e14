"""`archivist llm …`: check the configured model providers."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._errors import fail
from archivist.cli._options import JsonOpt, StoreOpt
from archivist.cli._output import emit_json, out

app = App(name="llm", help="Check the LLM providers of the gateway.", no_args_is_help=True)


@app.command("ping")
def llm_ping(
    timeout_s: Annotated[
        float, typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Seconds per provider.")
    ] = 10.0,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send each provider a tiny request: reachable, latency, breaker state. Exit 1 if none answers."""
    with open_app(store) as archivist:
        gateway = archivist.gateway()
        if not gateway.routes:
            message = "no LLM provider configured: set ARCHIVIST_LLM_URL and ARCHIVIST_LLM_MODEL, or [[llm.providers]]"
            if as_json:
                # --json promises one document on stdout, failure included: a script reads why, not an empty string.
                emit_json({"providers": [], "error": message})
            fail(message, 1)
        report = gateway.ping(timeout_s)
    if as_json:
        emit_json(report)
    else:
        table = Table("provider", "model", "reachable", "latency ms", "breaker", "error", box=None)
        for r in report:
            table.add_row(
                escape(str(r["provider"])),
                escape(str(r["model"])),
                "yes" if r["reachable"] else "[red]no[/]",
                str(r["latency_ms"]),
                str(r["breaker"]),
                escape(str(r["error"] or "")),
            )
        out.print(table)
    if not any(r["reachable"] for r in report):
        raise typer.Exit(1)
