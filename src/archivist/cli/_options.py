"""The options several commands share, and how their values are read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from archivist.cli._errors import fail

if TYPE_CHECKING:
    from archivist.app import Archivist
    from archivist.retrieve.hybrid import Mode
    from archivist.store.filters import Filters

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="ARCHIVIST_STORE",
        metavar="URL",
        help="Store URL (default sqlite:///.archivist/archivist.db).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
FilterOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--filter",
        "-f",
        metavar="KEY=VALUE",
        help="key=value; glob values (docs/*.md) allowed; repeatable: AND across keys, OR within one key.",
    ),
]
MODES = ("hybrid", "dense", "bm25")


def complete_mode(incomplete: str) -> list[str]:
    """Return the retrieval modes that start with what was typed (shell completion of `--mode`)."""
    return [m for m in MODES if m.startswith(incomplete)]


ModeOpt = Annotated[
    str, typer.Option("--mode", metavar="MODE", autocompletion=complete_mode, help="hybrid, dense or bm25.")
]


def parse_mode(mode: str) -> Mode:
    """Return the retrieval mode named on the command line, or exit 2 on an unknown one."""
    modes: dict[str, Mode] = {"hybrid": "hybrid", "dense": "dense", "bm25": "bm25"}
    if mode not in modes:
        fail(f"unknown --mode {mode!r}: use hybrid, dense or bm25", 2)
    return modes[mode]


def store_filters(archivist: Archivist, filters: list[str] | None) -> Filters:
    """Return the `--filter` values parsed, raising UsageError on bad syntax or a key the store does not hold."""
    from archivist.store.filters import Filters, check_filter_keys

    parsed = Filters.parse(filters or [])
    check_filter_keys(archivist.store, parsed)
    return parsed
