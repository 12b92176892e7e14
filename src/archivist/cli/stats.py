"""`archivist stats`: what the store holds and which embedding model the settings select."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._options import JsonOpt, StoreOpt
from archivist.cli._output import emit_json, out

app = App()


@app.command()
def stats(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Show documents, chunks, store size and the embedding model."""
    with open_app(store, existing=True) as archivist:
        data = {**archivist.store.stats(), "embedding_model": archivist.embedding_model}
    if as_json:
        emit_json(data)
        return
    table = Table(box=None, show_header=False)
    table.add_row("store", escape(str(data["store"])))
    table.add_row("documents", f"{data['documents']:,}")
    table.add_row("chunks", f"{data['chunks']:,}")
    table.add_row("tokens", f"{data['tokens']:,}")
    table.add_row("size", _human_bytes(int(data["bytes"])))
    table.add_row("embedding model", str(data["embedding_model"]))
    vectors = data.get("vectors", {})
    table.add_row("vectors", ", ".join(f"{m}: {n:,}" for m, n in vectors.items()) or "none")
    sentences = data.get("sentence_vectors", {})
    table.add_row("sentence vectors", ", ".join(f"{m}: {n:,} chunks" for m, n in sentences.items()) or "none")
    table.add_row("schema version", str(data.get("schema_version")))
    out.print(table)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GB"
