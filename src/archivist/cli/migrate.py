"""`archivist migrate`: create or upgrade the store's schema (and, on PostgreSQL, the pgvector extension)."""

from __future__ import annotations

from rich.markup import escape

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._options import JsonOpt, StoreOpt
from archivist.cli._output import emit_json, out

app = App()


@app.command()
def migrate(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Create the store, or bring its schema up to this version's: idempotent, and safe to run from several
    processes at once (every command also migrates when it opens a store; run this first to do it on its own)."""
    with open_app(store) as archivist:
        data = {
            "store": archivist.store.url,
            "schema_version": archivist.store.schema_version(),
            "expected_schema_version": archivist.store.expected_schema_version(),
        }
    if as_json:
        emit_json(data)
        return
    out.print(f"{escape(str(data['store']))}: schema version {data['schema_version']} (current)")
