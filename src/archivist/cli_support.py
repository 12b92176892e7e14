"""What every CLI command shares: consoles, common options, error handling, JSON output."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.retrieve.hybrid import Mode
from archivist.store import store_exists
from archivist.types import ArchivistError, UsageError

T = TypeVar("T")
R = TypeVar("R")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", envvar="ARCHIVIST_STORE", help="Store URL (default sqlite:///.archivist/archivist.db)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
FilterOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--filter",
        "-f",
        help="key=value; glob values (docs/*.md) allowed; repeatable: AND across keys, OR within one key.",
    ),
]


ModeOpt = Annotated[str, typer.Option("--mode", help="hybrid, dense or bm25.")]


def parse_mode(mode: str) -> Mode:
    """Return the retrieval mode named on the command line, or exit 2 on an unknown one."""
    modes: dict[str, Mode] = {"hybrid": "hybrid", "dense": "dense", "bm25": "bm25"}
    if mode not in modes:
        fail(f"unknown --mode {mode!r}: use hybrid, dense or bm25", 2)
    return modes[mode]


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@contextmanager
def open_app(store: str | None, *, existing: bool = False, **overrides: Any) -> Iterator[Archivist]:
    """Yield the app for a command (settings overridden by non-None options), turning errors into exit codes.

    `existing`: the command only reads, so a store that does not exist yet is an error (a mistyped path would
    otherwise be created empty and every search would find nothing).
    """
    try:
        settings = load_settings(store=store, **overrides)
        if existing and not store_exists(settings.store):
            raise ArchivistError(
                f"no store at {settings.store}: check --store or ARCHIVIST_STORE, or ingest documents there first "
                "(archivist ingest PATH)"
            )
        with Archivist.from_settings(settings) as archivist:
            yield archivist
    except UsageError as exc:
        fail(str(exc), 2)
    except ArchivistError as exc:
        fail(str(exc), 1)
    except sqlite3.Error as exc:
        fail(f"store error: {exc}", 1)


def usage(parse: Callable[[T], R], value: T) -> R:
    """Return `parse(value)`, or exit 2 with its message when the value is bad usage (before any store is opened)."""
    try:
        return parse(value)
    except UsageError as exc:
        fail(str(exc), 2)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")
