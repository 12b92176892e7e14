"""`archivist guard …`: review the chunks the injection detector flagged at ingest, and clear one a person has
judged harmless."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._errors import fail
from archivist.cli._options import JsonOpt, StoreOpt
from archivist.cli._output import emit_json, err, out, short
from archivist.types import MAX_ROW_ID

app = App(name="guard", help="Review chunks flagged as prompt injection at ingest.", no_args_is_help=True)

#: how much of a flagged chunk's text a listing shows
EXCERPT_CHARS = 200


def policy_options(**values: str | None) -> dict[str, str]:
    """Return the guard policy the given options set (options left out are not part of it); the store checks it."""
    return {name: value for name, value in values.items() if value is not None}


@app.command("review")
def guard_review(
    collection: Annotated[
        list[str] | None,
        typer.Option("--collection", "-c", metavar="NAME", help="Only this collection's chunks (repeatable)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many, highest score first.")] = 50,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List flagged chunks no person has cleared: id, score, source and the start of the flagged text."""
    from archivist.store.records import flagged_public

    with open_app(store, existing=True) as archivist:
        chunks = archivist.store.flagged_chunks(collection or None, limit)
    if as_json:
        emit_json({"flagged": [flagged_public(c) for c in chunks]})
        return
    if not chunks:
        err.print("no flagged chunks")
        return
    table = Table("id", "score", "collection", "source", "text", box=None, header_style="bold")
    for c in chunks:
        text = short(" ".join(c.text.split()), EXCERPT_CHARS)
        table.add_row(str(c.id), f"{c.guard_score:.3f}", escape(c.collection), escape(c.source), escape(text))
    out.print(table)


@app.command("clear")
def guard_clear(
    chunk_id: Annotated[
        int,
        typer.Argument(
            metavar="CHUNK_ID", min=1, max=MAX_ROW_ID, help="The chunk's id (from `archivist guard review`)."
        ),
    ],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Clear a flagged chunk: it is no longer fenced as untrusted in prompts; who cleared it and when are kept."""
    import getpass

    by = f"cli:{getpass.getuser()}"
    with open_app(store, existing=True) as archivist:
        cleared = archivist.store.clear_chunk_flag(chunk_id, by)
        exists = cleared or bool(archivist.store.get_chunks([chunk_id]))
    if not cleared:
        reason = "is not flagged (cleared already, or never flagged)" if exists else "does not exist"
        fail(f"chunk {chunk_id} {reason}: see `archivist guard review`", 1)
    if as_json:
        emit_json({"cleared": chunk_id, "by": by})
    else:
        out.print(f"cleared {chunk_id}")
