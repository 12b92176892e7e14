"""`archivist ask`: a grounded answer with checked citations, or an honest refusal."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._options import FilterOpt, JsonOpt, StoreOpt, store_filters
from archivist.cli._output import emit_json, out, warn

if TYPE_CHECKING:
    from archivist.answer.answerer import Answer

app = App()

StreamOpt = Annotated[
    bool, typer.Option("--stream", help="Print the answer as it is generated, then the sources (with --json: NDJSON).")
]


def _print_sources(answer: Answer) -> None:
    if answer.refused:
        _print_warnings(answer)
        return
    out.print()
    if answer.citations:
        out.print("[bold]Sources[/]")
    for c in answer.citations:
        # A Markdown H1 usually repeats the title: say it once.
        where = " › ".join(dict.fromkeys(x for x in (c.title, *c.heading_path) if x))
        page = f", page {c.page}" if c.page is not None else ""
        out.print(f"  [{c.n}] {escape(where)} [dim]({escape(c.source)}{page}, chars {c.span[0]}–{c.span[1]})[/]")
        out.print(f'      [dim]"{escape(" ".join(c.quote.split())[:300])}"[/]')
    if answer.unsupported:
        out.print(f"[yellow]{len(answer.unsupported)} unsupported claim(s) removed by citation checking[/]")
    _print_warnings(answer)


def _print_warnings(answer: Answer) -> None:
    for w in answer.warnings:
        warn(w)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(metavar="QUESTION", help="The question, in plain words.")],
    k: Annotated[int, typer.Option("--k", min=1, max=50, metavar="N", help="Chunks retrieved as evidence.")] = 12,
    stream: StreamOpt = False,
    filters: FilterOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question from the documents, with [n] citations checked against the quoted text."""
    from archivist.answer.answerer import AnswerDone, RetrievalDone

    with open_app(store, existing=True) as archivist:
        parsed = store_filters(archivist, filters)
        answerer = archivist.answerer(k=k)
        # The collections' stored guard policies apply here too (a blocked question exits 1 with the reason).
        policy = archivist.guard_policy(parsed.scope)
        if not stream:
            answer = answerer.answer(question, filters=parsed, policy=policy)
            if as_json:
                emit_json(answer.to_dict())
            else:
                out.print(escape(answer.answer))
                _print_sources(answer)
            return
        streamed: list[str] = []
        for event in answerer.stream(question, filters=parsed, policy=policy):
            if isinstance(event, RetrievalDone):
                continue
            if isinstance(event, AnswerDone):
                if as_json:
                    sys.stdout.write(json.dumps({"type": "done", "answer": event.answer.to_dict()}) + "\n")
                else:
                    sys.stdout.write("\n")
                    if event.answer.answer.strip() != "".join(streamed).strip():
                        # Verification dropped claims or renumbered citations: show the text that stands.
                        out.print(f"[bold]Checked answer:[/] {escape(event.answer.answer)}")
                    _print_sources(event.answer)
            elif as_json:
                sys.stdout.write(json.dumps({"type": "token", "text": event.text}) + "\n")
            else:
                streamed.append(event.text)
                sys.stdout.write(event.text)
            sys.stdout.flush()
