"""`archivist store …`: work on whole stores (`store copy`: move one between backends, vectors included)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from archivist.cli._command import App
from archivist.cli._errors import fail
from archivist.cli._options import JsonOpt
from archivist.cli._output import emit_json, err, out
from archivist.cli._progress import stage_progress
from archivist.types import ArchivistError, UsageError

app = App(name="store", help="Work on whole stores: copy one into another, across backends.", no_args_is_help=True)


@app.command("copy")
def store_copy(
    src: Annotated[str, typer.Argument(metavar="SRC", help="The store URL to copy from (it must exist).")],
    dst: Annotated[str, typer.Argument(metavar="DST", help="The store URL to copy into (created when new).")],
    into_existing: Annotated[
        bool,
        typer.Option(
            "--into-existing",
            help="Add to a DST that holds records already (refused when any clashes: a document of the same source "
            "and collection, a key or run of the same id); what DST holds identically is skipped, so this also "
            "finishes a copy that stopped.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy a store into another, any backend to any other (sqlite:// and postgresql://): documents, chunks and
    their vectors as they are (nothing is embedded again), collections, API keys, eval runs, agent runs with their
    journal, the request log."""
    # Imported here: `archivist --help` must not load numpy or a driver.
    from contextlib import ExitStack, closing

    from archivist.store import open_store, store_exists
    from archivist.store.copy import copy_store

    try:
        if src == dst:
            raise UsageError(f"SRC and DST are the same store ({src})")
        if not store_exists(src):
            raise ArchivistError(f"no store at {src}: check SRC")
        with ExitStack() as stack:
            source = stack.enter_context(closing(open_store(src)))
            target = stack.enter_context(closing(open_store(dst)))
            with stage_progress() as show:
                report = copy_store(source, target, into_existing=into_existing, progress=show)
    except UsageError as exc:
        fail(str(exc), 2)
    except ArchivistError as exc:
        # A clash or a non-empty DST, a store error (every backend reports its driver's errors as StoreError).
        fail(str(exc), 1)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if as_json:
        emit_json(report.to_dict())
        return
    copied = report.copied
    vectors = sum(report.vectors.values())
    line = (
        f"copied {copied.get('documents', 0):,} documents ({copied.get('chunks', 0):,} chunks, {vectors:,} vectors), "
        f"{copied.get('collections', 0)} collections, {copied.get('api_keys', 0)} API keys, "
        f"{copied.get('eval_runs', 0)} eval runs, {copied.get('agent_runs', 0)} agent runs, "
        f"{copied.get('request_log', 0):,} logged requests from {report.source} to {report.target} "
        f"in {report.seconds:.1f}s"
    )
    out.print(escape(line), soft_wrap=True, highlight=False)
    if report.already_there:
        there = ", ".join(f"{n:,} {kind.replace('_', ' ')}" for kind, n in sorted(report.already_there.items()))
        out.print(escape(f"already there (skipped): {there}"), soft_wrap=True, highlight=False)
