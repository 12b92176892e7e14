"""`archivist docs …`: list, show and delete stored documents."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._errors import fail
from archivist.cli._options import FilterOpt, JsonOpt, StoreOpt, store_filters
from archivist.cli._output import emit_done, emit_json, out, short

app = App(name="docs", help="List, show and delete stored documents.", no_args_is_help=True)

DocumentIdArg = Annotated[str, typer.Argument(metavar="ID")]


def _no_document(document_id: str) -> NoReturn:
    fail(f"no document with id {document_id!r} (see `archivist docs list`)", 1)


@app.command("list")
def docs_list(
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    filters: FilterOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List stored documents."""
    with open_app(store, existing=True) as archivist:
        parsed = store_filters(archivist, filters)
        docs = archivist.store.list_documents(limit=limit, offset=offset, filters=parsed)
        total = archivist.store.count_documents(parsed)
    if as_json:
        emit_json({"total": total, "offset": offset, "documents": [dataclasses.asdict(d) for d in docs]})
        return
    table = Table("id", "title", "source", "chunks", "updated", box=None, header_style="bold")
    for d in docs:
        table.add_row(d.id, short(d.title, 40), short(d.source, 50), str(d.chunk_count), d.updated_at)
    out.print(table)
    out.print(f"[dim]{len(docs)} of {total} documents[/]")


@app.command("show")
def docs_show(document_id: DocumentIdArg, store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Show one document's fields and its chunks."""
    with open_app(store, existing=True) as archivist:
        doc = archivist.store.get_document(document_id)
        if doc is None:
            _no_document(document_id)
        chunks = archivist.store.document_chunks(document_id)
    if as_json:
        emit_json({**dataclasses.asdict(doc), "chunks": [dataclasses.asdict(c) for c in chunks]})
        return
    out.print(f"[bold]{escape(doc.title)}[/]  [dim]{doc.id}[/]")
    for key in ("source", "media_type", "chunk_count", "char_count", "version", "created_at", "updated_at"):
        out.print(f"  {key}: {escape(str(getattr(doc, key)))}")
    if doc.metadata:
        out.print(f"  metadata: {escape(json.dumps(doc.metadata, ensure_ascii=False))}")
    for c in chunks:
        page = f" p.{c.page}" if c.page else ""
        heading = " > ".join(c.heading_path)
        out.print(f"  [cyan]#{c.ordinal}[/] {c.token_count} tok{page} [magenta]{escape(heading)}[/]")
        out.print(f"     {escape(short(' '.join(c.text.split()), 110))}")


@app.command("delete")
def docs_delete(document_id: DocumentIdArg, store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Delete a document and its chunks."""
    with open_app(store, existing=True) as archivist:
        deleted = archivist.store.delete_document(document_id)
    if not deleted:
        _no_document(document_id)
    emit_done("deleted", document_id, as_json)
