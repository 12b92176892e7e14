"""The `archivist` command: one module per command or command group, put together here.

Conventions: `--json` prints one JSON document on stdout and nothing else there; progress and logs go
to stderr. Exit 0 on success, 1 on failure, 2 on bad usage.
"""

from __future__ import annotations

import sys

import typer

from archivist.cli import ask, docs, eval, ingest, keys, llm, search, serve, stats, worker
from archivist.cli._output import err

app = typer.Typer(
    help="Archivist: ingest documents, search them with hybrid retrieval.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Each module holds one Typer `app`: a named one is a group (`archivist docs …`), an unnamed one adds its command at
# the top level. `archivist --help` lists them in this order, single commands before groups.
for module in (ask, serve, worker, ingest, search, stats, docs, eval, llm, keys):
    app.add_typer(module.app)


def main() -> None:
    """Run the CLI (the `archivist` console script); returns nothing, exits 130 on Ctrl-C."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
