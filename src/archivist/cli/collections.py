"""`archivist collections …`: list collections with their guard policies, and set a collection's policy."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._options import JsonOpt, StoreOpt
from archivist.cli._output import emit_json, out
from archivist.cli.guard import policy_options

app = App(name="collections", help="List collections and set their guard policies.", no_args_is_help=True)


def _policy_text(policy: dict[str, str]) -> str:
    return ",".join(f"{name}={value}" for name, value in sorted(policy.items()))


@app.command("list")
def collections_list(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List collections with their document counts and guard policies."""
    with open_app(store, existing=True) as archivist:
        collections = archivist.store.list_collections()
    if as_json:
        emit_json(
            {
                "collections": [
                    {"name": c.name, "description": c.description, "documents": c.documents, "policy": c.policy}
                    for c in collections
                ]
            }
        )
        return
    table = Table("name", "documents", "policy", "description", box=None, header_style="bold")
    for c in collections:
        table.add_row(escape(c.name), str(c.documents), _policy_text(c.policy), escape(c.description))
    out.print(table)


@app.command("policy")
def collections_policy(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The collection (created if new).")],
    injection: Annotated[
        str | None,
        typer.Option("--injection", metavar="POLICY", help="What flagged questions over it get: off, flag or block."),
    ] = None,
    pii: Annotated[
        str | None,
        typer.Option(
            "--pii", metavar="POLICY", help="redact: personal data replaced at ingest (and in answers); or off."
        ),
    ] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a collection's guard policy (the options given; the others keep their values) and print it."""
    from contextlib import suppress

    from archivist.types import ConflictError, check_collection_name

    policy = policy_options(injection=injection, pii=pii)
    with open_app(store) as archivist:
        check_collection_name(name)
        if not archivist.store.has_collection(name):
            with suppress(ConflictError):
                archivist.store.create_collection(name, "", policy)
        merged = archivist.store.set_collection_policy(name, policy)
    if as_json:
        emit_json({"collection": name, "policy": merged})
    else:
        out.print(f"{name}: {_policy_text(merged) or 'no policy (the server settings apply)'}")
