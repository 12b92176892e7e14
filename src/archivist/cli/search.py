"""`archivist search`: ranked hits with highlighted snippets."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._options import FilterOpt, JsonOpt, ModeOpt, StoreOpt, parse_mode
from archivist.cli._output import emit_json, out, warn

if TYPE_CHECKING:
    from archivist.types import Hit

app = App()


@app.command()
def search(
    query: Annotated[str, typer.Argument(metavar="QUERY", help="What to look for, in natural language.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=1000, help="How many hits.")] = 5,
    filters: FilterOpt = None,
    mode: ModeOpt = "hybrid",
    explain: Annotated[bool, typer.Option("--explain", help="Show each retriever's score and rank.")] = False,
    rerank: Annotated[
        str | None,
        typer.Option("--rerank", metavar="RERANKER", help="none, llm or cross-encoder (default: ARCHIVIST_RERANKER)."),
    ] = None,
    expand: Annotated[
        str | None,
        typer.Option(
            "--expand", metavar="EXPANSION", help="none, multi-query or hyde (default: ARCHIVIST_QUERY_EXPANSION)."
        ),
    ] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search the store: dense and BM25 in parallel, fused (learned fusion by default), optionally reranked."""
    from archivist.store.filters import Filters

    retrieval_mode = parse_mode(mode)
    with open_app(store, existing=True, reranker=rerank, query_expansion=expand) as archivist:
        parsed = Filters.parse(filters or [])
        outcome = archivist.searcher().search(query, k=k, filters=parsed, mode=retrieval_mode)
    hits = outcome.hits
    for warning in outcome.warnings:
        warn(warning)
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
    """Return the query's distinct terms as BM25 reads them (stopwords dropped, stemmed), of 3 characters or more:
    a shorter one would mark every word that starts with it."""
    from archivist.text.analyzer import BM25_TERMS, analyzer

    return [t for t in dict.fromkeys(analyzer(BM25_TERMS).terms(query)) if len(t) > 2]


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
