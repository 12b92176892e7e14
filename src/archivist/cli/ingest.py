"""`archivist ingest`: read files and folders into the store."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._options import JsonOpt, StoreOpt
from archivist.cli._output import emit_json, err, out
from archivist.cli._progress import stage_progress
from archivist.types import DEFAULT_COLLECTION

if TYPE_CHECKING:
    from archivist.ingest.pipeline import Progress

app = App()


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="Files and folders: .md .txt .html .pdf .jsonl")],
    sync: Annotated[
        bool, typer.Option("--sync", help="Remove stored documents whose source under PATHS is gone.")
    ] = False,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Rewrite unchanged documents too (cached vectors are reused): adds the sentence vectors a store "
            "written by an older Archivist lacks.",
        ),
    ] = False,
    collection: Annotated[
        str, typer.Option("--collection", "-c", metavar="NAME", help="The collection to ingest into (created if new).")
    ] = DEFAULT_COLLECTION,
    follow_symlinks: Annotated[
        bool,
        typer.Option(
            "--follow-symlinks",
            help="Read symlinks in a folder that point outside it (skipped by default, with a reason).",
        ),
    ] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest files and folders: unchanged documents are skipped, changed ones replaced atomically."""
    with open_app(store) as archivist:
        with stage_progress() as show:
            show("ingest", 0, None, "loading model…")

            def hook(p: Progress) -> None:
                show("ingest", p.done, p.total, p.current)

            report = archivist.ingest(
                paths,
                sync=sync,
                progress=hook,
                collection=collection,
                refresh=refresh,
                follow_symlinks=follow_symlinks,
            )
        counts = report.counts()
        if as_json:
            emit_json(
                {
                    **counts,
                    "chunks_written": report.chunks_written,
                    "chunks_embedded": report.chunks_embedded,
                    "seconds": round(report.seconds, 3),
                    "skipped_items": [dataclasses.asdict(s) for s in report.skipped],
                    "failed_items": [dataclasses.asdict(s) for s in report.failed],
                    "removed_items": report.removed,
                    "store": archivist.store.url,
                    "collection": collection,
                }
            )
        else:
            for s in report.skipped:
                err.print(f"[yellow]skipped[/] {escape(s.source)}: {escape(s.reason)}")
            for s in report.failed:
                err.print(f"[red]failed[/] {escape(s.source)}: {escape(s.reason)}")
            summary = ", ".join(f"{v} {k}" for k, v in counts.items())
            out.print(
                f"{summary} — {report.chunks_written} chunks written, {report.chunks_embedded} embedded, "
                f"{report.seconds:.1f}s"
            )
    done = len(report.added) + len(report.updated) + len(report.unchanged) + len(report.removed)
    if done == 0 and (report.skipped or report.failed):
        raise typer.Exit(1)
