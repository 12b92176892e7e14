"""The `archivist` command: ingest, search, docs, stats.

Conventions: `--json` prints one JSON document on stdout and nothing else there; progress and logs go
to stderr. Exit 0 on success, 1 on failure, 2 on bad usage.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from archivist.cli_ask import ask
from archivist.cli_eval import eval_app
from archivist.cli_llm import llm_app
from archivist.cli_serve import keys_app, serve
from archivist.cli_support import FilterOpt, JsonOpt, ModeOpt, StoreOpt, emit_json, err, fail, open_app, out, parse_mode
from archivist.ingest.pipeline import Progress as IngestProgress
from archivist.store.base import Filters, check_filter_keys
from archivist.types import DEFAULT_COLLECTION, DocumentRecord, Hit

app = typer.Typer(
    help="Archivist: ingest documents, search them with hybrid retrieval.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)
docs_app = typer.Typer(help="List, show and delete stored documents.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(docs_app, name="docs")
app.add_typer(eval_app, name="eval")
app.add_typer(llm_app, name="llm")
app.add_typer(keys_app, name="keys")
app.command()(ask)
app.command()(serve)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders: .md .txt .html .pdf .jsonl")],
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
        str, typer.Option("--collection", "-c", help="The collection to ingest into (created if new).")
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
        progress = Progress(
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("docs"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[current]}", style="dim"),
            console=err,
            transient=True,
        )
        with progress:
            task = progress.add_task("ingest", total=None, current="loading model…")

            def hook(p: IngestProgress) -> None:
                progress.update(task, completed=p.done, total=p.total, current=_short(p.current, 50))

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


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in natural language.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=1000, help="How many hits.")] = 5,
    filters: FilterOpt = None,
    mode: ModeOpt = "hybrid",
    explain: Annotated[bool, typer.Option("--explain", help="Show each retriever's score and rank.")] = False,
    rerank: Annotated[
        str | None, typer.Option("--rerank", help="none, llm or cross-encoder (default: ARCHIVIST_RERANKER).")
    ] = None,
    expand: Annotated[
        str | None,
        typer.Option("--expand", help="none, multi-query or hyde (default: ARCHIVIST_QUERY_EXPANSION)."),
    ] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search the store: dense and BM25 in parallel, fused (learned fusion by default), optionally reranked."""
    retrieval_mode = parse_mode(mode)
    with open_app(store, existing=True, reranker=rerank, query_expansion=expand) as archivist:
        parsed = Filters.parse(filters or [])
        outcome = archivist.searcher().search(query, k=k, filters=parsed, mode=retrieval_mode)
    hits = outcome.hits
    for warning in outcome.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if as_json:
        emit_json([h.to_dict() for h in hits])
        return
    if not hits:
        out.print("no results")
        return
    for rank, hit in enumerate(hits, start=1):
        _print_hit(rank, hit, query, explain)


def _print_hit(rank: int, hit: Hit, query: str, explain: bool) -> None:
    where = escape(hit.source) + (f" p.{hit.page}" if hit.page else "")
    heading = " > ".join(hit.heading_path)
    out.print(f"[bold]{rank}.[/] [cyan]{hit.score:.4f}[/]  [bold]{escape(hit.title)}[/]  [dim]{where}[/]")
    if heading:
        out.print(f"   [magenta]{escape(heading)}[/]")
    out.print("   " + highlight(snippet(hit.text, query), query))
    if explain:
        dense = f"dense #{hit.dense_rank} {hit.dense_score:.4f}" if hit.dense_rank else "dense –"
        bm25 = f"bm25 #{hit.bm25_rank} {hit.bm25_score:.3f}" if hit.bm25_rank else "bm25 –"
        out.print(f"   [dim]{dense} · {bm25} · doc {hit.document_id} · chunk {hit.chunk_id}[/]")
    out.print()


def _terms(query: str) -> list[str]:
    return [t for t in re.findall(r"\w+", query.lower()) if len(t) > 2]


def snippet(text: str, query: str, width: int = 240) -> str:
    """Return the window of `text` (about `width` chars) holding the most query terms."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    terms = _terms(query)
    best, best_score = 0, -1
    for start in range(0, len(flat) - width + 1, max(1, width // 4)):
        window = flat[start : start + width].lower()
        score = sum(window.count(t) for t in terms)
        if score > best_score:
            best, best_score = start, score
    prefix = "…" if best > 0 else ""
    suffix = "…" if best + width < len(flat) else ""
    return prefix + flat[best : best + width] + suffix


def highlight(text: str, query: str) -> str:
    """Return rich markup of `text` with the query's words (and their stems' prefixes) in bold."""
    terms = _terms(query)
    if not terms:
        return escape(text)
    pattern = re.compile(r"\b(" + "|".join(re.escape(t[: max(4, len(t) - 2)]) for t in terms) + r")\w*", re.I)
    parts, last = [], 0
    for m in pattern.finditer(text):
        parts.append(escape(text[last : m.start()]))
        parts.append(f"[bold yellow]{escape(m.group(0))}[/]")
        last = m.end()
    parts.append(escape(text[last:]))
    return "".join(parts)


def _doc_dict(d: DocumentRecord) -> dict[str, Any]:
    return dataclasses.asdict(d)


@docs_app.command("list")
def docs_list(
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    filters: FilterOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List stored documents."""
    with open_app(store, existing=True) as archivist:
        parsed = Filters.parse(filters or [])
        check_filter_keys(archivist.store, parsed)
        docs = archivist.store.list_documents(limit=limit, offset=offset, filters=parsed)
        total = archivist.store.count_documents(parsed)
    if as_json:
        emit_json({"total": total, "offset": offset, "documents": [_doc_dict(d) for d in docs]})
        return
    table = Table("id", "title", "source", "chunks", "updated", box=None, header_style="bold")
    for d in docs:
        table.add_row(d.id, _short(d.title, 40), _short(d.source, 50), str(d.chunk_count), d.updated_at)
    out.print(table)
    out.print(f"[dim]{len(docs)} of {total} documents[/]")


@docs_app.command("show")
def docs_show(
    document_id: Annotated[str, typer.Argument(metavar="ID")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one document's fields and its chunks."""
    with open_app(store, existing=True) as archivist:
        doc = archivist.store.get_document(document_id)
        if doc is None:
            fail(f"no document with id {document_id!r} (see `archivist docs list`)", 1)
        chunks = archivist.store.document_chunks(document_id)
    if as_json:
        emit_json({**_doc_dict(doc), "chunks": [dataclasses.asdict(c) for c in chunks]})
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
        out.print(f"     {escape(_short(' '.join(c.text.split()), 110))}")


@docs_app.command("delete")
def docs_delete(
    document_id: Annotated[str, typer.Argument(metavar="ID")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a document and its chunks."""
    with open_app(store, existing=True) as archivist:
        deleted = archivist.store.delete_document(document_id)
    if not deleted:
        fail(f"no document with id {document_id!r} (see `archivist docs list`)", 1)
    if as_json:
        emit_json({"deleted": document_id})
    else:
        out.print(f"deleted {document_id}")


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


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GB"


def main() -> None:
    """Run the CLI (the `archivist` console script)."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
