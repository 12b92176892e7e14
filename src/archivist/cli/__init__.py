"""The `archivist` command: one module per command or command group, put together here.

Conventions: `--json` prints one JSON document on stdout and nothing else there; progress and logs go
to stderr. Exit 0 on success, 1 on failure, 2 on bad usage.

Command modules import what their work needs inside the command, so `archivist --help`, `--version` and shell
completion never load numpy, the models or the server.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from archivist.cli import (
    agent,
    ask,
    collections,
    docs,
    eval,
    guard,
    ingest,
    keys,
    llm,
    mcp,
    migrate,
    search,
    serve,
    stats,
    store,
    worker,
)
from archivist.cli._command import App
from archivist.cli._output import err, out

app = App(help="Archivist: ingest documents, search them with hybrid retrieval.", no_args_is_help=True)
# Each module holds one Typer `app`: a named one is a group (`archivist docs …`), an unnamed one adds its command at
# the top level. `archivist --help` lists them in this order, single commands before groups.
for module in (
    ask,
    serve,
    worker,
    mcp,
    ingest,
    search,
    stats,
    migrate,
    docs,
    collections,
    eval,
    llm,
    keys,
    guard,
    agent,
    store,
):
    app.add_typer(module.app)


def package_version() -> str:
    """Return the installed archivist package's version (the source tree's when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("archivist")
    except PackageNotFoundError:
        from archivist import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        out.print(f"archivist {package_version()}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    """Archivist: ingest documents, search them with hybrid retrieval."""


def main() -> None:
    """Run the CLI (the `archivist` console script); returns nothing, exits 130 on Ctrl-C."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
